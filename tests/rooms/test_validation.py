"""PDU format checks: one test per rule, each with an accepted and a refused case."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.builder import build_event
from p2pserver.rooms.canonical_json import MAX_SAFE_INTEGER, encode_canonical_json
from p2pserver.rooms.errors import EventFormatError, EventTooLarge
from p2pserver.rooms.events import Event
from p2pserver.rooms.hashing import compute_event_id
from p2pserver.rooms.receipt import ACCEPT, REDACT, REJECT, verify_event
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey
from p2pserver.rooms.validation import (
    MAX_PDU_BYTES,
    is_valid_room_id,
    is_valid_server_name,
    is_valid_user_id,
    parse_pdu,
    parse_pdu_json,
)

VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
KEY = SigningKey.generate()
SENDER = f"@alice:{KEY.server_name}"
EV = "$" + "E" * 43  # an event ID
V12_ROOM = "!" + "R" * 43
V12_CREATE_ID = "$" + "R" * 43


def room_id(version: RoomVersion) -> str:
    return V12_ROOM if version.room_id_is_create_event_hash else "!room:example.org"


def make(version: RoomVersion, **changes: Any) -> dict[str, Any]:
    """A valid message PDU of ``version`` with top-level ``changes`` (None deletes)."""
    pdu = build_event(
        version,
        signing_key=KEY,
        sender=SENDER,
        type="m.room.message",
        content={"body": "hi"},
        room_id=room_id(version),
        prev_events=[EV],
        auth_events=["$" + "A" * 43],
        depth=7,
    ).get_pdu_json()
    for key, value in changes.items():
        if value is None:
            pdu.pop(key, None)
        else:
            pdu[key] = value
    return pdu


def refused(version: RoomVersion, pdu: Any, match: str, error: type = EventFormatError) -> None:
    with pytest.raises(error, match=match) as info:
        parse_pdu(pdu, version)
    assert info.value.errcode == ("M_TOO_LARGE" if error is EventTooLarge else "M_BAD_JSON")


all_versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.identifier)


@all_versions
def test_valid_pdu_parses_to_the_event(version: RoomVersion) -> None:
    pdu = make(version)
    event = parse_pdu(pdu, version)
    assert isinstance(event, Event)
    assert event.event_id == compute_event_id(pdu, version)
    assert event.pdu == pdu and event.room_id == room_id(version) and event.depth == 7


# -- 1. a JSON object; event_id is not part of the format ---------------------------


@all_versions
@pytest.mark.parametrize("value", [None, [], "pdu", 5, True])
def test_pdu_must_be_an_object(version: RoomVersion, value: Any) -> None:
    refused(version, value, "must be a JSON object")


@all_versions
def test_event_id_key_is_dropped(version: RoomVersion) -> None:
    pdu = make(version)
    event = parse_pdu({**pdu, "event_id": "$whatever:example.org"}, version)
    assert "event_id" not in event.pdu
    assert event.event_id == parse_pdu(pdu, version).event_id


# -- 2. required keys and their types ---------------------------------------------------

REQUIRED = {
    "type": ("string", 5),
    "sender": ("string", ["@a:b"]),
    "content": ("object", "body"),
    "prev_events": ("array", EV),
    "auth_events": ("array", {"a": EV}),
    "depth": ("integer", "7"),
    "origin_server_ts": ("integer", None),
    "hashes": ("object", "sha"),
    "signatures": ("object", []),
    "room_id": ("string", 12),
}


@all_versions
@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_required_key_missing(version: RoomVersion, key: str) -> None:
    refused(version, make(version, **{key: None}), f"missing `{key}`")


@all_versions
@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_required_key_wrong_type(version: RoomVersion, key: str) -> None:
    expected, wrong = REQUIRED[key]
    pdu = make(version)
    pdu[key] = wrong
    refused(version, pdu, f"`{key}` must be an? {expected}")


@all_versions
@pytest.mark.parametrize("key", ["depth", "origin_server_ts"])
def test_booleans_are_not_integers(version: RoomVersion, key: str) -> None:
    refused(version, make(version, **{key: True}), f"`{key}` must be an integer, not boolean")


@all_versions
def test_hashes_need_a_sha256_string(version: RoomVersion) -> None:
    parse_pdu(make(version, hashes={"sha256": "AAAA", "blake3": 1}), version)
    refused(version, make(version, hashes={}), r"missing `hashes.sha256`")
    refused(version, make(version, hashes={"sha256": 1}), r"`hashes.sha256` must be a string")


@all_versions
def test_signatures_are_objects_of_strings(version: RoomVersion) -> None:
    parse_pdu(make(version, signatures={}), version)  # format only; receipt checks signers
    refused(version, make(version, signatures={"s": "sig"}), "must be an object of strings")
    refused(version, make(version, signatures={"s": {"ed25519:1": 1}}), "object of strings")


@all_versions
def test_optional_state_key_and_unsigned_types(version: RoomVersion) -> None:
    parse_pdu(make(version, state_key="", unsigned={"age": 1}), version)
    refused(version, make(version, state_key=5), "`state_key` must be a string")
    refused(version, make(version, unsigned=[]), "`unsigned` must be an object")


def test_v12_create_event_has_no_room_id() -> None:
    create = build_event(
        ROOM_V12, signing_key=KEY, sender=SENDER, type="m.room.create",
        content={"room_version": "12"}, room_id=None, state_key="",
    )
    event = parse_pdu(create.pdu, ROOM_V12)
    assert event.room_id == "!" + event.event_id[1:]
    # A v12 create event *with* a room_id is well-formed; auth rule 1.2 rejects it.
    assert parse_pdu({**create.pdu, "room_id": V12_ROOM}, ROOM_V12).room_id == V12_ROOM
    # Only the create event (state_key "") may omit it, and only in v12.
    refused(ROOM_V12, {**create.pdu, "state_key": "x"}, "missing `room_id`")
    for version in (ROOM_V10, ROOM_V11):
        refused(version, create.pdu, "missing `room_id`")


# -- 3. size limits per key -----------------------------------------------------------------


@all_versions
@pytest.mark.parametrize("key", ["type", "state_key"])
def test_type_and_state_key_at_most_255_bytes(version: RoomVersion, key: str) -> None:
    parse_pdu(make(version, **{key: "é" * 127 + "x"}), version)  # 255 bytes
    refused(version, make(version, **{key: "é" * 128}), f"`{key}` is longer than 255", EventTooLarge)


@all_versions
def test_sender_at_most_255_bytes(version: RoomVersion) -> None:
    server = KEY.server_name
    ok = "@" + "a" * (255 - 2 - len(server)) + ":" + server
    parse_pdu(make(version, sender=ok), version)
    refused(version, make(version, sender="@a" + ok[1:]), "`sender` is longer", EventTooLarge)


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=lambda v: v.identifier)
def test_room_id_at_most_255_bytes(version: RoomVersion) -> None:
    ok = "!" + "r" * (255 - 1 - len(":example.org")) + ":example.org"
    parse_pdu(make(version, room_id=ok), version)
    refused(version, make(version, room_id="!r" + ok[1:]), "`room_id` is longer", EventTooLarge)


# -- 4. identifier grammar --------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    ["@a:example.org", "@a:1.2.3.4:8448", "@a:[::1]:80", "@:x", "@Ä-b/c=d:example.org",
     "@a:localhost", f"@x:{'a' * 64}"],
)
def test_senders_servers_must_accept(user_id: str) -> None:
    assert is_valid_user_id(user_id)
    parse_pdu(make(ROOM_V12, sender=user_id), ROOM_V12)


@pytest.mark.parametrize(
    "user_id",
    ["a:example.org", "@a", "@a:", "@a:exa mple.org", "@a\x00b:x", "@a:x:99999999", "#a:x",
     "@a:[::1", "@a:ex_ample.org"],
)
def test_senders_refused(user_id: str) -> None:
    assert not is_valid_user_id(user_id)
    refused(ROOM_V12, make(ROOM_V12, sender=user_id), "`sender` .* is not a user ID")


def test_compliant_user_id_grammar_for_new_ids() -> None:
    for ok in ["@a:x", "@a.b_c=d-e/f+9:example.org:8448"]:
        assert is_valid_user_id(ok, historical=False)
    for bad in ["@:x", "@A:x", "@a b:x", "@é:x", "@a#:x", "@a", "a:x"]:
        assert not is_valid_user_id(bad, historical=False)
    assert is_valid_user_id("@A b:x")  # historical: still accepted over federation


def test_server_name_grammar() -> None:
    for name in ["example.org", "example.org:8448", "1.2.3.4", "[1234:5678::abcd]:5678"]:
        assert is_valid_server_name(name)
    for name in ["", "exa mple", "[::1", "example.org:", "example.org:123456", 5]:
        assert not is_valid_server_name(name)


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=lambda v: v.identifier)
def test_room_id_grammar_before_v12(version: RoomVersion) -> None:
    for ok in ["!a:example.org", "!:x", "!日本:example.org:8448"]:
        assert is_valid_room_id(ok, version)
        parse_pdu(make(version, room_id=ok), version)
    for bad in ["a:example.org", "!abc", "!a:exa mple", "!a\x00:x", V12_ROOM]:
        assert not is_valid_room_id(bad, version)
        refused(version, make(version, room_id=bad), "is not a room ID of version")


def test_room_id_grammar_v12() -> None:
    parse_pdu(make(ROOM_V12, room_id="!" + "a-_Z9" * 8 + "abc"), ROOM_V12)
    for bad in ["!room:example.org", "!" + "a" * 42, "!" + "a" * 44, "!" + "a" * 42 + "+",
                "$" + "a" * 43]:
        refused(ROOM_V12, make(ROOM_V12, room_id=bad), "is not a room ID of version 12")


@all_versions
@pytest.mark.parametrize("key", ["prev_events", "auth_events"])
def test_event_id_lists_hold_event_ids(version: RoomVersion, key: str) -> None:
    parse_pdu(make(version, **{key: ["$" + "a-_Z9" * 8 + "abc"]}), version)
    for bad in ["$abc:example.org", "$" + "a" * 42, "!" + "a" * 43, "$" + "a" * 42 + "/", 5]:
        refused(version, make(version, **{key: [bad]}), f"`{key}` holds .* not an event ID")


@all_versions
def test_at_most_20_prev_events_and_10_auth_events(version: RoomVersion) -> None:
    ids = ["$" + f"{i:02d}" + "x" * 41 for i in range(21)]
    parse_pdu(make(version, prev_events=ids[:20], auth_events=ids[:10]), version)
    refused(version, make(version, prev_events=ids), "`prev_events` lists 21 events; at most 20")
    refused(version, make(version, auth_events=ids[:11]), "`auth_events` lists 11 events; at most 10")


# -- 5. depth -------------------------------------------------------------------------------


@all_versions
def test_depth_bounds(version: RoomVersion) -> None:
    for depth in (0, MAX_SAFE_INTEGER):
        assert parse_pdu(make(version, depth=depth), version).depth == depth
    for depth in (-1, MAX_SAFE_INTEGER + 1, 2**63):
        refused(version, make(version, depth=depth), "`depth` must be between 0 and")


# -- 6. redactions ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ROOM_V11, ROOM_V12], ids=lambda v: v.identifier)
def test_v11_redaction_needs_content_redacts(version: RoomVersion) -> None:
    parse_pdu(make(version, type="m.room.redaction", content={"redacts": EV}), version)
    for content in ({}, {"redacts": 5}, {"redacts": "nope"}):
        pdu = make(version, type="m.room.redaction", content=content, redacts=EV)
        refused(version, pdu, "needs `content.redacts`")


def test_v10_redaction_top_level_redacts() -> None:
    parse_pdu(make(ROOM_V10, type="m.room.redaction", content={}, redacts=EV), ROOM_V10)
    # A redacted v10 redaction has lost `redacts`, yet must still parse.
    parse_pdu(make(ROOM_V10, type="m.room.redaction", content={}), ROOM_V10)
    refused(ROOM_V10, make(ROOM_V10, type="m.room.redaction", redacts=5), "`redacts` must be")


# -- 7. v12: the create event is never listed -------------------------------------------------


def test_v12_auth_events_must_not_list_the_create_event() -> None:
    refused(
        ROOM_V12,
        make(ROOM_V12, auth_events=[V12_CREATE_ID, EV]),
        "must not list the m.room.create event",
    )
    # Before v12 the create event is listed as usual (and its ID is unrelated).
    parse_pdu(make(ROOM_V11, auth_events=[V12_CREATE_ID]), ROOM_V11)


# -- 8. canonical JSON, at most 65,536 bytes -----------------------------------------------------


@all_versions
def test_pdu_must_be_canonical_json(version: RoomVersion) -> None:
    for content in ({"n": 1.5}, {"n": 2**53}, {"n": float("nan")}, {"s": "\ud800"}):
        refused(version, make(version, content=content), "invalid PDU")
    refused(version, make(version, unsigned={"age": 0.5}), "floats are not allowed")
    refused(version, make(version, signatures={"s": {"k": "\udc00"}}), "not valid Unicode")


def _padded(version: RoomVersion, size: int, **changes: Any) -> dict[str, Any]:
    """A PDU whose canonical JSON is exactly ``size`` bytes (padding in ``where``)."""
    where = changes.pop("where", "content")
    pdu = make(version, **changes)
    pdu[where] = {**pdu.get(where, {}), "pad": ""}
    pdu[where]["pad"] = "x" * (size - len(encode_canonical_json(pdu)))
    assert len(encode_canonical_json(pdu)) == size
    return pdu


@all_versions
@pytest.mark.parametrize("where", ["content", "unsigned", "signatures"])
def test_pdu_at_most_65536_bytes(version: RoomVersion, where: str) -> None:
    if where == "signatures":  # pad with a signature from another server
        pdu = make(version)
        pdu["signatures"] = {**pdu["signatures"], "pad": {"ed25519:x": ""}}
        filler = MAX_PDU_BYTES - len(encode_canonical_json(pdu))
        pdu["signatures"]["pad"]["ed25519:x"] = "x" * filler
        parse_pdu(pdu, version)
        pdu["signatures"]["pad"]["ed25519:x"] += "x"
        refused(version, pdu, "65537 bytes .* at most 65536", EventTooLarge)
        return
    parse_pdu(_padded(version, MAX_PDU_BYTES, where=where), version)
    refused(version, _padded(version, MAX_PDU_BYTES + 1, where=where), "65537 bytes", EventTooLarge)


@all_versions
def test_size_counts_multibyte_characters_as_utf8(version: RoomVersion) -> None:
    pdu = _padded(version, MAX_PDU_BYTES - 1)
    pdu["content"]["pad"] = pdu["content"]["pad"][:-1] + "é"  # one more byte
    parse_pdu(pdu, version)
    pdu["content"]["pad"] = pdu["content"]["pad"][:-1] + "日"  # é (2 bytes) -> 日 (3)
    refused(version, pdu, "65537 bytes", EventTooLarge)


# -- parse_pdu_json: strict parsing first ----------------------------------------------------


@all_versions
def test_parse_pdu_json(version: RoomVersion) -> None:
    pdu = make(version)
    text = encode_canonical_json(pdu)
    assert parse_pdu_json(text, version).event_id == parse_pdu(pdu, version).event_id
    assert parse_pdu_json(text.decode(), version).pdu == pdu
    body = text.decode()
    for bad in [body.replace('"depth":7', '"depth":7.0'),
                body.replace('"depth":7', '"depth":7,"depth":8'),
                body.replace('"depth":7', '"depth":NaN'),
                body[:-1], "", b"\xff"]:
        with pytest.raises(EventFormatError, match="invalid PDU"):
            parse_pdu_json(bad, version)


# -- never a crash ----------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=6)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)


@given(
    st.sampled_from(VERSIONS),
    st.dictionaries(st.sampled_from(sorted(REQUIRED) + ["state_key", "unsigned", "redacts"]),
                    json_value, max_size=6),
    st.booleans(),
)
def test_arbitrary_input_is_an_event_or_a_format_error(
    version: RoomVersion, changes: dict[str, Any], replace_all: bool
) -> None:
    pdu = changes if replace_all else {**make(version), **changes}
    try:
        event = parse_pdu(pdu, version)
    except EventFormatError as exc:
        assert exc.message.startswith(("invalid PDU", "PDU is")) and exc.errcode
        return
    assert verify_event(event).verdict in (REDACT, REJECT, ACCEPT)
