"""`p2pserver state resolve`: JSON Lines in, resolved state (or an error) out."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from p2pserver.cli import main
from tests.fixtures.state import make_fixtures

FIXTURES = sorted(make_fixtures.HERE.glob("*.json"))


def run(
    lines: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[Any]]:
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    status = main(["state", "resolve"])
    out = capsys.readouterr().out.splitlines()
    return status, [json.loads(line) for line in out]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((make_fixtures.HERE / name).read_text(encoding="utf-8"))


def test_every_fixture_through_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fixtures = [json.loads(p.read_text(encoding="utf-8")) for p in FIXTURES]
    status, outputs = run([json.dumps(f) for f in fixtures], monkeypatch, capsys)
    assert status == 0
    assert len(outputs) == len(fixtures)
    for f, output in zip(fixtures, outputs, strict=True):
        assert output == {"state": f["expected"]}, f["description"]


def test_bad_lines_get_errors_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = fixture("concurrent_joins.v12.json")
    request = {k: good[k] for k in ("room_version", "events", "state_sets")}
    bad_pdu = dict(request, events=[*request["events"][:1], {"type": "m.room.topic"}])
    bad_entry = dict(request, state_sets=[[["m.room.topic", ""]]])
    duplicate = dict(request, state_sets=[request["state_sets"][0] * 2])
    wrong_key = dict(
        request,
        state_sets=[
            request["state_sets"][0],
            [
                [t, k, e] if t != "m.room.create" else ["m.room.name", "", e]
                for t, k, e in request["state_sets"][1]
            ],
        ],
    )
    lines = [
        "this is not JSON",
        "[1, 2]",
        json.dumps(dict(request, room_version="9")),
        json.dumps({k: v for k, v in request.items() if k != "events"}),
        json.dumps(bad_pdu),
        json.dumps(bad_entry),
        json.dumps(duplicate),
        json.dumps(dict(request, rejected=[1])),
        json.dumps(wrong_key),
        '{"room_version": "12", "events": [], "state_sets": [], "x": 1.5}',
        json.dumps(request),
    ]
    status, outputs = run(lines, monkeypatch, capsys)
    assert status == 1
    assert len(outputs) == len(lines)
    errors = [o.get("error", "") for o in outputs[:-1]]
    assert all(errors), outputs
    assert "invalid JSON" in errors[0]
    assert "JSON object" in errors[1]
    assert outputs[2]["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    assert "`events` must be a list" in errors[3]
    assert errors[4].startswith("events[1]:") and outputs[4]["errcode"] == "M_BAD_JSON"
    assert "state_sets[0][0] must be [type, state_key, event_id]" in errors[5]
    assert "two entries" in errors[6]
    assert "`rejected`" in errors[7]
    assert "m.room.name" in errors[8] and outputs[8]["errcode"] == "M_INVALID_PARAM"
    assert "floats" in errors[9]
    assert outputs[-1] == {"state": good["expected"]}


def test_empty_input_and_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([], monkeypatch, capsys) == (0, [])
    assert main(["state"]) == 2


def test_the_installed_command() -> None:
    line = json.dumps(fixture("msc4297_problem_b.v12.json"))
    done = subprocess.run(
        [sys.executable, "-m", "p2pserver", "state", "resolve"],
        input=line + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"state": fixture("msc4297_problem_b.v12.json")["expected"]}
