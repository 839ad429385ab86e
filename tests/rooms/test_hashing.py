"""Unpadded Base64, content hashes, reference hashes, event IDs, v12 room IDs."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.base64 import decode_base64, encode_base64
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.hashing import (
    add_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    content_hash_input,
    reference_hash_input,
    room_id_from_create_event_id,
)
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey

FIXTURES = Path(__file__).parent.parent / "fixtures/spec"
BASE64 = json.loads((FIXTURES / "base64.json").read_text())["examples"]
EVENTS = json.loads((FIXTURES / "event_signing.json").read_text())
VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
KEY = SigningKey.generate()


# -- unpadded Base64 (appendix) -------------------------------------------------


@pytest.mark.parametrize("example", BASE64, ids=lambda e: e["decoded"] or "empty")
def test_spec_unpadded_base64(example: dict[str, str]) -> None:
    raw = example["decoded"].encode("ascii")
    assert encode_base64(raw) == example["encoded"]
    assert decode_base64(example["encoded"]) == raw
    padded = example["encoded"] + "=" * (-len(example["encoded"]) % 4)
    assert decode_base64(padded) == raw  # "SHOULD accept input with or without padding"


@given(st.binary(max_size=64))
def test_base64_round_trips_both_alphabets(data: bytes) -> None:
    for urlsafe in (False, True):
        text = encode_base64(data, urlsafe=urlsafe)
        assert "=" not in text
        assert decode_base64(text) == data


@pytest.mark.parametrize("text", ["a", "ab$d", "Zg=a", "Z g", "+-", 5, None])
def test_bad_base64_is_a_value_error(text: Any) -> None:
    with pytest.raises(ValueError):
        decode_base64(text)


# -- content hash ------------------------------------------------------------------


@pytest.mark.parametrize("example", EVENTS["examples"], ids=lambda e: e["name"])
def test_spec_content_hash(example: dict[str, Any]) -> None:
    pdu = copy.deepcopy(example["input"])
    add_content_hash(pdu)
    assert pdu["hashes"] == example["signed"]["hashes"]
    # The hash leaves out unsigned, signatures and hashes themselves.
    assert compute_content_hash(example["signed"]) == decode_base64(pdu["hashes"]["sha256"])


def _message(version: RoomVersion, body: str = "hello") -> dict[str, Any]:
    return build_event(
        version,
        signing_key=KEY,
        sender=f"@alice:{KEY.server_name}",
        type="m.room.message",
        content={"body": body, "msgtype": "m.text"},
        room_id="!" + "A" * 43 if version.room_id_is_create_event_hash else "!r:example.org",
        prev_events=["$" + "B" * 43],
        auth_events=["$" + "C" * 43],
        depth=5,
        extra={"unsigned": {"age": 10}},
    ).get_pdu_json()


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.identifier)
def test_content_hash_covers_everything_but_unsigned_signatures_hashes(
    version: RoomVersion,
) -> None:
    pdu = _message(version)
    base = compute_content_hash(pdu)
    assert content_hash_input(pdu) == encode_canonical_json(
        {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    )
    for key, value in [("unsigned", {"age": 99}), ("signatures", {}), ("hashes", {"sha256": "x"})]:
        assert compute_content_hash({**pdu, key: value}) == base
    for key, value in [("content", {"body": "other"}), ("depth", 6), ("extra", 1)]:
        assert compute_content_hash({**pdu, key: value}) != base


# -- reference hash and event ID -------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.identifier)
def test_event_id_is_the_reference_hash_of_the_redacted_event(version: RoomVersion) -> None:
    pdu = _message(version)
    reference = compute_reference_hash(pdu, version)
    stripped = {k: v for k, v in redact(pdu, version).items() if k not in ("signatures", "unsigned")}
    assert reference_hash_input(pdu, version) == encode_canonical_json(stripped)
    assert reference == hashlib.sha256(encode_canonical_json(stripped)).digest()
    event_id = compute_event_id(pdu, version)
    assert event_id == "$" + encode_base64(reference, urlsafe=True)
    assert len(event_id) == 44 and "+" not in event_id and "/" not in event_id
    # Redacting, re-signing or changing unsigned data keeps the ID ...
    assert compute_event_id(redact(pdu, version), version) == event_id
    assert compute_event_id({**pdu, "signatures": {}, "unsigned": {"x": 1}}, version) == event_id
    # ... because the content is covered only through the content hash,
    assert compute_event_id({**pdu, "content": {"body": "edited"}}, version) == event_id
    # while every kept key and the hash itself name the event.
    for key, value in [("depth", 6), ("hashes", {"sha256": "AAAA"}), ("origin_server_ts", 1)]:
        assert compute_event_id({**pdu, key: value}, version) != event_id


def test_v11_drops_origin_from_the_reference_hash_v10_keeps_it() -> None:
    pdu = _message(ROOM_V10)
    with_origin = {**pdu, "origin": "example.org"}
    assert compute_event_id(with_origin, ROOM_V10) != compute_event_id(pdu, ROOM_V10)
    assert compute_event_id(with_origin, ROOM_V11) == compute_event_id(pdu, ROOM_V11)


def test_v12_room_id_is_the_create_event_id_with_a_bang() -> None:
    create = build_event(
        ROOM_V12,
        signing_key=KEY,
        sender=f"@alice:{KEY.server_name}",
        type="m.room.create",
        content={"room_version": "12"},
        room_id=None,
        state_key="",
    )
    assert "room_id" not in create.pdu
    assert create.room_id == room_id_from_create_event_id(create.event_id)
    assert create.room_id == "!" + create.event_id[1:]
