"""The recorder: what counts as a delivery."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from p2pserver.engine.notifier import RoomUpdate
from sims.metrics import Recorder

ROOM = "!room:x"
NAMES = ["a" * 64, "b" * 64, "c" * 64]


def message(seq: int, event_id: str) -> Any:
    # Only the fields the recorder reads.
    return SimpleNamespace(
        type="m.room.message", room_id=ROOM, event_id=event_id, content={"sim": seq}
    )


def recorder_with_one_message() -> Recorder:
    recorder = Recorder(NAMES, start=0.0)
    recorder.room_id = ROOM
    recorder.self_joined = [True, True, True]
    sent = RoomUpdate(ROOM, message(0, "$m0"), 1, local=True)
    recorder.on_update(0, sent, 10.0, lambda: set(NAMES))
    return recorder


def test_a_message_restored_whole_after_arriving_stripped_is_delivered():
    """A stripped copy carries no content, so it is no delivery; the engine's
    announcement that the event is now held whole is."""
    recorder = recorder_with_one_message()
    record = recorder.messages[0]
    assert record.due == (1, 2)
    recorder.on_update(1, RoomUpdate(ROOM, message(0, "$m0"), 5), 11.0, lambda: set(NAMES))
    assert [r.seq for r in recorder.missing(2)] == [0]
    recorder.on_update(2, RoomUpdate(ROOM, None, 6, restored="$m0"), 30.0, lambda: set(NAMES))
    assert recorder.missing(2) == []
    (row,) = recorder.message_rows()
    assert row["delivered"] == 2 and row["held_not_timeline"] == 0
    assert row["latency_max"] == 20.0


def test_a_message_found_held_then_delivered_counts_once():
    """Found holding it outside the timeline (soft failed) when convergence
    was checked, then accepted after all: one delivery, not held as well."""
    recorder = recorder_with_one_message()
    record = recorder.messages[0]
    recorder.mark_held(record, 2)
    assert recorder.missing(2) == []
    recorder.on_update(2, RoomUpdate(ROOM, message(0, "$m0"), 7), 40.0, lambda: set(NAMES))
    (row,) = recorder.message_rows()
    assert row["delivered"] == 1 and row["held_not_timeline"] == 0
    assert recorder.outstanding == [0, 1, 0]
