"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12).

Spec: room version 2 "State resolution" (used unchanged by versions 10 and
11) and room version 12 "State resolution" (MSC4297, "v2.1"). The code is
written as the spec's definitions and steps, under the spec's names.

Definitions, for state sets S1, S2, …:

- *Power event*: a state event of type ``m.room.power_levels`` or
  ``m.room.join_rules``, or an ``m.room.member`` with membership ``leave``
  or ``ban`` whose sender is not its state_key.
- *Unconflicted state map*: the (key, event) pairs present with the same
  event in every Si. Every other event is in the *conflicted state set*
  (a key missing from some Si is conflicted).
- *Auth difference*, *conflicted state subgraph*: see
  :mod:`p2pserver.state.source`, which computes them.
- *Full conflicted set*: the conflicted state set ∪ the auth difference,
  and in v2.1 ∪ the conflicted state subgraph.
- *Reverse topological power ordering*: Kahn's algorithm over the auth DAG,
  picking among the ready events the one whose sender has the greatest power
  level (read from the event's own auth events), then the smallest
  origin_server_ts, then the smallest event ID.
- *Mainline ordering based on P*: P's mainline is P, the power-levels event
  among P's auth events, that one's, and so on (P0, P1, …). An event's
  *mainline position* is i for the first Pi met by following power-levels
  auth events from (not including) the event, ∞ if none is met. Events sort
  by greater position first, then origin_server_ts, then event ID.
- *Iterative auth checks*: apply each event in order to a state map if the
  authorization rules allow it against that map; a key the rules need that
  the map lacks is taken from the event's own (non-rejected) auth events.

Algorithm (``resolve_state``):

1. X = the power events of the full conflicted set, enlarged by the events
   of the full conflicted set in their auth chains; sort X by the reverse
   topological power ordering.
2. Iterative auth checks of X starting from the unconflicted state map
   (v2), or from an *empty* state map (v2.1), giving the partial state.
3. Sort the rest of the full conflicted set by the mainline ordering based
   on the partial state's power-levels event.
4. Iterative auth checks of those on top of the partial state.
5. Put the unconflicted state map over the result.

Where we read the spec literally and Synapse/ruma do otherwise:
``m.room.create`` is not a power event (they count it as one); X is
enlarged from each power event's whole auth chain and ordered by
reachability through it (they follow auth events only through the full
conflicted set); and see :mod:`p2pserver.state.source` on auth chains. Each
difference only matters for unusual DAGs.

Rejected and unknown events: the :class:`EventSource` does not hold them, so
they are left out of the full conflicted set and never used as auth events.
Unconflicted entries are copied through without being loaded, except those
the auth checks need.

Cost: everything is proportional to the full conflicted set and the auth
chains it touches, never to the room's history. The full conflicted set and
its auth events are fetched in two batches; each event is fetched once, and
its own auth events map (used by the power ordering, the mainline and the
auth checks) and mainline positions are computed once per resolution. The
authorization rules themselves (:mod:`p2pserver.rooms.auth`) are most of
the remaining time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from p2pserver.rooms.auth import (
    auth_types_for_event,
    check_auth_rules,
    create_event_id_for_room,
    get_user_power_level,
)
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.power_levels import CREATE_KEY, POWER_LEVELS_KEY, PowerLevel
from p2pserver.rooms.room_versions import RoomVersion
from p2pserver.state.source import EventSource, walk_auth_graph

__all__ = [
    "StateResolutionError",
    "is_power_event",
    "resolve_state",
    "split_conflicted_state",
]

StateMap = dict[StateKey, str]


class StateResolutionError(MatrixError):
    """The input to state resolution is inconsistent (not an auth failure)."""

    errcode = "M_INVALID_PARAM"


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    source: EventSource,
) -> StateMap:
    """The resolution of ``state_sets`` (maps from (type, state_key) to event ID).

    ``source`` supplies the events. Raises :class:`StateResolutionError` if a
    state set names an event under another key, or events of another room
    or room version take part.
    """
    unconflicted_state_map, conflicted_state_set = split_conflicted_state(state_sets)
    if not conflicted_state_set:
        return unconflicted_state_map

    # The full conflicted set.
    conflicted_ids = set().union(*conflicted_state_set.values())
    full_conflicted_ids = conflicted_ids | source.auth_chain_difference(
        [state_set.values() for state_set in state_sets]
    )
    if room_version.state_res == "v2.1":
        full_conflicted_ids |= source.conflicted_state_subgraph(conflicted_ids)
    resolution = _Resolution(room_version, source)
    full_conflicted_set = resolution.load_full_conflicted_set(
        full_conflicted_ids, conflicted_state_set
    )

    # 1. The power events, enlarged by their auth chains within the full
    #    conflicted set, in reverse topological power ordering.
    power_events = [e for e in full_conflicted_set.values() if is_power_event(e)]
    sorted_power_events = resolution.reverse_topological_power_ordering(
        power_events, full_conflicted_set
    )

    # 2. Iterative auth checks from the unconflicted state map (v2) or from
    #    an empty state map (v2.1).
    initial_state: StateMap = {}
    if room_version.state_res == "v2":
        initial_state = dict(unconflicted_state_map)
    partially_resolved_state = resolution.iterative_auth_checks(initial_state, sorted_power_events)

    # 3. The remaining events in mainline ordering based on the partially
    #    resolved state's power levels.
    picked = {e.event_id for e in sorted_power_events}
    remaining = [e for i, e in full_conflicted_set.items() if i not in picked]
    sorted_remaining = resolution.mainline_ordering(
        remaining, partially_resolved_state.get(POWER_LEVELS_KEY)
    )

    # 4. Iterative auth checks of those on the partially resolved state.
    resolved_state = resolution.iterative_auth_checks(partially_resolved_state, sorted_remaining)

    # 5. The unconflicted state map wins over the result.
    resolved_state.update(unconflicted_state_map)
    return resolved_state


def split_conflicted_state(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[StateMap, dict[StateKey, set[str]]]:
    """The unconflicted state map and the conflicted state set (by key)."""
    if not state_sets:
        return {}, {}
    # A key is conflicted unless every set has it with the first set's event.
    # Symmetric differences of dict item views run in C: big states are cheap.
    first = state_sets[0]
    conflicted_keys: set[StateKey] = set()
    for state_set in state_sets[1:]:
        conflicted_keys.update(key for key, _ in first.items() ^ state_set.items())
    unconflicted = dict(first)
    for key in conflicted_keys:
        unconflicted.pop(key, None)
    conflicted = {key: {s[key] for s in state_sets if key in s} for key in conflicted_keys}
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """The spec's *power event*: one that might remove someone's abilities."""
    if event.state_key is None:
        return False
    if event.type in ("m.room.power_levels", "m.room.join_rules"):
        return True
    return event.membership in ("leave", "ban") and event.sender != event.state_key


_INFINITY = float("inf")


class _Resolution:
    """One run of the algorithm: the event cache and the per-event caches."""

    def __init__(self, room_version: RoomVersion, source: EventSource) -> None:
        self.room_version = room_version
        self.source = source
        self.room_id: str | None = None
        self._events: dict[str, Event | None] = {}
        self._own_auth: dict[str, dict[StateKey, Event]] = {}
        self._create: Event | None = None

    # -- events ------------------------------------------------------------------------

    def load_full_conflicted_set(
        self, event_ids: Iterable[str], conflicted_state_set: Mapping[StateKey, set[str]]
    ) -> dict[str, Event]:
        """The held state events among ``event_ids``, checked for consistency.

        Their auth events are fetched too, in one batch: every step reads them.
        """
        found = self.source.get_events(event_ids)
        self._events.update(found)
        for key, ids in conflicted_state_set.items():
            for event_id in ids:
                event = found.get(event_id)
                if event is not None:
                    self._check_key(event, key)
        events: dict[str, Event] = {}
        for event_id, event in found.items():
            if event.state_key is None:
                continue  # a message in an auth chain: no part of any state
            self._check_room(event)
            events[event_id] = event
        wanted = {a for e in events.values() for a in e.auth_event_ids if a not in self._events}
        if self.room_version.room_id_is_create_event_hash and self.room_id is not None:
            wanted.add(create_event_id_for_room(self.room_id))
        fetched = self.source.get_events(wanted)
        for event_id in wanted:
            self._events[event_id] = fetched.get(event_id)
        return events

    def _check_key(self, event: Event, key: StateKey) -> None:
        if (event.type, event.state_key) != key:
            raise StateResolutionError(
                f"state set maps {key} to {event.event_id}, "
                f"which is ({event.type!r}, {event.state_key!r})"
            )

    def _check_room(self, event: Event) -> None:
        if event.room_version is not self.room_version and event.room_version != self.room_version:
            raise StateResolutionError(
                f"event {event.event_id} is of room version {event.room_version.identifier}, "
                f"not {self.room_version.identifier}"
            )
        if self.room_id is None:
            self.room_id = event.room_id
        elif event.room_id != self.room_id:
            raise StateResolutionError(
                f"event {event.event_id} is in room {event.room_id}, not {self.room_id}"
            )

    def _get(self, event_id: str) -> Event | None:
        try:
            return self._events[event_id]
        except KeyError:
            event = self._events[event_id] = self.source.get_event(event_id)
            return event

    def _room_create_event(self) -> Event | None:
        """v12: the create event, named by the room ID rather than listed."""
        if self._create is None and self.room_id is not None:
            self._create = self._get(create_event_id_for_room(self.room_id))
        return self._create

    def own_auth_events(self, event: Event) -> dict[StateKey, Event]:
        """The event's held auth events by key (in v12 with the create event)."""
        cached = self._own_auth.get(event.event_id)
        if cached is not None:
            return cached
        auth: dict[StateKey, Event] = {}
        if self.room_version.room_id_is_create_event_hash and not event.is_create():
            create = self._room_create_event()
            if create is not None:
                auth[CREATE_KEY] = create
        loaded = self._events
        for auth_id in event.auth_event_ids:
            auth_event = loaded[auth_id] if auth_id in loaded else self._get(auth_id)
            if auth_event is not None and auth_event.state_key is not None:
                auth[(auth_event.type, auth_event.state_key)] = auth_event
        self._own_auth[event.event_id] = auth
        return auth

    # -- reverse topological power ordering ----------------------------------------------

    def sender_power_level(self, event: Event) -> PowerLevel:
        """The sender's power level, "when looking at their respective auth_events"."""
        return get_user_power_level(event.sender, self.own_auth_events(event))

    def reverse_topological_power_ordering(
        self, power_events: Sequence[Event], full_conflicted_set: Mapping[str, Event]
    ) -> list[Event]:
        """Step 1: X = the power events plus the events of the full conflicted
        set in their auth chains, in reverse topological power ordering.

        Kahn's algorithm runs over the power events' whole auth chains so that
        every ordering the auth DAG implies between events of X is kept; the
        events outside X are passed as soon as they are ready, and only the
        events of X compete by the comparison relation.
        """
        if not power_events:
            return []
        graph = walk_auth_graph(self.source, (e.event_id for e in power_events), self._events)
        in_x = {i for i in graph if i in full_conflicted_set}
        waiting_on = {event_id: len(auth_ids) for event_id, auth_ids in graph.items()}
        cited_by: dict[str, list[str]] = {}
        for event_id, auth_ids in graph.items():
            for auth_id in auth_ids:
                cited_by.setdefault(auth_id, []).append(event_id)

        def order_key(event: Event) -> tuple[PowerLevel, int, str]:
            # x < y: greater sender power level, then earlier ts, then smaller ID.
            return (-self.sender_power_level(event), event.origin_server_ts, event.event_id)

        candidates: list[tuple[tuple[PowerLevel, int, str], Event]] = []
        passed = [i for i, count in waiting_on.items() if count == 0 and i not in in_x]
        for event_id in in_x:
            if waiting_on[event_id] == 0:
                event = full_conflicted_set[event_id]
                candidates.append((order_key(event), event))
        heapq.heapify(candidates)

        ordered: list[Event] = []
        while passed or candidates:
            if passed:
                done = passed.pop()
            else:
                _, event = heapq.heappop(candidates)
                ordered.append(event)
                done = event.event_id
            for referrer in cited_by.get(done, ()):
                waiting_on[referrer] -= 1
                if waiting_on[referrer] == 0:
                    if referrer in in_x:
                        event = full_conflicted_set[referrer]
                        heapq.heappush(candidates, (order_key(event), event))
                    else:
                        passed.append(referrer)
        if len(ordered) != len(in_x):
            raise StateResolutionError("the auth events form a cycle")
        return ordered

    # -- mainline ordering -----------------------------------------------------------------

    def _power_levels_auth_event(self, event: Event) -> Event | None:
        """The m.room.power_levels event among the event's held auth events."""
        for auth_id in event.auth_event_ids:
            auth_event = self._get(auth_id)
            if (
                auth_event is not None
                and auth_event.type == "m.room.power_levels"
                and auth_event.state_key == ""
            ):
                return auth_event
        return None

    def mainline_ordering(
        self, events: Sequence[Event], power_levels_id: str | None
    ) -> list[Event]:
        """Step 3: ``events`` in mainline ordering based on ``power_levels_id``."""
        if not events:
            return []
        # The mainline P0, P1, … as event ID -> i.
        mainline: dict[str, float] = {}
        current = self._get(power_levels_id) if power_levels_id is not None else None
        while current is not None and current.event_id not in mainline:
            mainline[current.event_id] = len(mainline)
            current = self._power_levels_auth_event(current)

        # Mainline positions, memoised for every power-levels event walked.
        positions: dict[str, float] = {}

        def mainline_position(event: Event) -> float:
            walked: dict[str, None] = {}
            position = _INFINITY
            current = self.own_auth_events(event).get(POWER_LEVELS_KEY)  # e1, not e0
            while current is not None:
                event_id = current.event_id
                if event_id in mainline:
                    position = mainline[event_id]
                    break
                if event_id in positions:
                    position = positions[event_id]
                    break
                if event_id in walked:
                    break  # a cycle: only forged event IDs make one
                walked[event_id] = None
                current = self._power_levels_auth_event(current)
            for event_id in walked:
                positions[event_id] = position
            return position

        def order_key(event: Event) -> tuple[float, int, str]:
            # x < y: greater mainline position, then earlier ts, then smaller ID.
            return (-mainline_position(event), event.origin_server_ts, event.event_id)

        return sorted(events, key=order_key)

    # -- iterative auth checks -------------------------------------------------------------

    def iterative_auth_checks(self, initial_state: StateMap, events: Sequence[Event]) -> StateMap:
        """Apply each of ``events`` that the authorization rules allow to the state."""
        state = initial_state
        version = self.room_version
        loaded = self._events
        for event in events:
            own = self.own_auth_events(event)
            auth_events: dict[StateKey, Event] = {}
            for key in auth_types_for_event(
                version, event.type, event.sender, event.state_key, event.content
            ):
                # The state's event, else the event's own (held) auth event.
                auth_event = None
                event_id = state.get(key)
                if event_id is not None:
                    auth_event = loaded[event_id] if event_id in loaded else self._get(event_id)
                    if auth_event is not None and (auth_event.type, auth_event.state_key) != key:
                        self._check_key(auth_event, key)  # raises
                if auth_event is None:
                    auth_event = own.get(key)
                if auth_event is not None:
                    auth_events[key] = auth_event
            if version.room_id_is_create_event_hash and CREATE_KEY in own:
                auth_events[CREATE_KEY] = own[CREATE_KEY]  # v12: named by the room ID
            try:
                check_auth_rules(event, auth_events)
            except MatrixError:
                continue  # not allowed: ignored
            assert event.state_key is not None  # the full conflicted set is state events
            state[(event.type, event.state_key)] = event.event_id
        return state
