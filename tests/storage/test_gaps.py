"""Gaps and backward extremities in the store; positions for history paged back to."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from p2pserver.storage.database import Database
from p2pserver.storage.schema import MIGRATIONS
from p2pserver.storage.store import Store

ROOM = "!room:example"


def test_gaps_to_fill_and_history_to_page_back_to() -> None:
    store = Store.open()
    with store.transaction():
        store.add_gaps(ROOM, ["$a", "$b"])
        store.add_gaps(ROOM, ["$old"], auto=False)
    assert store.gaps(ROOM) == ["$a", "$b"]
    assert store.backward_extremities(ROOM) == ["$old"]
    assert store.rooms_with_gaps() == [ROOM]
    # Recorded both ways: filled by itself.
    with store.transaction():
        store.add_gaps(ROOM, ["$old"])
        store.add_gaps(ROOM, ["$a"], auto=False)
    assert store.gaps(ROOM) == ["$a", "$b", "$old"]
    assert store.backward_extremities(ROOM) == []


def test_spent_gaps_go_and_history_stays() -> None:
    store = Store.open()
    with store.transaction():
        store.add_gaps(ROOM, ["$a", "$b"])
        store.add_gaps(ROOM, ["$old"], auto=False)
    for _ in range(3):
        with store.transaction():
            store.gaps_tried(ROOM, ["$a", "$old"], max_attempts=3)
    assert store.gaps(ROOM) == ["$b"]
    assert store.backward_extremities(ROOM) == ["$old"]
    with store.transaction():
        store.gaps_tried(ROOM, ["$b"], max_attempts=1)
    assert store.rooms_with_gaps() == []
    assert store.backward_extremities(ROOM) == ["$old"]


def test_history_positions_are_below_all_others_and_never_handed_out_twice() -> None:
    store = Store.open()
    first = store.reserve_history_positions(3)
    assert first == [-3, -2, -1]
    second = store.reserve_history_positions(2)
    assert second == [-5, -4]
    # A rollback clears the caches but not the reservations.
    with pytest.raises(RuntimeError), store.transaction():
        raise RuntimeError("rolled back")
    assert store.reserve_history_positions(1) == [-6]
    assert store.reserve_history_positions(0) == []


def test_gaps_recorded_before_step_7_are_filled_by_themselves(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    Database(path, migrations=MIGRATIONS[:6]).close()
    conn = apsw.Connection(str(path))
    conn.execute("INSERT INTO event_gaps (room_id, event_id) VALUES (?, '$gap')", (ROOM,))
    conn.close()
    store = Store.open(path)
    assert store.gaps(ROOM) == ["$gap"]
    assert store.backward_extremities(ROOM) == []
    store.close()


def test_step_7_finds_the_history_rooms_joined_before_it_have(tmp_path: Path) -> None:
    """Every prev event of the DAG we lack or hold as an outlier, but the recorded gaps."""
    path = tmp_path / "rooms.db"
    Database(path, migrations=MIGRATIONS[:6]).close()
    conn = apsw.Connection(str(path))
    columns = "(event_nid, event_id, room_id, type, sender, depth, origin_server_ts, status, pdu)"
    rows = [
        (1, "$held", "accepted"),
        (2, "$outlier", "outlier"),
        (3, "$join", "accepted"),
    ]
    for nid, event_id, status in rows:
        conn.execute(
            f"INSERT INTO events {columns} VALUES (?, ?, ?, 'm.x', '@u:x', 1, 0, ?, x'00')",
            (nid, event_id, ROOM, status),
        )
    edges = [(3, "$held"), (3, "$outlier"), (3, "$missing"), (3, "$gap"), (2, "$behind_outlier")]
    conn.executemany("INSERT INTO event_edges (event_nid, prev_event_id) VALUES (?, ?)", edges)
    conn.execute("INSERT INTO event_gaps (room_id, event_id) VALUES (?, '$gap')", (ROOM,))
    conn.close()
    store = Store.open(path)
    assert store.backward_extremities(ROOM) == ["$missing", "$outlier"]
    assert store.gaps(ROOM) == ["$gap"]
    store.close()
