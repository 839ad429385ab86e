"""The JSON fixtures in tests/fixtures/state: resolve each and compare.

The fixtures are language-neutral (see make_fixtures.py for the format);
this test feeds them to :func:`resolve_state` through a MemoryEventSource.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pserver.rooms.events import StateKey
from p2pserver.rooms.room_versions import get_room_version
from p2pserver.rooms.validation import parse_pdu
from p2pserver.state import MemoryEventSource, resolve_state
from tests.fixtures.state import make_fixtures

FIXTURES = sorted(make_fixtures.HERE.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def as_state(rows: list[list[str]]) -> dict[StateKey, str]:
    return {(t, k): e for t, k, e in rows}


def resolve_fixture(fixture: dict[str, Any], *, reverse: bool = False) -> dict[StateKey, str]:
    version = get_room_version(fixture["room_version"])
    events = [parse_pdu(pdu, version) for pdu in fixture["events"]]
    state_sets = [as_state(rows) for rows in fixture["state_sets"]]
    if reverse:  # neither the order of the state sets nor of the events matters
        events.reverse()
        state_sets.reverse()
    source = MemoryEventSource(events, rejected=fixture["rejected"])
    return resolve_state(version, state_sets, source)


def test_there_are_fixtures_for_every_version() -> None:
    versions = {load(path)["room_version"] for path in FIXTURES}
    assert versions == {"10", "11", "12"}
    assert len(FIXTURES) >= 40


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    fixture = load(path)
    names = fixture["names"]
    expected = as_state(fixture["expected"])
    for reverse in (False, True):
        result = resolve_fixture(fixture, reverse=reverse)
        readable = {k: names.get(v, v) for k, v in result.items()}
        assert result == expected, (fixture["description"], readable)


def test_v2_and_v2_1_differ_exactly_where_msc4297_says() -> None:
    """Problem A: v2 loses the join rules. Problem B: v2 resets the power levels."""
    for problem, key in (("a", ("m.room.join_rules", "")), ("b", ("m.room.power_levels", ""))):
        results = {}
        for version in ("10", "11", "12"):
            fixture = load(make_fixtures.HERE / f"msc4297_problem_{problem}.v{version}.json")
            names = fixture["names"]
            result = resolve_fixture(fixture)
            results[version] = {k: names.get(v, v) for k, v in result.items()}
        differing = {
            k
            for k in results["11"].keys() | results["12"].keys()
            if results["11"].get(k) != results["12"].get(k)
        }
        assert differing == {key}
        assert results["10"] == results["11"]
    a11 = load(make_fixtures.HERE / "msc4297_problem_a.v11.json")
    assert ("m.room.join_rules", "") not in as_state(a11["expected"])


def test_fixtures_are_reproducible() -> None:
    """make_fixtures.py regenerates exactly the checked-in files."""
    built = make_fixtures.build_all()
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in FIXTURES}
    assert built.keys() == on_disk.keys()
    for name, text in built.items():
        assert text == on_disk[name], f"{name} differs: rerun make_fixtures.py"
