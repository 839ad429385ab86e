"""Verification on receipt: signatures, then the content hash."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.base64 import decode_base64
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.errors import BadJSON, EventFormatError
from p2pserver.rooms.events import Event
from p2pserver.rooms.hashing import add_content_hash, reference_hash_input
from p2pserver.rooms.receipt import (
    ACCEPT,
    REDACT,
    REJECT,
    hex_server_keys,
    parse_verify_keys,
    required_signers,
    verify_event,
    with_known_keys,
)
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey, sign_event
from p2pserver.rooms.validation import parse_pdu

FIXTURES = Path(__file__).parent.parent / "fixtures/spec"
SPEC_KEY = json.loads((FIXTURES / "signing_key.json").read_text())
EVENT_VECTORS = json.loads((FIXTURES / "event_signing.json").read_text())

VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
ALICE = SigningKey.generate()
BOB = SigningKey.generate()  # a second server
all_versions = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.identifier)


def room_id(version: RoomVersion) -> str:
    return "!" + "R" * 43 if version.room_id_is_create_event_hash else "!room:example.org"


def event(version: RoomVersion, type: str = "m.room.message", key: SigningKey = ALICE,
          **kwargs: Any) -> Event:
    kwargs.setdefault("content", {"body": "hello", "msgtype": "m.text"})
    return build_event(
        version,
        signing_key=key,
        sender=f"@alice:{key.server_name}",
        type=type,
        room_id=room_id(version),
        prev_events=["$" + "P" * 43],
        auth_events=["$" + "A" * 43],
        depth=3,
        origin_server_ts=1_700_000_000_000,
        **kwargs,
    )


def receive(pdu: dict[str, Any], version: RoomVersion, keys: Any = hex_server_keys) -> Any:
    return verify_event(parse_pdu(pdu, version), keys)


@all_versions
def test_accept(version: RoomVersion) -> None:
    ev = event(version)
    outcome = receive(ev.get_pdu_json(), version)
    assert outcome.verdict is ACCEPT and outcome.reason is None
    assert outcome.event.event_id == ev.event_id and not outcome.event.redacted
    # Unsigned data is covered by nothing; other servers' signatures are not required.
    pdu = ev.get_pdu_json()
    pdu["unsigned"] = {"age": 5}
    pdu["signatures"] = {**pdu["signatures"], "elsewhere": {"ed25519:1": "AAAA"}}
    assert receive(pdu, version).verdict is ACCEPT


@all_versions
def test_verify_event_works_on_any_event_not_only_parsed_ones(version: RoomVersion) -> None:
    ev = event(version)
    assert verify_event(ev).verdict is ACCEPT  # a builder Event: encodes on its own
    parsed = parse_pdu(ev.pdu, version)
    assert verify_event(parsed).verdict is ACCEPT  # uses parse_pdu's digests ...
    assert verify_event(parsed).verdict is ACCEPT  # ... once; again still works


@all_versions
def test_content_hash_mismatch_uses_the_redacted_event(version: RoomVersion) -> None:
    ev = event(version)
    pdu = ev.get_pdu_json()
    pdu["content"] = {"body": "tampered", "msgtype": "m.text"}
    outcome = receive(pdu, version)
    assert outcome.verdict is REDACT and "content hash" in outcome.reason
    assert outcome.event.redacted and outcome.event.content == {}
    assert outcome.event.event_id == ev.event_id
    assert outcome.event.pdu == redact(pdu, version)
    # A copy redacted by someone else verifies the same way.
    assert receive(redact(ev.pdu, version), version).verdict is REDACT


@all_versions
@pytest.mark.parametrize("claimed", ["", "%%%", 5, "AAAA"])
def test_bad_claimed_hash_redacts(version: RoomVersion, claimed: Any) -> None:
    pdu = event(version).get_pdu_json()
    pdu["hashes"] = {"sha256": claimed}
    sign_event(pdu, ALICE.server_name, ALICE, version)  # re-signed: only the hash is off
    if not isinstance(claimed, str):
        with pytest.raises(EventFormatError):
            parse_pdu(pdu, version)
        assert verify_event(Event(pdu, version)).verdict is REDACT
    else:
        assert receive(pdu, version).verdict is REDACT


@all_versions
@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: p.update(signatures={}), "not signed by"),
        (lambda p: p["signatures"].pop(ALICE.server_name), "not signed by"),
        (lambda p: p.update(signatures={BOB.server_name: {"ed25519:p2p": "AAAA"}}), "not signed by"),
        (lambda p: p.update(depth=4), "bad signature"),
        (lambda p: p.update(sender=f"@alice:{BOB.server_name}"), "not signed by"),
        (lambda p: p.update(sender=f"@mallory:{ALICE.server_name}"), "bad signature"),
        (
            lambda p: (
                p.update(sender="@alice:example.org"),
                p["signatures"].update({"example.org": {"ed25519:1": "AAAA"}}),
            ),
            "no known ed25519 key of example.org",
        ),
        (lambda p: p["signatures"][ALICE.server_name].update({"ed25519:p2p": "AA"}), "bad signature"),
        (lambda p: p["signatures"][ALICE.server_name].update({"ed25519:2": "%"}), "not base64"),
    ],
)
def test_signature_failures_reject(version: RoomVersion, mangle: Any, reason: str) -> None:
    pdu = event(version).get_pdu_json()
    mangle(pdu)
    outcome = receive(pdu, version)
    assert outcome.verdict is REJECT
    assert reason in outcome.reason


@all_versions
def test_any_key_id_of_a_hex_server_is_its_key(version: RoomVersion) -> None:
    other_label = SigningKey(ALICE.key, "renamed")
    pdu = event(version, key=other_label).get_pdu_json()
    assert list(pdu["signatures"][ALICE.server_name]) == ["ed25519:renamed"]
    assert receive(pdu, version).verdict is ACCEPT


@all_versions
def test_a_signature_by_the_right_server_with_the_wrong_key_rejects(version: RoomVersion) -> None:
    pdu = event(version).get_pdu_json()
    del pdu["signatures"]
    sign_event(pdu, ALICE.server_name, BOB, version)
    assert receive(pdu, version).verdict is REJECT


# -- restricted joins: the authorising server signs too --------------------------------


def join(version: RoomVersion, authoriser: str, *signers: SigningKey) -> dict[str, Any]:
    pdu = event(
        version, type="m.room.member", state_key=f"@alice:{ALICE.server_name}",
        content={"membership": "join", "join_authorised_via_users_server": authoriser},
    ).get_pdu_json()
    for key in signers:
        sign_event(pdu, key.server_name, key, version)
    return pdu


@all_versions
def test_restricted_join_needs_the_authorising_server(version: RoomVersion) -> None:
    authoriser = f"@bob:{BOB.server_name}"
    assert required_signers(Event(join(version, authoriser), version)) == [
        ALICE.server_name,
        BOB.server_name,
    ]
    assert receive(join(version, authoriser, BOB), version).verdict is ACCEPT
    outcome = receive(join(version, authoriser), version)
    assert outcome.verdict is REJECT and f"not signed by {BOB.server_name}" in outcome.reason
    # Same server: one signature covers both.
    assert receive(join(version, f"@carol:{ALICE.server_name}"), version).verdict is ACCEPT
    bad = receive(join(version, "not a user"), version)
    assert bad.verdict is REJECT and "is not a user ID" in bad.reason


@all_versions
def test_only_joins_need_the_authorising_server(version: RoomVersion) -> None:
    pdu = join(version, f"@bob:{BOB.server_name}")
    pdu["content"]["membership"] = "leave"
    del pdu["signatures"]
    add_content_hash(pdu)
    sign_event(pdu, ALICE.server_name, ALICE, version)
    assert receive(pdu, version).verdict is ACCEPT  # the auth rules judge this one


# -- keys ---------------------------------------------------------------------------------


def test_hex_server_keys() -> None:
    keys = hex_server_keys(ALICE.server_name)
    assert bytes(keys["ed25519:anything"]) == bytes(ALICE.verify_key)
    assert keys.get("curve25519:x") is None
    assert hex_server_keys("example.org") == {}
    assert hex_server_keys(ALICE.server_name.upper()) == {}


def test_known_keys_verify_the_spec_event_vector() -> None:
    vector = copy.deepcopy(EVENT_VECTORS["examples"][0]["signed"])
    version = ROOM_V10
    public = SigningKey.from_seed(decode_base64(SPEC_KEY["seed"])).public_key_base64
    known = parse_verify_keys({"domain": {SPEC_KEY["key_id"]: public}})
    assert receive(vector, version).verdict is REJECT  # "domain" is no key
    assert receive(vector, version, with_known_keys(known)).verdict is ACCEPT
    vector["content"] = {"x": 1}
    assert receive(vector, version, with_known_keys(known)).verdict is REDACT


def test_known_keys_fall_back_to_hex_names() -> None:
    lookup = with_known_keys({ALICE.server_name: {"ed25519:extra": BOB.verify_key}})
    keys = lookup(ALICE.server_name)
    assert bytes(keys["ed25519:extra"]) == bytes(BOB.verify_key)
    assert bytes(keys["ed25519:p2p"]) == bytes(ALICE.verify_key)
    assert bytes(lookup(BOB.server_name)["ed25519:p2p"]) == bytes(BOB.verify_key)


@pytest.mark.parametrize(
    "bad",
    [[], {"s": []}, {"s": {"rsa:1": "AAAA"}}, {"s": {"ed25519:1": "%%"}},
     {"s": {"ed25519:1": "AAAA"}}, {"s": {"ed25519:1": 5}}],
)
def test_parse_verify_keys_refuses_bad_entries(bad: Any) -> None:
    with pytest.raises(BadJSON):
        parse_verify_keys(bad)


# -- property: tampering never goes unnoticed ------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)


def _events() -> list[Event]:
    out = []
    for version in VERSIONS:
        out += [
            event(version),
            event(version, type="m.room.power_levels", state_key="",
                  content={"users": {"@a:x": 100}, "invite": 0, "notifications": {"room": 5}}),
            Event(join(version, f"@bob:{BOB.server_name}", BOB), version),
            event(version, type="m.room.member", state_key="@x:y",
                  content={"membership": "invite", "third_party_invite": {"signed": {"t": 1}}}),
            event(version, type="m.room.redaction",
                  content={"redacts": "$" + "T" * 43, "reason": "spam"}),
            build_event(
                version, signing_key=ALICE, sender=f"@alice:{ALICE.server_name}",
                type="m.room.create", state_key="", content={"room_version": version.identifier},
                room_id=None if version.room_id_is_create_event_hash else room_id(version),
            ),
        ]
    return out


EVENTS = _events()
TOP_LEVEL_TARGETS = ["type", "sender", "content", "prev_events", "auth_events", "depth",
                     "origin_server_ts", "hashes", "room_id", "state_key", "origin",
                     "membership", "prev_state", "redacts", "custom"]


@st.composite
def tampered(draw: st.DrawFn) -> tuple[Event, dict[str, Any]]:
    original = draw(st.sampled_from(EVENTS))
    pdu = copy.deepcopy(original.pdu)
    if draw(st.booleans()):  # change, add or remove a top-level key
        key = draw(st.sampled_from(TOP_LEVEL_TARGETS))
        if key in pdu and draw(st.booleans()):
            del pdu[key]
        else:
            pdu[key] = draw(json_value.filter(lambda v: v != pdu.get(key, object())))
    else:  # change, add or remove a key of the content
        content = pdu["content"]
        key = draw(st.sampled_from(sorted(content) + ["membership", "body", "invite", "new"]))
        if key in content and draw(st.booleans()):
            del content[key]
        else:
            content[key] = draw(json_value.filter(lambda v: v != content.get(key, object())))
    return original, pdu


@given(tampered())
def test_tampering_rejects_or_redacts_never_accepts(case: tuple[Event, dict[str, Any]]) -> None:
    original, pdu = case
    version = original.room_version
    try:
        event = parse_pdu(pdu, version)
    except EventFormatError:
        return  # dropped at step 1, which is just as good
    outcome = verify_event(event)
    assert outcome.verdict is not ACCEPT
    # Exactly as the spec says: signatures cover the redacted event, so the
    # change is survivable (REDACT) iff it left the redacted event intact.
    intact = reference_hash_input(pdu, version) == reference_hash_input(original.pdu, version)
    assert outcome.verdict is (REDACT if intact else REJECT), outcome.reason
    if intact:
        assert outcome.event.event_id == original.event_id
        assert outcome.event.pdu == redact(original.pdu, version)
