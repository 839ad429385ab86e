"""Signing JSON and events: the appendix's test vectors and the rules of
"Checking for a signature"."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from p2pserver.rooms.base64 import decode_base64, encode_base64
from p2pserver.rooms.errors import SignatureError
from p2pserver.rooms.hashing import add_content_hash, reference_hash_input
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, get_room_version
from p2pserver.rooms.signing import (
    SigningKey,
    check_signatures,
    server_name_verify_key,
    sign_event,
    sign_json,
    verify_event_signature,
    verify_json,
)

FIXTURES = Path(__file__).parent.parent / "fixtures/spec"
SPEC_KEY = json.loads((FIXTURES / "signing_key.json").read_text())
JSON_VECTORS = json.loads((FIXTURES / "signing_json.json").read_text())["examples"]
EVENT_VECTORS = json.loads((FIXTURES / "event_signing.json").read_text())
EVENT_VERSION = get_room_version(EVENT_VECTORS["room_version"])


def spec_key() -> SigningKey:
    version = SPEC_KEY["key_id"].split(":", 1)[1]
    return SigningKey.from_seed(decode_base64(SPEC_KEY["seed"]), version)


def spec_verify_keys() -> dict[str, nacl.signing.VerifyKey]:
    return {SPEC_KEY["key_id"]: spec_key().verify_key}


def test_spec_key_parses_from_the_key_file_format() -> None:
    key = SigningKey.parse(f"ed25519 1 {SPEC_KEY['seed']}\n")
    assert key.key_id == SPEC_KEY["key_id"]
    assert bytes(key.key) == bytes(spec_key().key)


# -- appendix: JSON signing --------------------------------------------------------


@pytest.mark.parametrize("vector", JSON_VECTORS, ids=lambda v: json.dumps(v["input"]))
def test_spec_json_signing(vector: dict[str, Any]) -> None:
    signed = sign_json(copy.deepcopy(vector["input"]), SPEC_KEY["server_name"], spec_key())
    assert signed == vector["signed"]
    verify_json(vector["signed"], SPEC_KEY["server_name"], spec_verify_keys())


@pytest.mark.parametrize("vector", JSON_VECTORS, ids=lambda v: json.dumps(v["input"]))
def test_spec_json_signature_ignores_unsigned_but_not_data(vector: dict[str, Any]) -> None:
    signed = vector["signed"]
    verify_json({**signed, "unsigned": {"age_ts": 1}}, "domain", spec_verify_keys())
    with pytest.raises(SignatureError):
        verify_json({**signed, "extra": 1}, "domain", spec_verify_keys())


# -- appendix: event signing ------------------------------------------------------------


@pytest.mark.parametrize("vector", EVENT_VECTORS["examples"], ids=lambda v: v["name"])
def test_spec_event_signing(vector: dict[str, Any]) -> None:
    pdu = copy.deepcopy(vector["input"])
    add_content_hash(pdu)
    sign_event(pdu, SPEC_KEY["server_name"], spec_key(), EVENT_VERSION)
    assert pdu == vector["signed"]
    verify_event_signature(vector["signed"], "domain", EVENT_VERSION, spec_verify_keys())


@pytest.mark.parametrize("vector", EVENT_VECTORS["examples"], ids=lambda v: v["name"])
def test_spec_event_signature_survives_redaction_of_content(vector: dict[str, Any]) -> None:
    signed = vector["signed"]
    verify_event_signature(
        {**signed, "content": {}, "unsigned": {}}, "domain", EVENT_VERSION, spec_verify_keys()
    )
    with pytest.raises(SignatureError):  # origin_server_ts is covered
        verify_event_signature(
            {**signed, "origin_server_ts": 1}, "domain", EVENT_VERSION, spec_verify_keys()
        )


def test_spec_event_vectors_use_the_pre_v11_redaction_rules() -> None:
    # The vectors keep `origin` in the signed form; v11 dropped it.
    signed = EVENT_VECTORS["examples"][0]["signed"]
    with pytest.raises(SignatureError):
        verify_event_signature(signed, "domain", ROOM_V11, spec_verify_keys())


def test_event_signature_covers_the_reference_hash_input() -> None:
    pdu = copy.deepcopy(EVENT_VECTORS["examples"][1]["signed"])
    signature = decode_base64(pdu["signatures"]["domain"]["ed25519:1"])
    spec_key().verify_key.verify(reference_hash_input(pdu, ROOM_V10), signature)


# -- checking for a signature --------------------------------------------------------------

OTHER = SigningKey.generate("other")


def _signed(*keys: SigningKey, server: str = "example.org") -> dict[str, Any]:
    obj: dict[str, Any] = {"a": 1}
    for key in keys:
        sign_json(obj, server, key)
    return obj


def _keys(*keys: SigningKey) -> dict[str, nacl.signing.VerifyKey]:
    return {k.key_id: k.verify_key for k in keys}


def test_one_known_valid_signature_suffices_unknown_key_ids_are_skipped() -> None:
    obj = _signed(spec_key(), OTHER)
    verify_json(obj, "example.org", _keys(spec_key()))
    verify_json(obj, "example.org", _keys(OTHER))


def test_every_signature_under_a_known_key_must_verify() -> None:
    obj = _signed(spec_key(), OTHER)
    obj["signatures"]["example.org"][OTHER.key_id] = obj["signatures"]["example.org"][
        spec_key().key_id
    ]
    verify_json(obj, "example.org", _keys(spec_key()))  # the bad one's key is unknown
    with pytest.raises(SignatureError, match="bad signature ed25519:other"):
        verify_json(obj, "example.org", _keys(spec_key(), OTHER))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda o: o.pop("signatures"), "no signatures"),
        (lambda o: o.update(signatures=[]), "no signatures"),
        (lambda o: o["signatures"].pop("example.org"), "not signed by example.org"),
        (lambda o: o["signatures"].update({"example.org": {}}), "not signed by example.org"),
        (lambda o: o["signatures"]["example.org"].update({"ed25519:1": "%%%"}), "not base64"),
        (lambda o: o["signatures"]["example.org"].update({"ed25519:1": 5}), "not base64"),
        (lambda o: o["signatures"]["example.org"].update({"ed25519:1": "AAAA"}), "bad signature"),
        (lambda o: o.update(a=2), "bad signature"),
    ],
)
def test_signature_failures(mangle: Any, message: str) -> None:
    obj = _signed(spec_key())
    mangle(obj)
    with pytest.raises(SignatureError, match=message):
        verify_json(obj, "example.org", _keys(spec_key()))


def test_unknown_algorithms_and_unknown_keys_leave_nothing_to_check() -> None:
    obj = _signed(spec_key())
    sig = obj["signatures"]["example.org"].pop("ed25519:1")
    obj["signatures"]["example.org"]["curve25519:1"] = sig
    with pytest.raises(SignatureError, match="no known ed25519 key"):
        verify_json(obj, "example.org", {"curve25519:1": spec_key().verify_key})
    with pytest.raises(SignatureError, match="no known ed25519 key"):
        verify_json(_signed(spec_key()), "example.org", _keys(OTHER))


def test_check_signatures_computes_the_message_only_for_a_known_key() -> None:
    calls = []

    def message() -> bytes:
        calls.append(1)
        return b"x"

    with pytest.raises(SignatureError):
        check_signatures(message, {"s": {"ed25519:zz": "AAAA"}}, "s", {})
    assert calls == []


# -- server names are keys -----------------------------------------------------------------


def test_hex_server_name_is_the_verify_key() -> None:
    key = SigningKey.generate()
    assert bytes(server_name_verify_key(key.server_name)) == bytes(key.verify_key)  # type: ignore[arg-type]
    for name in [key.server_name.upper(), key.server_name[:-1], "domain", "g" * 64]:
        assert server_name_verify_key(name) is None
    assert encode_base64(bytes(key.verify_key)) == key.public_key_base64
