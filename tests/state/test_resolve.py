"""resolve_state: definitions and bad input."""

from __future__ import annotations

import pytest

from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.state import MemoryEventSource, StateResolutionError, resolve_state
from p2pserver.state.resolve import is_power_event, split_conflicted_state
from tests.state.dag import Dag

TOPIC = ("m.room.topic", "")


def test_no_state_sets_resolve_to_nothing() -> None:
    assert resolve_state(ROOM_V12, [], MemoryEventSource()) == {}


def test_split_conflicted_state() -> None:
    a, b = {("t", ""): "$1", ("u", ""): "$2"}, {("t", ""): "$1", ("u", ""): "$3", ("v", ""): "$4"}
    unconflicted, conflicted = split_conflicted_state([a, b])
    assert unconflicted == {("t", ""): "$1"}
    # A key missing from some state set is conflicted too.
    assert conflicted == {("u", ""): {"$2", "$3"}, ("v", ""): {"$4"}}


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11, ROOM_V12], ids=lambda v: v.identifier)
def test_power_events(version: RoomVersion) -> None:
    dag = Dag(version)
    branch = dag.start(("bob", "carol"))
    kick = branch.member("kick", "alice", "bob", "leave")
    leave = branch.member("leave", "carol", "carol", "leave")
    ban = branch.member("ban", "alice", "carol", "ban")
    topic = branch.send("topic", "alice", "m.room.topic", {"topic": "x"}, "")
    odd_pl = branch.send("odd-pl", "alice", "m.room.power_levels", {"users": {}}, "x", check=False)
    assert is_power_event(dag["power-levels"])
    assert is_power_event(dag["join-rules"])
    assert is_power_event(odd_pl)  # the spec's definition has no state_key condition
    assert is_power_event(kick) and is_power_event(ban)
    assert not is_power_event(leave)  # leaving yourself takes no one's rights away
    assert not is_power_event(topic)
    assert not is_power_event(dag["bob-join"])
    assert not is_power_event(dag.create)  # not in the spec's definition


def test_unknown_and_rejected_events_take_no_part() -> None:
    dag = Dag(ROOM_V12)
    branch = dag.start()
    fork = branch.fork()
    t1 = branch.send("t1", "alice", "m.room.topic", {"topic": "1"}, "")
    t2 = fork.send("t2", "alice", "m.room.topic", {"topic": "2"}, "")
    everything = list(dag.events.values())
    unknown = fork.state | {TOPIC: "$unknown"}
    assert (
        resolve_state(ROOM_V12, [branch.state, unknown], MemoryEventSource(everything))[TOPIC]
        == t1.event_id
    )
    rejected = MemoryEventSource(everything, rejected=[t2.event_id])
    assert resolve_state(ROOM_V12, [branch.state, fork.state], rejected)[TOPIC] == t1.event_id
    assert (
        resolve_state(ROOM_V12, [branch.state, fork.state], MemoryEventSource(everything))[TOPIC]
        == t2.event_id
    )


def test_an_entry_under_the_wrong_key_is_an_error() -> None:
    dag = Dag(ROOM_V11)
    branch = dag.start()
    fork = branch.fork()
    topic = branch.send("topic", "alice", "m.room.topic", {"topic": "x"}, "")
    message = fork.send("message", "alice", "m.room.message", {"body": "hi"})
    source = MemoryEventSource(dag.events.values())
    wrong = fork.state | {("m.room.name", ""): topic.event_id}
    with pytest.raises(StateResolutionError, match="m.room.name"):
        resolve_state(ROOM_V11, [branch.state, wrong], source)
    not_state = fork.state | {TOPIC: message.event_id}
    with pytest.raises(StateResolutionError, match="m.room.message"):
        resolve_state(ROOM_V11, [branch.state, not_state], source)


def test_events_of_another_room_or_version_are_an_error() -> None:
    here, there = Dag(ROOM_V11), Dag(ROOM_V11, room_name="elsewhere")
    a, b = here.start(), there.start()
    a.send("t", "alice", "m.room.topic", {"topic": "a"}, "")
    b.send("t", "alice", "m.room.topic", {"topic": "b"}, "")
    source = MemoryEventSource([*here.events.values(), *there.events.values()])
    with pytest.raises(StateResolutionError, match="is in room"):
        resolve_state(ROOM_V11, [a.state, b.state], source)
    with pytest.raises(StateResolutionError, match="room version"):
        without_topic = {k: v for k, v in a.state.items() if k != TOPIC}
        resolve_state(ROOM_V10, [a.state, without_topic], source)
