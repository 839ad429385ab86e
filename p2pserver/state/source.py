"""Where state resolution reads events from: the :class:`EventSource` protocol.

State resolution needs a handful of events out of a room's history (the
conflicted ones, their auth chains) and two graph questions about the auth
DAG. :class:`EventSource` is that interface, small enough that storage can
answer it from indexes without loading a whole room, and
:class:`MemoryEventSource` is the dict-backed version for tests, the CLI and
benchmarks.

Rules every implementation follows (spec: server-server API and room
version 2 "State resolution"):

- *Held* events: ``get_event`` returns an event only if the source has it
  and it was not rejected by the event-local checks on receipt ("Checks
  performed on receipt of a PDU": format, signatures, authorisation against
  the event's own auth events). Unknown and rejected events answer ``None``
  and never take part: walks stop at them and they are left out of every
  answer. Events that failed only the checks against the state before the
  event (or were soft-failed against the current state) are held: the spec
  has state resolution handle them "as usual". An event whose content hash
  failed is held in its redacted form.
- The *auth chain* of an event E is the set of events reachable from E by
  following ``auth_events`` links: E's auth events, theirs, and so on. It
  does not contain E itself (E can never reach itself: the graph is a DAG).
- The *full auth chain* of a state set is the union of the auth chains of
  its events. It does not contain the set's own events unless one of them
  is reached from another. The *auth difference* of state sets with full
  auth chains C1..Cn is (C1 ∪ … ∪ Cn) − (C1 ∩ … ∩ Cn).
  (Synapse puts each set's own events into its chain; that can only differ
  for events in every set that some but not all chains reach. We follow
  the spec's definition.)
- The *conflicted state subgraph* (room version 12, MSC4297) of a set K of
  conflicted events is every event on an ``auth_events`` path from one
  event of K to another, endpoints included. :meth:`conflicted_state_subgraph`
  also returns the held events of K that lie on no such path: callers
  always union K in anyway, and this keeps implementations simpler.

Theory of operation. :func:`walk_auth_graph` loads the part of the auth DAG
reachable from some events, one batch of ``get_events`` per level, and
:func:`walk_auth_chain_difference` / :func:`walk_conflicted_state_subgraph`
answer the two graph questions over it in one linear pass each. Any source
can use them; they cost a walk over the union of the auth chains involved.
:class:`MemoryEventSource` instead keeps every event's auth chain as a bit
set (a Python int over event indexes), computed once per event and shared
by all later questions, so a question costs a few big-int ORs per event in
the state sets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from p2pserver.rooms.events import Event

__all__ = [
    "AuthGraph",
    "EventSource",
    "MemoryEventSource",
    "walk_auth_chain_difference",
    "walk_auth_graph",
    "walk_conflicted_state_subgraph",
]

# event ID -> the IDs of its held auth events
AuthGraph = dict[str, tuple[str, ...]]


class EventSource(Protocol):
    """What state resolution reads. All methods are pure queries."""

    def get_event(self, event_id: str) -> Event | None:
        """The held event ``event_id``; None if unknown or rejected."""
        ...

    def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        """The held events among ``event_ids``, by ID (others left out)."""
        ...

    def auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        """The auth difference of ``state_sets`` (each a collection of event IDs).

        Only held events are returned. ``walk_auth_chain_difference(self, ...)``
        is a correct implementation.
        """
        ...

    def conflicted_state_subgraph(self, conflicted: Collection[str]) -> set[str]:
        """The conflicted state subgraph of ``conflicted``, plus its held events.

        Only held events are returned. ``walk_conflicted_state_subgraph(self, ...)``
        is a correct implementation.
        """
        ...


# -- walking the auth DAG (works over any EventSource) ---------------------------


def walk_auth_graph(
    source: EventSource, start: Iterable[str], loaded: dict[str, Event | None] | None = None
) -> AuthGraph:
    """The held events reachable from ``start`` (inclusive), with their auth edges.

    Edges to unknown or rejected events are dropped, so every edge target is
    a key of the result. ``loaded`` (event ID -> event, or None if not held)
    is used and filled as a cache, so callers fetch each event once.
    """
    cache: dict[str, Event | None] = {} if loaded is None else loaded
    graph: AuthGraph = {}
    frontier = list(dict.fromkeys(start))
    while frontier:
        missing = [i for i in frontier if i not in cache]
        if missing:
            found = source.get_events(missing)
            for event_id in missing:
                cache[event_id] = found.get(event_id)
        pending: dict[str, None] = {}
        for event_id in frontier:
            event = cache[event_id]
            if event is not None:
                graph[event_id] = event.auth_event_ids
                for auth_id in event.auth_event_ids:
                    if auth_id not in graph:
                        pending[auth_id] = None
        frontier = [i for i in pending if i not in graph]
    for event_id, auth_ids in graph.items():
        if not all(a in graph for a in auth_ids):
            graph[event_id] = tuple(a for a in auth_ids if a in graph)
    return graph


def _referrers_first(graph: AuthGraph) -> list[str]:
    """``graph``'s events ordered so that each comes after every event citing it.

    Kahn's algorithm on the auth DAG. Raises ValueError on a cycle, which
    only forged event IDs could produce.
    """
    cited_by = dict.fromkeys(graph, 0)
    for auth_ids in graph.values():
        for auth_id in auth_ids:
            cited_by[auth_id] += 1
    ready = [event_id for event_id, count in cited_by.items() if count == 0]
    order: list[str] = []
    while ready:
        event_id = ready.pop()
        order.append(event_id)
        for auth_id in graph[event_id]:
            cited_by[auth_id] -= 1
            if cited_by[auth_id] == 0:
                ready.append(auth_id)
    if len(order) != len(graph):
        raise ValueError("the auth events form a cycle")
    return order


def walk_auth_chain_difference(
    source: EventSource, state_sets: Sequence[Collection[str]]
) -> set[str]:
    """:meth:`EventSource.auth_chain_difference` by walking the auth DAG."""
    if not state_sets:
        return set()
    graph = walk_auth_graph(source, (i for s in state_sets for i in s))
    # own[e]: the sets holding e; reached[e]: the sets whose full chain holds e.
    own: dict[str, int] = {}
    for index, state_set in enumerate(state_sets):
        bit = 1 << index
        for event_id in state_set:
            if event_id in graph:
                own[event_id] = own.get(event_id, 0) | bit
    reached: dict[str, int] = {}
    for event_id in _referrers_first(graph):
        passed_on = reached.get(event_id, 0) | own.get(event_id, 0)
        if passed_on:
            for auth_id in graph[event_id]:
                reached[auth_id] = reached.get(auth_id, 0) | passed_on
    everyone = (1 << len(state_sets)) - 1
    return {event_id for event_id, sets in reached.items() if sets != everyone}


def walk_conflicted_state_subgraph(source: EventSource, conflicted: Collection[str]) -> set[str]:
    """:meth:`EventSource.conflicted_state_subgraph` by walking the auth DAG."""
    # Every walked event is reached from some conflicted event; it is on a
    # path to another one iff a conflicted event is in its chain or is itself.
    graph = walk_auth_graph(source, conflicted)
    targets = {event_id for event_id in conflicted if event_id in graph}
    leads_to_target: dict[str, bool] = {}
    for event_id in reversed(_referrers_first(graph)):  # auth events first
        leads_to_target[event_id] = event_id in targets or any(
            leads_to_target[a] for a in graph[event_id]
        )
    return {event_id for event_id, leads in leads_to_target.items() if leads}


# -- the in-memory source ---------------------------------------------------------------


def _bit_indexes(mask: int) -> Iterator[int]:
    """The indexes of the set bits of ``mask`` (via its binary text: fast)."""
    text = bin(mask)
    top = len(text) - 1
    position = text.find("1", 2)
    while position != -1:
        yield top - position
        position = text.find("1", position + 1)


class MemoryEventSource:
    """An :class:`EventSource` over events held in memory.

    ``rejected`` names events that were rejected on receipt: they are not
    held. Each event's auth chain is computed on first use as a bit set over
    event indexes and kept; :meth:`add` after that drops the cache (an added
    event may be a missing auth event of one already known).
    """

    def __init__(self, events: Iterable[Event] = (), *, rejected: Iterable[str] = ()) -> None:
        self._rejected = frozenset(rejected)
        self._events: dict[str, Event] = {}
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._chains: dict[str, int] = {}
        for event in events:
            self.add(event)

    def add(self, event: Event) -> None:
        event_id = event.event_id
        if event_id in self._rejected or event_id in self._events:
            return
        self._events[event_id] = event
        self._index[event_id] = len(self._ids)
        self._ids.append(event_id)
        if self._chains:
            self._chains.clear()

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._events

    @property
    def events(self) -> Mapping[str, Event]:
        return self._events

    # -- EventSource -----------------------------------------------------------------

    def get_event(self, event_id: str) -> Event | None:
        return self._events.get(event_id)

    def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        events = self._events
        return {i: events[i] for i in event_ids if i in events}

    def auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        if not state_sets:
            return set()
        sets = [s if isinstance(s, (set, frozenset)) else set(s) for s in state_sets]
        # Events in every set add the same chain to every C_i: OR them once.
        common = sets[0].intersection(*sets[1:])
        base = self._union_of_chains(common)
        union = 0
        intersection = -1  # all bits
        for state_set in sets:
            chain = base | self._union_of_chains(state_set - common)
            union |= chain
            intersection &= chain
        return self._ids_of(union & ~intersection)

    def conflicted_state_subgraph(self, conflicted: Collection[str]) -> set[str]:
        index = self._index
        held = [i for i in conflicted if i in index]
        targets = 0
        for event_id in held:
            targets |= 1 << index[event_id]
        above = self._union_of_chains(held) & ~targets
        chains = self._chains  # filled for every event in `above` by the union
        ids = self._ids
        result = set(held)
        for position in _bit_indexes(above):
            event_id = ids[position]
            if chains[event_id] & targets:
                result.add(event_id)
        return result

    # -- auth chains as bit sets ----------------------------------------------------------

    def _union_of_chains(self, event_ids: Iterable[str]) -> int:
        """The union of the auth chains of the held events among ``event_ids``."""
        chains = self._chains
        mask = 0
        for event_id in event_ids:
            chain = chains.get(event_id)
            if chain is None:
                if event_id not in self._events:
                    continue
                chain = self._chain(event_id)
            mask |= chain
        return mask

    def _chain(self, event_id: str) -> int:
        """The auth chain of a held event, as a bit set; fills the cache below it."""
        chains, events, index = self._chains, self._events, self._index
        stack = [event_id]
        entered: set[str] = set()
        while stack:
            current = stack[-1]
            if current in chains:
                stack.pop()
                continue
            auth_ids = [a for a in events[current].auth_event_ids if a in events]
            pending = [a for a in auth_ids if a not in chains]
            if pending:
                if current in entered:
                    raise ValueError(f"the auth events of {current} form a cycle")
                entered.add(current)
                stack.extend(pending)
                continue
            mask = 0
            for auth_id in auth_ids:
                mask |= chains[auth_id] | (1 << index[auth_id])
            chains[current] = mask
            stack.pop()
        return chains[event_id]

    def _ids_of(self, mask: int) -> set[str]:
        ids = self._ids
        return {ids[position] for position in _bit_indexes(mask)}
