import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserver.transport.framing import (
    HEADER_SIZE,
    MAX_DEPTH,
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    ErrorBody,
    FrameError,
    FrameReader,
    FrameTooLarge,
    Request,
    Response,
    decode_item,
    decode_request,
    decode_response,
    encode_item,
    encode_request,
    encode_response,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
bodies = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def payload(frame: bytes) -> bytes:
    assert int.from_bytes(frame[:HEADER_SIZE], "big") == len(frame) - HEADER_SIZE
    return frame[HEADER_SIZE:]


def nested(depth: int) -> dict:
    """A map nested exactly ``depth`` containers deep (itself included)."""
    value: object = 0
    for _ in range(depth - 1):
        value = [value]
    return {"v": value}


@settings(max_examples=50)
@given(request_id=st.integers(0, 2**63 - 1), body=bodies)
def test_request_round_trip(request_id, body):
    request = Request(request_id, "send_transaction", body)
    assert decode_request(payload(encode_request(request))) == request


@settings(max_examples=50)
@given(request_id=st.integers(0, 2**63 - 1), body=bodies)
def test_response_round_trip(request_id, body):
    ok = Response(request_id, ok=body)
    assert decode_response(payload(encode_response(ok))) == ok
    err = Response(request_id, error=ErrorBody("M_FORBIDDEN", "no", retry_after_ms=5))
    assert decode_response(payload(encode_response(err))) == err


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_garbage_raises_only_frame_error(data):
    for decode in (decode_request, decode_response):
        with contextlib.suppress(FrameError):
            decode(data)


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\xa1\x61a\xc1\x00", "epoch-date tag"),
        (b"\xa1\x61a\xc2\x41\x01", "bignum tag"),
        (b"\xa1\x61a\xd8\x64\x00", "unknown tag"),
        (b"\xd9\xd9\xf7\xa0", "self-describe tag on the top level"),
        (b"\xa1\x61a\xf7", "undefined"),
        (b"\xa1\x61a\xf0", "simple value"),
        (b"\xa1\x61a\x41\x00", "byte string"),
        (b"\xa1\x01\x02", "integer key"),
        (b"\xa1\x81\x01\x02", "array key"),
        (b"\xa2\x61a\x01\x61a\x02", "duplicate key"),
        (b"\xbf\x61a\x01\xff", "indefinite map"),
        (b"\xa1\x61a\x9f\x01\xff", "indefinite array"),
        (b"\xa1\x61a\xf9\x7c\x00", "infinity"),
        (b"\xa1\x61a\xf9\x7e\x00", "NaN"),
        (b"\xa1\x61a\x62\xff\xfe", "invalid UTF-8"),
        (b"\x81\x01", "array on the top level"),
        (b"\x01", "integer on the top level"),
        (b"\xa1\x61a\x01\x00", "trailing bytes"),
        (b"\xa1\x61a", "truncated"),
        (b"\xa1\x61a\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "huge announced length"),
        (b"", "empty"),
    ],
)
def test_strict_decoding_refuses(data, why):
    with pytest.raises(FrameError):
        decode_item(data)


def test_nesting_limit_is_exact_on_both_sides():
    assert decode_item(payload(encode_item(nested(MAX_DEPTH), limit=MAX_RESPONSE_FRAME)))
    with pytest.raises(FrameError):
        encode_item(nested(MAX_DEPTH + 1), limit=MAX_RESPONSE_FRAME)
    too_deep = cbor2.dumps(nested(MAX_DEPTH + 1))
    with pytest.raises(FrameError):
        decode_item(too_deep)
    with pytest.raises(FrameError):  # far deeper than cbor2's own backstop
        decode_item(b"\xa1\x61a" + b"\x81" * 100_000 + b"\x00")


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), b"bytes", {1: 2}, {"s": {1, 2}}, 2**64, -(2**64) - 1, object()],
)
def test_encoding_refuses_what_decoding_would(value):
    with pytest.raises(FrameError):
        encode_request(Request(1, "m", {"v": value}))


def test_encoding_accepts_tuples_as_arrays():
    frame = encode_request(Request(1, "m", {"v": (1, 2)}))
    assert decode_request(payload(frame)).body == {"v": [1, 2]}


@pytest.mark.parametrize(
    "item",
    [
        {"id": 1, "method": "m"},
        {"id": 1, "method": "m", "body": {}, "extra": 1},
        {"id": -1, "method": "m", "body": {}},
        {"id": True, "method": "m", "body": {}},
        {"id": "1", "method": "m", "body": {}},
        {"id": 2**63, "method": "m", "body": {}},
        {"id": 1, "method": "", "body": {}},
        {"id": 1, "method": "has space", "body": {}},
        {"id": 1, "method": "m" * 129, "body": {}},
        {"id": 1, "method": "m", "body": []},
    ],
)
def test_request_envelope_is_strict(item):
    with pytest.raises(FrameError):
        decode_request(cbor2.dumps(item))


@pytest.mark.parametrize(
    "item",
    [
        {"id": 1},
        {"id": 1, "ok": {}, "error": {"errcode": "M_X", "error": ""}},
        {"id": 1, "ok": []},
        {"id": 1, "error": {"errcode": "M_X"}},
        {"id": 1, "error": {"errcode": "", "error": "x"}},
        {"id": 1, "error": {"errcode": "M_X", "error": 5}},
        {"id": 1, "error": {"errcode": "M_X", "error": "x", "retry_after_ms": -1}},
        {"id": 1, "error": {"errcode": "M_X", "error": "x", "other": 1}},
        {"id": 1, "error": {"errcode": "M_X", "error": "x" * 4097}},
    ],
)
def test_response_envelope_is_strict(item):
    with pytest.raises(FrameError):
        decode_response(cbor2.dumps(item))


def test_request_method_checked_when_encoding():
    with pytest.raises(FrameError):
        encode_request(Request(1, "bad method", {}))


def test_size_limits():
    assert MAX_REQUEST_FRAME == 4 * 1024 * 1024 and MAX_RESPONSE_FRAME == 16 * 1024 * 1024
    body = {"blob": "x" * (MAX_REQUEST_FRAME - 100)}
    assert len(encode_request(Request(1, "m", body))) <= MAX_REQUEST_FRAME + HEADER_SIZE
    with pytest.raises(FrameTooLarge):
        encode_request(Request(1, "m", {"blob": "x" * MAX_REQUEST_FRAME}))
    big = encode_response(Response(1, ok={"blob": "x" * MAX_REQUEST_FRAME}))
    assert len(big) > MAX_REQUEST_FRAME  # responses may be larger than requests
    with pytest.raises(FrameTooLarge):
        encode_response(Response(1, ok={"blob": "x" * MAX_RESPONSE_FRAME}))


def test_reader_reassembles_frames_fed_byte_by_byte():
    frames = [encode_request(Request(i, "m", {"i": i})) for i in range(3)]
    reader = FrameReader(MAX_REQUEST_FRAME)
    out = []
    for byte in b"".join(frames):
        reader.feed(bytes([byte]))
        assert reader.partial
        while (p := reader.next_payload()) is not None:
            out.append(decode_request(p))
    assert [r.id for r in out] == [0, 1, 2]
    assert not reader.partial


def test_reader_refuses_oversized_header_before_the_body():
    reader = FrameReader(1000)
    reader.feed((1001).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        reader.next_payload()
    reader = FrameReader(1000)
    reader.feed((1000).to_bytes(4, "big") + b"x" * 10)
    assert reader.next_payload() is None and reader.partial


def test_reader_refuses_empty_frame():
    reader = FrameReader(1000)
    reader.feed(b"\x00\x00\x00\x00")
    with pytest.raises(FrameError):
        reader.next_payload()
