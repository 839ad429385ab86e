"""PDU format checks: step 1 of "Checks performed on receipt of a PDU".

Spec: server-server API "Checks performed on receipt of a PDU" step 1 ("is a
valid event, otherwise it is dropped"), the PDU schemas of room versions 10,
11 (pdu_v11) and 12 (pdu_v12), client-server API "Size limits", and the
appendix's identifier grammars. :func:`parse_pdu` turns untrusted input
into an :class:`~p2pserver.rooms.events.Event` or raises
:class:`EventFormatError` (M_BAD_JSON) / :class:`EventTooLarge`
(M_TOO_LARGE) with a message naming the offending key.

Rules, in the order they are checked:

1. The PDU is a JSON object. An `event_id` key is not part of event format
   v3+; it is dropped (as :class:`Event` does), so hashes, signatures and
   the size limit all apply to the PDU without it.
2. Required keys and their JSON types: `type`, `sender` (strings),
   `content` (object), `prev_events`, `auth_events` (arrays), `depth`,
   `origin_server_ts` (integers), `hashes` (object with a string `sha256`),
   `signatures` (object of objects of strings) and `room_id` (string),
   except that a v12 create event has no `room_id` (MSC4291). Optional:
   `state_key` (string), `unsigned` (object).
3. Size limits per key: `type`, `state_key`, `sender` and `room_id` at
   most 255 bytes of UTF-8.
4. Identifier grammar: `sender` is a user ID (the historical grammar, which
   servers must still accept over federation); `room_id` is
   `!opaque_id:server_name` before v12 and `!` + 43 URL-safe Base64
   characters (a create event's reference hash) in v12; `prev_events` and
   `auth_events` hold event IDs (`$` + 43 URL-safe Base64 characters, the
   v4+ format), at most 20 and 10 of them.
5. `depth` lies in 0..2**53-1 (the spec's "less than the maximum integer",
   which canonical JSON caps at 2**53-1).
6. Redactions: from v11 `content.redacts` is a required event ID; in v10 a
   top-level `redacts`, when present, is one (it is not required there:
   v10 redaction strips it, and a redacted copy must still parse).
7. v12: an event other than the create event must not list the create
   event (`$` + room_id[1:]) in `auth_events`.
8. The whole PDU is canonical JSON (integers in ±(2**53-1), no floats) of at
   most 65,536 bytes.
9. It is nested at most :data:`MAX_NESTING` (125) containers deep, itself
   included. Not a spec rule: the federation framing
   (:mod:`p2pserver.transport.framing`) carries 128 levels, of which the
   deepest carrier of a PDU takes three (envelope, body, list of PDUs), so
   a deeper PDU could never be sent; a client asking for one gets
   M_BAD_JSON instead of an event its peers never receive.

What is *not* checked here: the auth rules (including v12's "a create event
has no room_id", rule 1.2, which rejects rather than drops), signatures and
hashes (:mod:`p2pserver.rooms.receipt`).

Rule 8 and the event ID come out of the two canonical encodings receipt
needs anyway (the content-hash input and the reference-hash input), so a
PDU is encoded twice on the way in, not four times; :func:`parse_pdu`
passes both results on to :func:`~p2pserver.rooms.receipt.verify_event`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.base64 import encode_base64
from p2pserver.rooms.canonical_json import MAX_SAFE_INTEGER, encode_canonical_json, parse_json
from p2pserver.rooms.errors import BadJSON, EventFormatError, EventTooLarge
from p2pserver.rooms.events import Event
from p2pserver.rooms.hashing import content_hash_input, reference_hash_input
from p2pserver.rooms.room_versions import RoomVersion

__all__ = [
    "MAX_AUTH_EVENTS",
    "MAX_DEPTH",
    "MAX_ID_BYTES",
    "MAX_NESTING",
    "MAX_PDU_BYTES",
    "MAX_PREV_EVENTS",
    "is_valid_event_id",
    "is_valid_room_id",
    "is_valid_server_name",
    "is_valid_user_id",
    "parse_pdu",
    "parse_pdu_json",
]

MAX_PDU_BYTES = 65536
MAX_ID_BYTES = 255
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
MAX_DEPTH = MAX_SAFE_INTEGER
# Containers, the PDU included (rule 9): transport.framing.MAX_DEPTH - 3.
MAX_NESTING = 125

# The keys the content hash leaves out; the PDU's size is the content-hash
# input's size plus theirs.
_OUTSIDE_CONTENT_HASH = ("hashes", "signatures", "unsigned")

# -- identifier grammar (appendix "Identifier Grammar") ------------------------

# server_name = hostname [":" port]; hostname = IPv4 / "[" IPv6 "]" / dns-name.
# dns-name's characters include every IPv4 literal.
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,255})(?::[0-9]{1,5})?")
# user_id_localpart = 1*user_id_char (lowercase, digits, -.=_/+)
_COMPLIANT_LOCALPART = re.compile(r"[a-z0-9._=/+-]+")
# v4+ event IDs and v12 room IDs: sigil + URL-safe unpadded Base64 of SHA-256.
_HASH_ID = re.compile(r"[A-Za-z0-9_-]{43}")


def _utf8_len(text: str) -> int:
    # surrogatepass: a lone surrogate is measured here and refused by rule 8.
    return len(text.encode("utf-8", "surrogatepass"))


def is_valid_server_name(value: object) -> bool:
    """Whether ``value`` matches the appendix's server name grammar."""
    return isinstance(value, str) and _SERVER_NAME.fullmatch(value) is not None


def is_valid_user_id(value: object, *, historical: bool = True) -> bool:
    """Whether ``value`` is a user ID: ``@localpart:server_name``, at most 255 bytes.

    By default the localpart follows the *historical* grammar ("Historical
    User IDs"): any code points but `:` and NUL, even none. Rooms contain
    such senders and servers "must still accept events using such user IDs
    over federation". ``historical=False`` asks for the grammar of new user
    IDs instead: one or more of ``a-z 0-9 . _ = - / +``.
    """
    if not isinstance(value, str) or not value.startswith("@"):
        return False
    if _utf8_len(value) > MAX_ID_BYTES:
        return False
    localpart, colon, server_name = value[1:].partition(":")
    if historical:
        localpart_ok = "\x00" not in localpart
    else:
        localpart_ok = _COMPLIANT_LOCALPART.fullmatch(localpart) is not None
    return bool(colon) and localpart_ok and is_valid_server_name(server_name)


def is_valid_event_id(value: object) -> bool:
    """Whether ``value`` is an event ID of format v3+ (`$` + reference hash)."""
    return isinstance(value, str) and value[:1] == "$" and _HASH_ID.fullmatch(value, 1) is not None


def is_valid_room_id(value: object, room_version: RoomVersion) -> bool:
    """Whether ``value`` is a room ID of ``room_version``'s format.

    Before v12: ``!opaque_id:server_name`` (opaque_id without `:` or NUL),
    at most 255 bytes. v12: ``!`` + the create event's reference hash.
    """
    if not isinstance(value, str) or value[:1] != "!":
        return False
    if room_version.room_id_is_create_event_hash:
        return _HASH_ID.fullmatch(value, 1) is not None
    if _utf8_len(value) > MAX_ID_BYTES:
        return False
    opaque_id, colon, server_name = value[1:].partition(":")
    return bool(colon) and "\x00" not in opaque_id and is_valid_server_name(server_name)


# -- the checks ----------------------------------------------------------------


class ParsedEvent(Event):
    """An :class:`Event` made by :func:`parse_pdu`.

    It carries the content hash and the reference-hash input (the bytes the
    signatures cover) so that :func:`~p2pserver.rooms.receipt.verify_event`
    need not encode the PDU again; verify_event drops them once used.
    """

    __slots__ = ("precomputed",)

    precomputed: tuple[bytes, bytes] | None  # (content hash, reference-hash input)


def _fail(message: str) -> EventFormatError:
    return EventFormatError(f"invalid PDU: {message}")


def _json_type(value: object) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


_PYTHON_TYPES: dict[str, type] = {"string": str, "integer": int, "object": dict, "array": list}


def _require(
    obj: Mapping[str, Any], key: str, expected: str, *, optional: bool = False, path: str = ""
) -> Any:
    """``obj[key]`` if it has JSON type ``expected``; raise otherwise."""
    if key not in obj:
        if optional:
            return None
        raise _fail(f"missing `{path or key}`")
    value = obj[key]
    if type(value) is _PYTHON_TYPES[expected]:  # the fast, common case
        return value
    actual = _json_type(value)
    if actual != expected:
        article = "an" if expected[0] in "aeio" else "a"
        raise _fail(f"`{path or key}` must be {article} {expected}, not {actual}")
    return value


def _check_length(key: str, value: str) -> None:
    if _utf8_len(value) > MAX_ID_BYTES:
        raise EventTooLarge(f"invalid PDU: `{key}` is longer than {MAX_ID_BYTES} bytes")


def _check_event_ids(key: str, value: list[Any], limit: int) -> None:
    if len(value) > limit:
        raise _fail(f"`{key}` lists {len(value)} events; at most {limit} are allowed")
    for item in value:
        if not is_valid_event_id(item):
            raise _fail(f"`{key}` holds {item!r}, which is not an event ID")


def _nested_deeper_than(pdu: Mapping[str, Any], limit: int) -> bool:
    """Whether ``pdu`` (one level) holds containers more than ``limit`` levels deep."""
    depth = 1
    level: list[Any] = [pdu]
    while level:  # one level of containers at a time: no recursion
        if depth > limit:
            return True
        depth += 1
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, Mapping) else item)
            if isinstance(child, (dict, list, tuple))
        ]
    return False


def _is_create(pdu: Mapping[str, Any]) -> bool:
    return pdu.get("type") == "m.room.create" and pdu.get("state_key") == ""


def parse_pdu(pdu: object, room_version: RoomVersion) -> Event:
    """Check ``pdu``'s format for ``room_version`` and wrap it in an Event.

    Raises :class:`EventFormatError` (M_BAD_JSON) or :class:`EventTooLarge`
    (M_TOO_LARGE); the message names the key at fault.
    """
    # 1. A JSON object, without the pre-v3 `event_id`.
    if not isinstance(pdu, Mapping):
        raise _fail(f"a PDU must be a JSON object, not {_json_type(pdu)}")
    if "event_id" in pdu:
        pdu = {k: v for k, v in pdu.items() if k != "event_id"}

    # 2. Required keys and types (pdu_base, auth_events_prev_events_v4,
    #    depth_v6, room_id_before_v12 / room_id_v12).
    event_type = _require(pdu, "type", "string")
    sender = _require(pdu, "sender", "string")
    content = _require(pdu, "content", "object")
    prev_events = _require(pdu, "prev_events", "array")
    auth_events = _require(pdu, "auth_events", "array")
    depth = _require(pdu, "depth", "integer")
    _require(pdu, "origin_server_ts", "integer")
    hashes = _require(pdu, "hashes", "object")
    _require(hashes, "sha256", "string", path="hashes.sha256")
    signatures = _require(pdu, "signatures", "object")
    for server_name, by_key in signatures.items():
        if not isinstance(by_key, Mapping) or not all(isinstance(s, str) for s in by_key.values()):
            raise _fail(f"`signatures` of {server_name!r} must be an object of strings")
    state_key = _require(pdu, "state_key", "string", optional=True)
    _require(pdu, "unsigned", "object", optional=True)
    is_create = _is_create(pdu)
    v12_create = room_version.room_id_is_create_event_hash and is_create
    # A v12 create event has no room_id; one that does is left to auth rule 1.2.
    room_id = _require(pdu, "room_id", "string", optional=v12_create)

    # 3. Size limits per key (client-server API "Size limits").
    _check_length("type", event_type)
    if state_key is not None:
        _check_length("state_key", state_key)
    _check_length("sender", sender)
    if room_id is not None:
        _check_length("room_id", room_id)

    # 4. Identifier grammar.
    if not is_valid_user_id(sender):
        raise _fail(f"`sender` {sender!r} is not a user ID")
    if room_id is not None and not v12_create and not is_valid_room_id(room_id, room_version):
        raise _fail(f"`room_id` {room_id!r} is not a room ID of version {room_version.identifier}")
    _check_event_ids("prev_events", prev_events, MAX_PREV_EVENTS)
    _check_event_ids("auth_events", auth_events, MAX_AUTH_EVENTS)

    # 5. Depth.
    if not 0 <= depth <= MAX_DEPTH:
        raise _fail(f"`depth` must be between 0 and {MAX_DEPTH}, not {depth}")

    # 6. Redactions name their target.
    if event_type == "m.room.redaction":
        if room_version.redacts_in_content:
            if not is_valid_event_id(content.get("redacts")):
                raise _fail("an m.room.redaction needs `content.redacts`, an event ID")
        elif "redacts" in pdu and not is_valid_event_id(pdu["redacts"]):
            raise _fail("`redacts` must be an event ID")

    # 7. v12: the room ID names the create event, which is never listed.
    if (
        room_version.room_id_is_create_event_hash
        and not is_create
        and "$" + room_id[1:] in auth_events
    ):
        raise _fail("`auth_events` must not list the m.room.create event in room version 12")

    # 8. Canonical JSON, at most 65,536 bytes in all.
    try:
        content_bytes = content_hash_input(pdu)
        size = len(content_bytes)
        for key in _OUTSIDE_CONTENT_HASH:
            if key in pdu:  # `,"key":value`: the key's JSON string, colon, value, comma
                size += len(key) + 4 + len(encode_canonical_json(pdu[key]))
        if size > MAX_PDU_BYTES:
            raise EventTooLarge(
                f"PDU is {size} bytes of canonical JSON; at most {MAX_PDU_BYTES} are allowed"
            )
        reference_bytes = reference_hash_input(pdu, room_version)
    except BadJSON as exc:
        raise _fail(exc.message) from None

    # 9. Nesting the federation can carry.
    if _nested_deeper_than(pdu, MAX_NESTING):
        raise _fail(f"nested more than {MAX_NESTING} levels deep")

    event_id = "$" + encode_base64(hashlib.sha256(reference_bytes).digest(), urlsafe=True)
    event = ParsedEvent(pdu, room_version, event_id=event_id)
    event.precomputed = (hashlib.sha256(content_bytes).digest(), reference_bytes)
    return event


def parse_pdu_json(data: bytes | str, room_version: RoomVersion) -> Event:
    """Parse PDU JSON text strictly (canonical-JSON rules), then :func:`parse_pdu`."""
    try:
        pdu = parse_json(data, strict=room_version.strict_canonical_json)
    except BadJSON as exc:
        raise _fail(exc.message) from None
    return parse_pdu(pdu, room_version)
