"""A deliberately naive model of state resolution v2/v2.1, for differential tests.

It follows the spec's definitions with the most direct computations: every
auth chain by recursion, the auth difference and the conflicted state
subgraph by their set definitions, X's order by repeatedly taking the
smallest event whose X-ancestors are all taken, mainline positions by
walking. Quadratic, and only for small test rooms. It shares the
authorization rules with the real implementation, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

from p2pserver.rooms.auth import auth_types_for_event, check_auth_rules
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.power_levels import CREATE_KEY, get_user_power_level
from p2pserver.rooms.room_versions import RoomVersion


def reference_resolve(
    version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]], events: Mapping[str, Event]
) -> dict[StateKey, str]:
    @cache
    def chain(event_id: str) -> frozenset[str]:
        result: set[str] = set()
        for auth_id in events[event_id].auth_event_ids:
            if auth_id in events:
                result |= {auth_id} | chain(auth_id)
        return frozenset(result)

    keys = {k for s in state_sets for k in s}
    unconflicted = {
        k: state_sets[0][k]
        for k in keys
        if all(k in s for s in state_sets) and len({s[k] for s in state_sets}) == 1
    }
    conflicted = {s[k] for s in state_sets for k in s if k not in unconflicted} & events.keys()
    if not {s[k] for s in state_sets for k in s if k not in unconflicted}:
        return unconflicted
    full_chains = [
        frozenset().union(*(chain(i) for i in s.values() if i in events)) for s in state_sets
    ]
    full = conflicted | (frozenset.union(*full_chains) - frozenset.intersection(*full_chains))
    if version.state_res == "v2.1":
        full |= {
            y
            for x1 in conflicted
            for x2 in conflicted
            if x2 in chain(x1)
            for y in chain(x1) | {x1}
            if x2 in chain(y) | {y}
        }
    full = {i for i in full if events[i].state_key is not None}
    create = next(e for e in events.values() if e.is_create())

    def own_auth(event: Event) -> dict[StateKey, Event]:
        auth = {}
        if version.room_id_is_create_event_hash and not event.is_create():
            auth[CREATE_KEY] = create
        for auth_id in event.auth_event_ids:
            if auth_id in events:
                a = events[auth_id]
                auth[(a.type, a.state_key or "")] = a
        return auth

    def is_power(e: Event) -> bool:
        if e.type in ("m.room.power_levels", "m.room.join_rules"):
            return True
        return e.membership in ("leave", "ban") and e.sender != e.state_key

    power = {i for i in full if is_power(events[i])}
    x = power | {i for p in power for i in chain(p) if i in full}
    ordered: list[str] = []
    while len(ordered) < len(x):
        ready = [i for i in x - set(ordered) if all(a in ordered for a in chain(i) & x)]
        ordered.append(
            min(
                ready,
                key=lambda i: (
                    -get_user_power_level(events[i].sender, own_auth(events[i])),
                    events[i].origin_server_ts,
                    i,
                ),
            )
        )

    def auth_checks(state: dict[StateKey, str], order: list[str]) -> dict[StateKey, str]:
        for event_id in order:
            event = events[event_id]
            own = own_auth(event)
            auth = {}
            for key in auth_types_for_event(
                version, event.type, event.sender, event.state_key, event.content
            ):
                if key in state and state[key] in events:
                    auth[key] = events[state[key]]
                elif key in own:
                    auth[key] = own[key]
            if CREATE_KEY in own:
                auth.setdefault(CREATE_KEY, own[CREATE_KEY])
            try:
                check_auth_rules(event, auth)
            except AuthError:
                continue
            state[(event.type, event.state_key or "")] = event_id
        return state

    partial = auth_checks({} if version.state_res == "v2.1" else dict(unconflicted), ordered)

    def pl_auth(event_id: str) -> str | None:
        for auth_id in events[event_id].auth_event_ids:
            a = events.get(auth_id)
            if a is not None and a.type == "m.room.power_levels" and a.state_key == "":
                return auth_id
        return None

    mainline: list[str] = []
    p = partial.get(("m.room.power_levels", ""))
    while p is not None:
        mainline.append(p)
        p = pl_auth(p)

    def position(event_id: str) -> float:
        e = pl_auth(event_id)
        while e is not None:
            if e in mainline:
                return mainline.index(e)
            e = pl_auth(e)
        return float("inf")

    rest = sorted(full - x, key=lambda i: (-position(i), events[i].origin_server_ts, i))
    resolved = auth_checks(partial, rest)
    resolved.update(unconflicted)
    return resolved
