"""Properties of state resolution over generated forked rooms (hypothesis).

The generator builds a room (Alice admin at 100, Bob moderator at 50, Carol
and passive users p1-p3), forks it, and lets random members act on random
branches: topics, joins, leaves, invites, kicks, bans, unbans, promotions,
and (unless ``revocations=False``) demotions, join-rule changes and actions
against active members. Every event is checked against its branch before it
is applied, so each branch is a valid history. The branches' states are the
state sets; ``stale=True`` swaps some entries for older events at the same
key, as a partial synchronisation might.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.auth import auth_types_for_event, check_auth_rules
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.power_levels import CREATE_KEY
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12
from p2pserver.state import MemoryEventSource, resolve_state
from p2pserver.state.resolve import split_conflicted_state
from tests.state.dag import Branch, Dag
from tests.state.reference import reference_resolve

ACTIVE = ("alice", "bob", "carol")
PASSIVE = ("p1", "p2", "p3")
PL = "m.room.power_levels"

Draw = Callable[[Any], Any]


def _send(branch: Branch, *args: Any, **kwargs: Any) -> None:
    # Not allowed on this branch: skip it, so each branch stays a valid history.
    with contextlib.suppress(AuthError):
        branch.send(None, *args, **kwargs)


def _member(branch: Branch, sender: str, target: str, membership: str, **content: Any) -> None:
    with contextlib.suppress(AuthError):
        branch.member(None, sender, target, membership, **content)


def _levels(branch: Branch) -> dict[str, Any]:
    content = dict(branch.dag.events[branch.state[(PL, "")]].content)
    content["users"] = dict(content.get("users", {}))
    return content


# -- actions that never take a right away from someone who used it -----------------


def topic(draw: Draw, branch: Branch) -> None:
    _send(
        branch,
        draw(st.sampled_from(ACTIVE)),
        "m.room.topic",
        {"topic": draw(st.text("ab", max_size=2))},
        "",
    )


def passive_join(draw: Draw, branch: Branch) -> None:
    p = draw(st.sampled_from(PASSIVE))
    _member(branch, p, p, "join", displayname=draw(st.sampled_from(["", "x"])))


def passive_leave(draw: Draw, branch: Branch) -> None:
    p = draw(st.sampled_from(PASSIVE))
    _member(branch, p, p, "leave")


def invite(draw: Draw, branch: Branch) -> None:
    _member(branch, draw(st.sampled_from(ACTIVE)), draw(st.sampled_from(PASSIVE)), "invite")


def kick_or_ban_passive(draw: Draw, branch: Branch) -> None:
    membership = draw(st.sampled_from(["leave", "ban"]))
    _member(branch, draw(st.sampled_from(ACTIVE)), draw(st.sampled_from(PASSIVE)), membership)


def promote(draw: Draw, branch: Branch) -> None:
    sender = draw(st.sampled_from(["alice", "bob"]))
    user = draw(st.sampled_from(["bob", "carol"]))
    level = draw(st.sampled_from([25, 50, 75]))
    content = _levels(branch)
    user_id = branch.dag.user(user)
    content["users"][user_id] = max(level, content["users"].get(user_id, 0))
    _send(branch, sender, PL, content, "")


# -- actions that revoke -------------------------------------------------------------------


def demote(draw: Draw, branch: Branch) -> None:
    content = _levels(branch)
    user_id = branch.dag.user(draw(st.sampled_from(["bob", "carol"])))
    content["users"][user_id] = draw(st.sampled_from([0, 10]))
    _send(branch, draw(st.sampled_from(["alice", "bob"])), PL, content, "")


def raise_levels(draw: Draw, branch: Branch) -> None:
    content = _levels(branch)
    name = draw(st.sampled_from(["ban", "kick", "state_default", "invite"]))
    content[name] = draw(st.sampled_from([0, 50, 75, 100]))
    _send(branch, "alice", PL, content, "")


def join_rules(draw: Draw, branch: Branch) -> None:
    rule = draw(st.sampled_from(["public", "invite", "knock"]))
    _send(
        branch,
        draw(st.sampled_from(["alice", "bob"])),
        "m.room.join_rules",
        {"join_rule": rule},
        "",
    )


def act_on_active(draw: Draw, branch: Branch) -> None:
    target = draw(st.sampled_from(["bob", "carol"]))
    membership = draw(st.sampled_from(["leave", "ban", "join"]))
    sender = target if membership == "join" else draw(st.sampled_from(ACTIVE))
    _member(branch, sender, target, membership)


SAFE_ACTIONS = [topic, passive_join, passive_leave, invite, kick_or_ban_passive, promote]
ALL_ACTIONS = [*SAFE_ACTIONS, demote, raise_levels, join_rules, act_on_active]


@dataclass
class Forked:
    dag: Dag
    state_sets: list[dict[StateKey, str]]

    def source(self, order: list[int] | None = None) -> MemoryEventSource:
        events = list(self.dag.events.values())
        if order is not None:
            events = [events[i] for i in order]
        return MemoryEventSource(events)

    def names(self, state: dict[StateKey, str]) -> dict[StateKey, str]:
        return {k: self.dag.names.get(v, v[:8]) for k, v in state.items()}


@st.composite
def forked_rooms(draw: Draw, *, revocations: bool = True, stale: bool = False) -> Forked:
    version = draw(st.sampled_from([ROOM_V10, ROOM_V11, ROOM_V12]))
    dag = Dag(version)
    trunk = dag.start(("bob", "carol", "p1"))
    trunk.send(None, "alice", PL, dag.power_levels({"alice": 100, "bob": 50}), "")
    actions = ALL_ACTIONS if revocations else SAFE_ACTIONS
    for _ in range(draw(st.integers(0, 3))):  # common history before the forks
        draw(st.sampled_from(actions))(draw, trunk)
    branches = [trunk, trunk.fork()]
    for _ in range(draw(st.integers(1, 24))):
        branch = draw(st.sampled_from(branches))
        if len(branches) < 5 and draw(st.integers(0, 7)) == 0:
            branches.append(branch.fork())
        else:
            draw(st.sampled_from(actions))(draw, branch)
    state_sets = [dict(b.state) for b in branches]
    if stale:
        by_key: dict[StateKey, list[str]] = {}
        for event in dag.events.values():
            if event.state_key is not None:
                by_key.setdefault((event.type, event.state_key), []).append(event.event_id)
        for state in state_sets:
            for key in sorted(state):
                if len(by_key[key]) > 1 and draw(st.integers(0, 9)) == 0:
                    state[key] = draw(st.sampled_from(by_key[key]))
    return Forked(dag, state_sets)


# -- the properties -----------------------------------------------------------------------


@given(forked_rooms(stale=True), st.randoms(use_true_random=False))
def test_independent_of_the_order_of_state_sets_and_events(
    forked: Forked, rnd: random.Random
) -> None:
    version = forked.dag.version
    expected = resolve_state(version, forked.state_sets, forked.source())
    order = list(range(len(forked.dag.events)))
    rnd.shuffle(order)
    shuffled_sets = list(forked.state_sets)
    rnd.shuffle(shuffled_sets)
    again = resolve_state(version, shuffled_sets, forked.source(order))
    assert again == expected, (forked.names(expected), forked.names(again))


@given(forked_rooms(stale=True))
def test_one_state_set_resolves_to_itself(forked: Forked) -> None:
    source = forked.source()
    for state in forked.state_sets:
        assert resolve_state(forked.dag.version, [state], source) == state
        assert resolve_state(forked.dag.version, [state, dict(state)], source) == state


@given(forked_rooms(stale=True))
def test_unconflicted_entries_are_kept(forked: Forked) -> None:
    result = resolve_state(forked.dag.version, forked.state_sets, forked.source())
    unconflicted, conflicted = split_conflicted_state(forked.state_sets)
    for key, event_id in unconflicted.items():
        assert result[key] == event_id
    # Every other entry is an event of that key that some state set or the
    # auth DAG offered.
    for key, event_id in result.items():
        event = forked.dag.events[event_id]
        assert (event.type, event.state_key) == key


@given(forked_rooms(revocations=False))
def test_every_resolved_event_is_allowed_under_the_resolved_state(forked: Forked) -> None:
    """Without revocations, each event of the result passes the auth rules
    against the result, its own key taken from its auth events (as the
    iterative auth checks would see it when applying it)."""
    version = forked.dag.version
    result = resolve_state(version, forked.state_sets, forked.source())
    events = forked.dag.events
    for key, event_id in result.items():
        event = events[event_id]
        if event.is_create():
            continue
        own = {(a.type, a.state_key): a for a in (events[i] for i in event.auth_event_ids)}
        auth: dict[Any, Event] = {}
        for k in auth_types_for_event(
            version, event.type, event.sender, event.state_key, event.content
        ):
            if k != key and k in result:
                auth[k] = events[result[k]]
            elif k in own:
                auth[k] = own[k]
        if version.room_id_is_create_event_hash:
            auth[CREATE_KEY] = forked.dag.create
        try:
            check_auth_rules(event, auth)
        except AuthError as exc:
            raise AssertionError(
                f"{forked.names({key: event_id})} not allowed: {exc}; state {forked.names(result)}"
            ) from None


@given(forked_rooms(stale=True))
def test_agrees_with_the_naive_reference_model(forked: Forked) -> None:
    version = forked.dag.version
    result = resolve_state(version, forked.state_sets, forked.source())
    expected = reference_resolve(version, forked.state_sets, forked.dag.events)
    assert result == expected, (forked.names(expected), forked.names(result))
