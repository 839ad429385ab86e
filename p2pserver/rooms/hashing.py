"""Content hashes, reference hashes, event IDs and v12 room IDs.

- Content hash: SHA-256 over the canonical JSON of the PDU without
  `unsigned`, `signatures` and `hashes`. It protects the full content, so a
  mismatch on receipt means the event is used redacted.
- Reference hash: SHA-256 over the canonical JSON of the *redacted* PDU
  without `signatures` and `unsigned`. It names the event. The same bytes
  are what event signatures cover (see signing.py).
- Event ID (format v3+): `$` + URL-safe unpadded Base64 of the reference hash.
- Room ID in room version 12: `!` + the same encoding of the create event's
  reference hash.
Hashes in `hashes.sha256` are standard unpadded Base64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.base64 import encode_base64
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import RoomVersion

_NOT_IN_CONTENT_HASH = frozenset({"unsigned", "signatures", "hashes"})


def content_hash_input(pdu: Mapping[str, Any]) -> bytes:
    """The bytes the content hash covers: canonical JSON without `unsigned`,
    `signatures` and `hashes`."""
    return encode_canonical_json({k: v for k, v in pdu.items() if k not in _NOT_IN_CONTENT_HASH})


def compute_content_hash(pdu: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(content_hash_input(pdu)).digest()


def reference_hash_input(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """Canonical JSON of the redacted PDU without `signatures` and `unsigned`.

    These are the bytes the reference hash covers *and* the bytes every
    event signature covers, so the receive path encodes them once for both.
    """
    redacted = redact(pdu, room_version)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return encode_canonical_json(redacted)


def compute_reference_hash(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    return hashlib.sha256(reference_hash_input(pdu, room_version)).digest()


def compute_event_id(pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    return "$" + encode_base64(compute_reference_hash(pdu, room_version), urlsafe=True)


def room_id_from_create_event_id(create_event_id: str) -> str:
    """Room version 12: the room ID is the create event's ID with `!` for `$`."""
    return "!" + create_event_id[1:]


def add_content_hash(pdu: dict[str, Any]) -> None:
    """Set ``pdu["hashes"] = {"sha256": ...}`` in place (for locally built events)."""
    pdu["hashes"] = {"sha256": encode_base64(compute_content_hash(pdu))}
