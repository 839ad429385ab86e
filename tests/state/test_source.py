"""EventSource: MemoryEventSource and the walking helpers against the definitions."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.events import Event
from p2pserver.rooms.room_versions import ROOM_V11
from p2pserver.state import EventSource, MemoryEventSource
from p2pserver.state.source import (
    walk_auth_chain_difference,
    walk_auth_graph,
    walk_conflicted_state_subgraph,
)
from tests.state.dag import Dag
from tests.state.test_properties import Forked, forked_rooms


def chains_of(events: Mapping[str, Event]) -> Callable[[str], frozenset[str]]:
    @cache
    def chain(event_id: str) -> frozenset[str]:
        out: set[str] = set()
        for auth_id in events[event_id].auth_event_ids:
            if auth_id in events:
                out |= {auth_id} | chain(auth_id)
        return frozenset(out)

    return chain


def defined_difference(
    events: Mapping[str, Event], state_sets: Sequence[Collection[str]]
) -> set[str]:
    """∪Ci − ∩Ci, Ci the union of the auth chains of the events of set i."""
    chain = chains_of(events)
    full = [frozenset().union(*(chain(i) for i in s if i in events)) for s in state_sets]
    return set(frozenset.union(*full) - frozenset.intersection(*full))


def defined_subgraph(events: Mapping[str, Event], conflicted: Collection[str]) -> set[str]:
    """Events on auth paths between two conflicted events, plus the (held) conflicted."""
    chain = chains_of(events)
    held = {i for i in conflicted if i in events}
    on_paths = {
        y
        for x1 in held
        for x2 in held
        if x2 in chain(x1)
        for y in chain(x1) | {x1}
        if x2 in chain(y) | {y}
    }
    return on_paths | held


class WalkingSource:
    """An EventSource that answers the graph questions by walking (the defaults)."""

    def __init__(self, events: Mapping[str, Event]) -> None:
        self.events = events

    def get_event(self, event_id: str) -> Event | None:
        return self.events.get(event_id)

    def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        return {i: self.events[i] for i in event_ids if i in self.events}

    def auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        return walk_auth_chain_difference(self, state_sets)

    def conflicted_state_subgraph(self, conflicted: Collection[str]) -> set[str]:
        return walk_conflicted_state_subgraph(self, conflicted)


def test_walking_source_is_an_event_source() -> None:
    source: EventSource = WalkingSource({})
    assert source.auth_chain_difference([]) == set()


@given(forked_rooms(stale=True), st.data())
def test_auth_difference_and_subgraph_match_the_definitions(
    forked: Forked, data: st.DataObject
) -> None:
    events = forked.dag.events
    sets = [set(s.values()) for s in forked.state_sets]
    # Some events rejected: they are not held, so every answer leaves them out.
    rejected = data.draw(st.sets(st.sampled_from(sorted(events)), max_size=3))
    held = {i: e for i, e in events.items() if i not in rejected}
    memory = MemoryEventSource(events.values(), rejected=rejected)
    walking = WalkingSource(held)
    expected = defined_difference(held, sets)
    assert memory.auth_chain_difference(sets) == expected
    assert walking.auth_chain_difference(sets) == expected

    conflicted = {i for s in sets for i in s} - set[str].intersection(*sets)
    conflicted |= data.draw(st.sets(st.sampled_from(sorted(events)), max_size=4))
    expected = defined_subgraph(held, conflicted)
    assert memory.conflicted_state_subgraph(conflicted) == expected
    assert walking.conflicted_state_subgraph(conflicted) == expected


def test_a_state_sets_own_events_are_not_in_its_chain() -> None:
    """The spec's auth chain of a state set: the auth chains of its events only.

    S1 = {jr} and S2 = {join}, where the join cites jr: jr is in C2 but not
    in C1, so it is in the auth difference (Synapse would count it in C1)."""
    dag = Dag(ROOM_V11)
    branch = dag.start()
    join = branch.member("bob-join", "bob", "bob", "join")
    jr = dag["join-rules"]
    assert jr.event_id in join.auth_event_ids
    source = MemoryEventSource(dag.events.values())
    difference = source.auth_chain_difference([{jr.event_id}, {join.event_id}])
    assert jr.event_id in difference
    assert difference == walk_auth_chain_difference(source, [{jr.event_id}, {join.event_id}])
    # Identical sets have no difference; no sets have none either.
    assert source.auth_chain_difference([{join.event_id}, {join.event_id}]) == set()
    assert source.auth_chain_difference([]) == set()


def test_rejected_and_unknown_events_are_not_held() -> None:
    dag = Dag(ROOM_V11)
    branch = dag.start()
    join = branch.member("bob-join", "bob", "bob", "join")
    source = MemoryEventSource(dag.events.values(), rejected=[join.event_id])
    assert source.get_event(join.event_id) is None
    assert source.get_event("$unknown") is None
    assert join.event_id not in source.get_events([join.event_id, dag.create.event_id])
    assert dag.create.event_id in source.get_events([dag.create.event_id])
    graph = walk_auth_graph(source, [join.event_id, dag["join-rules"].event_id])
    assert join.event_id not in graph
    assert all(a in graph for auth in graph.values() for a in auth)


def test_adding_a_missing_auth_event_later_updates_the_chains() -> None:
    dag = Dag(ROOM_V11)
    branch = dag.start()
    join = branch.member("bob-join", "bob", "bob", "join")
    jr = dag["join-rules"]
    source = MemoryEventSource(e for e in dag.events.values() if e is not jr)
    before = source.auth_chain_difference([{join.event_id}, {dag.create.event_id}])
    assert jr.event_id not in before
    source.add(jr)
    after = source.auth_chain_difference([{join.event_id}, {dag.create.event_id}])
    assert jr.event_id in after


def test_an_auth_cycle_is_a_clear_error() -> None:
    """Only forged event IDs can make a cycle; it must not hang or recurse."""
    dag = Dag(ROOM_V11)
    dag.start()
    pdu_a = dict(dag["join-rules"].pdu, auth_events=["$b"])
    pdu_b = dict(dag["power-levels"].pdu, auth_events=["$a"])
    a = Event(pdu_a, ROOM_V11, event_id="$a")
    b = Event(pdu_b, ROOM_V11, event_id="$b")
    source = MemoryEventSource([a, b])
    with pytest.raises(ValueError, match="cycle"):
        source.auth_chain_difference([{"$a"}, set()])
    with pytest.raises(ValueError, match="cycle"):
        walk_auth_chain_difference(source, [{"$a"}, set()])
