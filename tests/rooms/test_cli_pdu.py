"""`p2pserver pdu`: the JSON Lines tools, on the spec's vectors and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pserver.cli import main
from p2pserver.rooms.base64 import decode_base64, encode_base64
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.events import Event
from p2pserver.rooms.hashing import compute_content_hash, compute_reference_hash
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey

FIXTURES = Path(__file__).parent.parent / "fixtures/spec"
CANONICAL = json.loads((FIXTURES / "canonical_json.json").read_text())["examples"]
SPEC_KEY = json.loads((FIXTURES / "signing_key.json").read_text())
EVENT_VECTORS = json.loads((FIXTURES / "event_signing.json").read_text())
KEY = SigningKey.generate()


@pytest.fixture
def pdu_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``run(*argv, lines=[...])`` -> (exit status, output objects, stderr)."""

    def run(*argv: str, lines: list[Any]) -> tuple[int, list[dict[str, Any]], str]:
        text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        status = main(["pdu", *argv])
        captured = capsys.readouterr()
        return status, [json.loads(line) for line in captured.out.splitlines()], captured.err

    return run


def spec_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.key"
    path.write_text(f"ed25519 {SPEC_KEY['key_id'].split(':')[1]} {SPEC_KEY['seed']}\n")
    return path


def message(version: RoomVersion, **content: Any) -> Event:
    return build_event(
        version,
        signing_key=KEY,
        sender=f"@a:{KEY.server_name}",
        type="m.room.message",
        content={"body": "hi", **content},
        room_id="!" + "R" * 43 if version.room_id_is_create_event_hash else "!r:example.org",
        prev_events=["$" + "P" * 43],
        auth_events=["$" + "A" * 43],
        depth=2,
    )


# -- canonical ----------------------------------------------------------------------


def test_canonical_spec_examples(pdu_cli: Any) -> None:
    lines = [e["input"].replace("\n", " ") for e in CANONICAL]  # one value per line
    status, out, _ = pdu_cli("canonical", lines=lines)
    assert status == 0
    assert [o["canonical"] for o in out] == [e["canonical"] for e in CANONICAL]


def test_canonical_strict(pdu_cli: Any) -> None:
    lines = [e["input"].replace("\n", " ") for e in CANONICAL]
    status, out, _ = pdu_cli("canonical", "--strict", lines=lines)
    assert status == 1  # the 1e10 example is not strict canonical JSON
    for example, result in zip(CANONICAL, out, strict=True):
        if example["strict"]:
            assert result == {"canonical": example["canonical"]}
        else:
            assert result["errcode"] == "M_BAD_JSON" and "float" in result["error"]


def test_canonical_bad_lines_fail_alone(pdu_cli: Any) -> None:
    status, out, err = pdu_cli(
        "canonical", lines=["[1.5]", "not json", "", '{"b":1,"a":[true]}', "1e400", '"\\ud800"']
    )
    assert status == 1 and err == ""
    assert len(out) == 5  # the blank line is skipped
    assert "float" in out[0]["error"] and out[0]["errcode"] == "M_BAD_JSON"
    assert "invalid JSON" in out[1]["error"]
    assert out[2] == {"canonical": '{"a":[true],"b":1}'}
    assert "out of range" in out[3]["error"]
    assert "Unicode" in out[4]["error"]


# -- redact and id --------------------------------------------------------------------


def test_redact(pdu_cli: Any) -> None:
    member = {
        "type": "m.room.member", "state_key": "@b:x", "origin": "x", "sender": "@a:x",
        "content": {"membership": "invite", "third_party_invite": {"signed": {"t": 1}, "n": 2},
                    "displayname": "B"},
        "unsigned": {"age": 1},
    }
    for version in ("10", "11", "12"):
        status, out, _ = pdu_cli("redact", "--room-version", version, lines=[member])
        assert status == 0 and out == [redact(member, get(version))]
    assert out[0]["content"] == {"membership": "invite", "third_party_invite": {"signed": {"t": 1}}}
    status, out, _ = pdu_cli("redact", lines=[[1], {"content": {"x": 1.5}}])
    assert status == 1 and "JSON object" in out[0]["error"] and "float" in out[1]["error"]


def get(identifier: str) -> RoomVersion:
    return {"10": ROOM_V10, "11": ROOM_V11, "12": ROOM_V12}[identifier]


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda v: v.identifier)
def test_id(pdu_cli: Any, version: RoomVersion) -> None:
    event = message(version)
    status, out, _ = pdu_cli("id", "--room-version", version.identifier, lines=[event.pdu])
    assert status == 0
    assert out == [{
        "event_id": event.event_id,
        "content_hash": event.pdu["hashes"]["sha256"],
        "reference_hash": encode_base64(compute_reference_hash(event.pdu, version)),
        "room_id": event.room_id,
    }]


def test_id_derives_the_v12_room_id_of_a_create_event(pdu_cli: Any) -> None:
    create = build_event(
        ROOM_V12, signing_key=KEY, sender=f"@a:{KEY.server_name}", type="m.room.create",
        content={"room_version": "12"}, room_id=None, state_key="",
    )
    status, out, _ = pdu_cli("id", "--room-version", "12", lines=[create.pdu])
    assert out[0]["room_id"] == "!" + create.event_id[1:] == create.room_id
    status, out, _ = pdu_cli("id", "--room-version", "11", lines=[create.pdu])
    assert out[0]["room_id"] is None  # before v12 the room ID is not derived


def test_id_of_the_spec_vectors(pdu_cli: Any) -> None:
    signed = [v["signed"] for v in EVENT_VECTORS["examples"]]
    status, out, _ = pdu_cli("id", "--room-version", "10", lines=signed)
    assert status == 0
    assert out[0]["content_hash"] == signed[0]["hashes"]["sha256"]
    # The second vector carries an `event_id` key, which event format v3+
    # does not have: the tool (like Event and receipt) hashes without it.
    assert "event_id" in signed[1]
    without = {k: v for k, v in signed[1].items() if k != "event_id"}
    assert decode_base64(out[1]["content_hash"]) == compute_content_hash(without)
    assert out[1]["content_hash"] != signed[1]["hashes"]["sha256"]


# -- sign ----------------------------------------------------------------------------------


def test_sign_reproduces_the_spec_event_vectors(pdu_cli: Any, tmp_path: Path) -> None:
    status, out, _ = pdu_cli(
        "sign", "--room-version", "10", "--server-name", "domain",
        "--signing-key", str(spec_key_file(tmp_path)),
        lines=[v["input"] for v in EVENT_VECTORS["examples"]],
    )
    assert status == 0
    assert out == [v["signed"] for v in EVENT_VECTORS["examples"]]


def test_sign_defaults_to_the_hex_server_name_and_verifies(pdu_cli: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "node.key"
    key_file.write_text(KEY.serialize())
    unsigned = {k: v for k, v in message(ROOM_V12).pdu.items() if k not in ("hashes", "signatures")}
    status, out, _ = pdu_cli("sign", "--signing-key", str(key_file), lines=[unsigned])
    assert status == 0 and list(out[0]["signatures"]) == [KEY.server_name]
    assert out[0] == message(ROOM_V12).pdu
    status, verdicts, _ = pdu_cli("verify", lines=out)
    assert verdicts[0]["outcome"] == "accept"


def test_sign_with_a_bad_key_file_says_so(pdu_cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    for path in (bad, tmp_path / "missing.key"):
        status, out, err = pdu_cli("sign", "--signing-key", str(path), lines=[{}])
        assert status == 1 and out == [] and "cannot read signing key" in err


# -- verify -------------------------------------------------------------------------------


def test_verify_outcomes(pdu_cli: Any) -> None:
    good = message(ROOM_V11).pdu
    edited = {**good, "content": {"body": "edited"}}
    forged = {**good, "depth": 99}
    malformed = {**good, "depth": -1}
    status, out, _ = pdu_cli("verify", "--room-version", "11",
                             lines=[good, edited, forged, malformed])
    assert status == 0  # every line got a verdict
    event_id = message(ROOM_V11).event_id
    assert out[0] == {"outcome": "accept", "event_id": event_id, "error": None}
    assert out[1]["outcome"] == "redact" and out[1]["event_id"] == event_id
    assert out[2]["outcome"] == "reject" and "bad signature" in out[2]["error"]
    assert out[3] == {"outcome": "reject", "event_id": None, "errcode": "M_BAD_JSON",
                      "error": "invalid PDU: `depth` must be between 0 and 9007199254740991, not -1"}


def test_verify_with_known_keys(pdu_cli: Any, tmp_path: Path) -> None:
    vector = EVENT_VECTORS["examples"][0]["signed"]
    status, out, _ = pdu_cli("verify", "--room-version", "10", lines=[vector])
    assert out[0]["outcome"] == "reject"  # "domain" is not a hex server name
    public = SigningKey.from_seed(decode_base64(SPEC_KEY["seed"])).public_key_base64
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"domain": {SPEC_KEY["key_id"]: public}}))
    status, out, _ = pdu_cli("verify", "--room-version", "10", "--keys", str(keys), lines=[vector])
    assert status == 0 and out[0]["outcome"] == "accept"


@pytest.mark.parametrize("content", ["[", '{"domain": {"ed25519:1": "short"}}', "[]"])
def test_verify_with_a_bad_keys_file_says_so(pdu_cli: Any, tmp_path: Path, content: str) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(content)
    status, out, err = pdu_cli("verify", "--keys", str(keys), lines=[{}])
    assert status == 1 and out == [] and "cannot read keys" in err


def test_verify_bad_lines(pdu_cli: Any) -> None:
    status, out, _ = pdu_cli("verify", lines=["{", "[1]", '{"a":1,"a":2}'])
    assert status == 1
    assert out[0]["errcode"] == "M_BAD_JSON"
    assert out[1] == {"outcome": "reject", "event_id": None, "errcode": "M_BAD_JSON",
                      "error": "invalid PDU: a PDU must be a JSON object, not array"}
    assert "duplicate key" in out[2]["error"]


@pytest.mark.parametrize("action", ["redact", "id", "verify"])
def test_unknown_room_version_is_an_error_line(pdu_cli: Any, action: str) -> None:
    status, out, _ = pdu_cli(action, "--room-version", "9", lines=[message(ROOM_V10).pdu])
    assert status == 1
    assert out[0]["errcode"] == "M_UNSUPPORTED_ROOM_VERSION" and "'9'" in out[0]["error"]


def test_no_traceback_from_the_real_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2pserver", "pdu", "verify"],
        input='{"type": 5}\n\x00\n[[[[\n',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [json.loads(line).get("errcode") for line in result.stdout.splitlines()] == [
        "M_BAD_JSON"
    ] * 3


# -- check-auth -------------------------------------------------------------------------


def check_auth_request(room: Any, event: Event, **overrides: Any) -> dict[str, Any]:
    request = {
        "room_version": room.version.identifier,
        "event": event.pdu,
        # v12's create event is not listed but is passed along all the same.
        "auth_events": [e.pdu for e in room.auth_events_of(event)],
        "rejected": sorted(room.rejected),
    }
    request.update(overrides)
    return request


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda v: v.identifier)
def test_check_auth(pdu_cli: Any, version: RoomVersion) -> None:
    from tests.rooms.authkit import new_room, new_user

    bob, eve = new_user("bob"), new_user("eve")
    room = new_room(version, members=(bob,))
    allowed = room.build(bob, "m.room.message", {"body": "hi"})
    outsider = room.build(eve, "m.room.message", {"body": "let me in"})
    topic = room.build(bob, "m.room.topic", {"topic": "x"}, "")  # needs power 50
    status, out, _ = pdu_cli(
        "check-auth",
        lines=[check_auth_request(room, e) for e in (allowed, outsider, topic)],
    )
    assert status == 0
    assert out[0] == {"allowed": True}
    assert out[1]["allowed"] is False and out[1]["error"]
    assert out[2]["allowed"] is False and out[2]["error"]
    assert out[1]["error"] != out[2]["error"]  # each names its own failing rule


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V12], ids=lambda v: v.identifier)
def test_check_auth_rejected_and_missing_auth_events(pdu_cli: Any, version: RoomVersion) -> None:
    from tests.rooms.authkit import new_room, new_user

    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    event = room.build(bob, "m.room.message", {"body": "hi"})
    member_id = room.state[("m.room.member", bob.user_id)].event_id
    status, out, _ = pdu_cli(
        "check-auth", lines=[check_auth_request(room, event, rejected=[member_id])]
    )
    assert status == 0 and out[0]["allowed"] is False and member_id in out[0]["error"]
    status, out, _ = pdu_cli("check-auth", lines=[check_auth_request(room, event, auth_events=[])])
    assert status == 1  # not a verdict: the caller has to fetch the events first
    assert set(out[0]["missing"]) == set(event.auth_event_ids) | (
        {"$" + room.room_id[1:]} if version.room_id_is_create_event_hash else set()
    )


def test_check_auth_bad_requests(pdu_cli: Any) -> None:
    good = message(ROOM_V12).pdu
    status, out, _ = pdu_cli(
        "check-auth",
        lines=[
            [1],
            {"room_version": "12"},
            {"room_version": "9", "event": good},
            {"room_version": "12", "event": {**good, "depth": "x"}},
            {"room_version": "12", "event": good, "auth_events": [{"type": 1}]},
            {"room_version": "12", "event": good, "auth_events": {}},
            {"room_version": "12", "event": good, "rejected": [1]},
        ],
    )
    assert status == 1
    assert "room_version, event" in out[0]["error"]
    assert out[1]["error"] == "missing `event`"
    assert out[2]["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    assert out[3]["error"].startswith("event: invalid PDU: `depth` must be an integer")
    assert out[4]["error"].startswith("auth_events[0]: invalid PDU")
    assert "`auth_events` must be an array" in out[5]["error"]
    assert "`rejected` must be an array of event IDs" in out[6]["error"]
    assert all(o["errcode"] in ("M_BAD_JSON", "M_UNSUPPORTED_ROOM_VERSION") for o in out)
