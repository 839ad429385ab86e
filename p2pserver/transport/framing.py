"""Length-prefixed CBOR frames: the wire format of every request and response.

Rules:

- A frame is a 4-byte big-endian unsigned length ``N`` followed by ``N`` bytes
  holding exactly one CBOR data item (RFC 8949). ``N`` may not exceed the
  receiver's limit: :data:`MAX_REQUEST_FRAME` (4 MiB) for frames read by the
  side that serves requests, :data:`MAX_RESPONSE_FRAME` (16 MiB) for frames
  read by the side that sent them. The limits are generous for Matrix: a PDU
  is at most 64 KiB, a transaction at most 50 PDUs + 100 EDUs (~3.3 MiB
  worst case), and only state/backfill responses reach several MiB. A frame
  whose header announces more than the limit is refused before its body is
  read.
- Strict decoding. The item must be a map, and everything in it must be
  JSON-shaped: maps with text keys, arrays, text, integers within 64 bits,
  finite floats, true/false/null. Refused: tags (including bignums and
  dates), ``undefined`` and other simple values, byte strings, indefinite
  lengths, duplicate map keys, invalid UTF-8, trailing bytes, and nesting
  deeper than :data:`MAX_DEPTH` containers (counting the envelope). Bodies
  are JSON objects because Matrix bodies are; CBOR only makes them compact.
- Encoding checks the same rules, so a peer never receives a frame it would
  refuse (tuples are accepted and sent as arrays).
- Envelopes. A request is ``{"id": uint, "method": text, "body": map}``; a
  response is ``{"id": uint, "ok": map}`` or ``{"id": uint, "error":
  {"errcode": text, "error": text[, "retry_after_ms": uint]}}``. No other
  keys. The opener of a stream sends only requests and the acceptor only
  responses, so the direction tells them apart; ``id`` pairs a response with
  its request on a stream carrying many requests.

Anything that breaks these rules raises :class:`FrameError` (or
:class:`FrameTooLarge`); transports treat it as a protocol violation by the
sender: the stream is reset and the peer penalised.

This module does no I/O. :class:`FrameReader` is a sans-I/O buffer: feed it
bytes as they arrive, take complete frame payloads out.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

HEADER_SIZE = 4
MAX_REQUEST_FRAME = 4 * 1024 * 1024
MAX_RESPONSE_FRAME = 16 * 1024 * 1024
# Containers from the envelope down; deep enough for any real Matrix JSON,
# shallow enough that recursive consumers (json, canonical JSON) never blow
# Python's recursion limit.
MAX_DEPTH = 128
MAX_ERRCODE_LENGTH = 128
MAX_ERROR_MESSAGE_LENGTH = 4096
MAX_REQUEST_ID = 2**63 - 1

_METHOD_RE = re.compile(r"[A-Za-z0-9_./:-]{1,128}")
_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1


class FrameError(ValueError):
    """A frame or envelope breaks the wire rules."""


class FrameTooLarge(FrameError):
    """A frame is (or would be) longer than the allowed limit."""


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    body: dict[str, Any]


@dataclass(frozen=True)
class ErrorBody:
    errcode: str
    message: str
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class Response:
    """Exactly one of ``ok`` and ``error`` is set."""

    id: int
    ok: dict[str, Any] | None = None
    error: ErrorBody | None = field(default=None)

    def __post_init__(self) -> None:
        if (self.ok is None) == (self.error is None):
            raise ValueError("a Response has exactly one of ok and error")


# --- JSON-shaped value checks -------------------------------------------------


def check_value(value: Any, *, base_depth: int = 0) -> None:
    """Raise FrameError unless ``value`` is JSON-shaped and nested at most
    ``MAX_DEPTH - base_depth`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, base_depth)]
    while stack:
        item, depth = stack.pop()
        # bool and None first: bool is an int subclass.
        if item is None or item is True or item is False or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise FrameError("integer out of the 64-bit range")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise FrameError("NaN and infinities are not allowed")
            continue
        if isinstance(item, (dict, list, tuple)):
            depth += 1
            if depth > MAX_DEPTH:
                raise FrameError(f"nested deeper than {MAX_DEPTH} containers")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise FrameError("map keys must be text")
                    stack.append((sub, depth))
            else:
                stack.extend((sub, depth) for sub in item)
            continue
        raise FrameError(f"value of type {type(item).__name__} is not allowed")


class _RejectAllTags(dict[int, Any]):
    """cbor2 consults this for every tag, including the built-in semantic ones
    (dates, bignums, ...); answering with a raising decoder refuses them all."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: int) -> Any:
        return _refuse_tag

    def get(self, key: int, default: Any = None) -> Any:
        return _refuse_tag


def _refuse_tag(*args: Any) -> Any:
    raise FrameError("CBOR tags are not allowed")


_NO_TAGS = _RejectAllTags()


def decode_item(payload: bytes) -> dict[str, Any]:
    """Strictly decode one frame payload into a JSON-shaped map."""
    if not payload:
        raise FrameError("empty frame")
    decoder = cbor2.CBORDecoder(
        io.BytesIO(payload),
        tag_hook=_refuse_tag,
        semantic_decoders=_NO_TAGS,
        max_depth=MAX_DEPTH + 2,  # backstop only; check_value enforces MAX_DEPTH
        allow_indefinite=False,
        allow_duplicate_keys=False,
        str_errors="strict",
    )
    try:
        item = decoder.decode()
    except FrameError:
        raise
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise FrameError(f"malformed CBOR: {e}") from None
    try:
        decoder.read(1)
    except cbor2.CBORDecodeEOF:
        pass
    else:
        raise FrameError("trailing bytes after the CBOR item")
    if not isinstance(item, dict):
        raise FrameError("the top-level CBOR item must be a map")
    check_value(item)
    return item


def encode_item(item: Mapping[str, Any], *, limit: int) -> bytes:
    """Check and encode ``item`` as one frame (header included)."""
    check_value(item)
    try:
        payload = cbor2.dumps(item)
    except (cbor2.CBORError, ValueError, TypeError) as e:  # pragma: no cover - checked above
        raise FrameError(f"cannot encode: {e}") from None
    if len(payload) > limit:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the {limit}-byte limit")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


# --- envelopes ------------------------------------------------------------------


def _check_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REQUEST_ID:
        raise FrameError("id must be an integer in [0, 2**63)")
    return value


def check_method(method: Any) -> str:
    if not isinstance(method, str) or _METHOD_RE.fullmatch(method) is None:
        raise FrameError("method must be 1-128 characters of [A-Za-z0-9_./:-]")
    return method


def encode_request(request: Request, *, limit: int = MAX_REQUEST_FRAME) -> bytes:
    _check_id(request.id)
    check_method(request.method)
    if not isinstance(request.body, dict):
        raise FrameError("body must be a map")
    return encode_item(
        {"id": request.id, "method": request.method, "body": request.body}, limit=limit
    )


def decode_request(payload: bytes) -> Request:
    item = decode_item(payload)
    if item.keys() != {"id", "method", "body"}:
        raise FrameError("a request has exactly the keys id, method and body")
    body = item["body"]
    if not isinstance(body, dict):
        raise FrameError("body must be a map")
    return Request(_check_id(item["id"]), check_method(item["method"]), body)


def encode_response(response: Response, *, limit: int = MAX_RESPONSE_FRAME) -> bytes:
    _check_id(response.id)
    if response.error is not None:
        err: dict[str, Any] = {
            "errcode": response.error.errcode[:MAX_ERRCODE_LENGTH],
            "error": response.error.message[:MAX_ERROR_MESSAGE_LENGTH],
        }
        if response.error.retry_after_ms is not None:
            err["retry_after_ms"] = response.error.retry_after_ms
        return encode_item({"id": response.id, "error": err}, limit=limit)
    if not isinstance(response.ok, dict):
        raise FrameError("ok must be a map")
    return encode_item({"id": response.id, "ok": response.ok}, limit=limit)


def decode_response(payload: bytes) -> Response:
    item = decode_item(payload)
    if item.keys() == {"id", "ok"}:
        ok = item["ok"]
        if not isinstance(ok, dict):
            raise FrameError("ok must be a map")
        return Response(_check_id(item["id"]), ok=ok)
    if item.keys() == {"id", "error"}:
        return Response(_check_id(item["id"]), error=_decode_error(item["error"]))
    raise FrameError("a response has exactly the keys id and ok, or id and error")


def _decode_error(err: Any) -> ErrorBody:
    if not isinstance(err, dict) or not {"errcode", "error"} <= err.keys() <= {
        "errcode",
        "error",
        "retry_after_ms",
    }:
        raise FrameError("error must be a map with errcode, error[, retry_after_ms]")
    errcode, message = err["errcode"], err["error"]
    if not isinstance(errcode, str) or not 0 < len(errcode) <= MAX_ERRCODE_LENGTH:
        raise FrameError("errcode must be 1-128 characters of text")
    if not isinstance(message, str) or len(message) > MAX_ERROR_MESSAGE_LENGTH:
        raise FrameError("error must be text of at most 4096 characters")
    retry = err.get("retry_after_ms")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 0):
        raise FrameError("retry_after_ms must be a non-negative integer")
    return ErrorBody(errcode, message, retry)


# --- sans-I/O reader ----------------------------------------------------------------


class FrameReader:
    """Reassembles frames from a byte stream.

    ``feed()`` what arrives; ``next_payload()`` returns each complete payload
    (header stripped) or None when more bytes are needed. A header announcing
    more than ``limit`` bytes raises FrameTooLarge at once, before the body
    is buffered, so an oversized frame costs the receiver nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._need: int | None = None  # payload length once the header is read

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def partial(self) -> bool:
        """True while part of a frame is buffered."""
        return bool(self._buf) or self._need is not None

    def next_payload(self) -> bytes | None:
        if self._need is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            length = int.from_bytes(self._buf[:HEADER_SIZE], "big")
            if length > self.limit:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the {self.limit}-byte limit")
            if length == 0:
                raise FrameError("empty frame")
            del self._buf[:HEADER_SIZE]
            self._need = length
        if len(self._buf) < self._need:
            return None
        payload = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        return payload
