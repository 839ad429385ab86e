import io
import json
import subprocess
import sys
from pathlib import Path

import trio

from p2pserver.cli import main as cli_main
from p2pserver.cli.replay import replay
from p2pserver.rooms.builder import build_event

from .conftest import make_room, trio_test


async def _replay(lines: list[str]) -> list[dict]:
    out = io.StringIO()
    assert await replay(io.StringIO("\n".join(lines) + "\n"), out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _run_replay(lines: list[str]) -> list[dict]:
    return trio.run(_replay, lines)


@trio_test
async def test_replay_reproduces_a_rooms_state_and_verdicts() -> None:
    room = await make_room(2, request={"preset": "public_chat"})
    (a, b), rid = room.engines, room.room_id
    room.net.offline.add(b.server_name)
    await a.send_state(rid, room.users[0], "m.room.topic", "", {"topic": "from a"})
    await b.send_message(rid, room.users[1], {"body": "concurrent"})
    room.net.offline.clear()
    await room.net.deliver()
    await a.send_message(rid, room.users[0], {"body": "merge"})
    rows = a.store.db.query("SELECT pdu, event_id, status FROM events ORDER BY event_nid")
    lines = [bytes(r[0]).decode() for r in rows]
    tampered = json.loads(lines[-1])
    tampered["origin_server_ts"] += 1
    results = await _replay([*lines, json.dumps(tampered), "{not json", lines[-1]])
    for (_, event_id, status), result in zip(rows, results, strict=False):
        assert result["event_id"] == event_id
        assert result["accepted"] == (status in ("accepted", "soft_failed"))
        assert result["soft_failed"] == (status == "soft_failed")
    extra = results[len(rows) : len(rows) + 3]
    assert extra[0]["accepted"] is False and extra[0]["rejected_reason"].startswith("signature")
    assert extra[1] == {
        "event_id": None,
        "accepted": False,
        "soft_failed": False,
        "rejected_reason": extra[1]["rejected_reason"],
    }
    assert extra[1]["rejected_reason"].startswith("format")
    assert extra[2]["event_id"] == rows[-1][1]  # a duplicate: same verdict
    state = results[-1]["state"]
    assert state == sorted([t, k, e] for (t, k), e in a.room_state(rid).items())


def test_replay_rejects_unauthorised_events() -> None:
    async def build() -> tuple[list[str], str]:
        room = await make_room(1, request={"preset": "private_chat"})
        a = room.engines[0]
        rows = a.store.db.query("SELECT pdu FROM events ORDER BY event_nid")
        lines = [bytes(r[0]).decode() for r in rows]
        # a correctly signed event from a server that is not in the room
        other = room.net.add_engine()
        version = a.store.room_version(room.room_id)
        assert version is not None
        state = a.room_state(room.room_id)
        event = build_event(
            version,
            signing_key=other.signing_key,
            sender=f"@x:{other.server_name}",
            type="m.room.message",
            content={"body": "hi"},
            room_id=room.room_id,
            prev_events=a.forward_extremities(room.room_id),
            auth_events=[state[("m.room.power_levels", "")]],
            depth=99,
        )
        return [*lines, json.dumps(event.get_pdu_json())], event.event_id

    lines, event_id = trio.run(build)
    results = _run_replay(lines)
    assert results[-2]["event_id"] == event_id
    assert results[-2]["accepted"] is False
    assert "auth events" in results[-2]["rejected_reason"]
    assert event_id not in {e for _, _, e in results[-1]["state"]}


def test_cli_entry_point(tmp_path: Path) -> None:
    bad_keys = tmp_path / "keys.json"
    bad_keys.write_text('{"s": {"ed25519:a": "not base64!"}}')
    assert cli_main(["replay", "--keys", str(bad_keys)]) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "p2pserver", "replay"],
        input="[1, 2]\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["accepted"] is False and lines[0]["event_id"] is None
    assert lines[-1] == {"state": []}
