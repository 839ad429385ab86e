"""Properties of the auth rules over generated inputs.

- Power levels: a change is allowed exactly when a declarative statement of
  rules 8 and 10 says so (every altered value within the sender's reach,
  nobody at or above the sender touched, no creator listed in v12).
- Robustness: arbitrary JSON content in the events the rules inspect gives
  an AuthError or a pass, never another exception.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserver.rooms.auth import (
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
    select_auth_event_ids,
)
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.events import Event
from p2pserver.rooms.power_levels import get_user_power_level
from p2pserver.rooms.room_versions import ROOM_V12
from tests.rooms.authkit import ALL_VERSIONS, VERSION_IDS, Room, cosign, new_room, new_user

PL = ("m.room.power_levels", "")
SCALARS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")

# -- power levels against a declarative oracle ---------------------------------------------


class PLRoom:
    """A room whose members are creator, sender, and two others."""

    def __init__(self, version):
        self.sender, self.other, self.third = new_user("s"), new_user("o"), new_user("t")
        self.room = new_room(version, members=(self.sender, self.other, self.third))
        self.ids = [self.sender.user_id, self.other.user_id, self.third.user_id]
        if not version.privileged_creators:
            self.ids.append(self.room.creator.user_id)


@pytest.fixture(scope="module", params=ALL_VERSIONS, ids=VERSION_IDS)
def pl_room(request):
    return PLRoom(request.param)


# Few distinct values, so equal levels (the rules' boundaries) are common.
levels = st.sampled_from([0, 1, 49, 50, 51, 100, 101]) | st.integers(min_value=0, max_value=110)


def pl_contents(user_ids):
    maps = st.dictionaries(st.sampled_from(["m.a", "m.b", "m.room.power_levels"]), levels)
    return st.fixed_dictionaries(
        {},
        optional={
            **{name: levels for name in SCALARS},
            "events": maps,
            "notifications": st.dictionaries(st.sampled_from(["room", "x"]), levels),
            "users": st.dictionaries(st.sampled_from(user_ids), levels),
        },
    )


def expected_allowed(old: dict[str, Any], new: dict[str, Any], sender: str, level: float) -> bool:
    """Rules 8 and 10.5-10.10, stated as conditions on the difference."""
    required = old.get("events", {}).get("m.room.power_levels", old.get("state_default", 50))
    if required > level:
        return False

    def reach(value: Any) -> bool:
        return value is None or value <= level

    def changed(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        return [(k, a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)]

    for _, was, now in changed({n: old.get(n) for n in SCALARS}, {n: new.get(n) for n in SCALARS}):
        if not (reach(was) and reach(now)):
            return False
    for name in ("events", "notifications"):
        for _, was, now in changed(old.get(name, {}), new.get(name, {})):
            if not (reach(was) and reach(now)):
                return False
    for user, was, now in changed(old.get("users", {}), new.get("users", {})):
        if user != sender and was is not None and was >= level:
            return False
        if not reach(now):
            return False
    return True


def edited(data, content: dict[str, Any], user_ids: list[str]) -> dict[str, Any]:
    """``content`` after a few random additions, changes and removals."""
    new = {k: dict(v) if isinstance(v, dict) else v for k, v in content.items()}
    slots = [*SCALARS, "events", "notifications", "users"]
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        slot = data.draw(st.sampled_from(slots))
        if slot in SCALARS or data.draw(st.booleans()):  # the whole key
            if data.draw(st.booleans()) or slot not in SCALARS:
                new.pop(slot, None)
            else:
                new[slot] = data.draw(levels)
            continue
        keys = {"users": user_ids, "events": ["m.a", "m.b", "m.room.power_levels"]}
        key = data.draw(st.sampled_from(keys.get(slot, ["room", "x"])))
        entries = new.setdefault(slot, {})
        if data.draw(st.booleans()):
            entries.pop(key, None)
        else:
            entries[key] = data.draw(levels)
    return new


@given(data=st.data())
def test_power_level_changes_match_the_oracle(pl_room, data):
    room, sender = pl_room.room, pl_room.sender
    old = data.draw(pl_contents(pl_room.ids), label="old")
    if data.draw(st.booleans(), label="sender listed"):
        old.setdefault("users", {})[sender.user_id] = data.draw(levels, label="sender level")
    new = edited(data, old, pl_room.ids)
    old_event = room.build(room.creator, "m.room.power_levels", old, "")
    state = dict(room.state)
    state[PL] = old_event
    event = room.build(sender, "m.room.power_levels", new, "")
    level = get_user_power_level(sender.user_id, state)
    assert level == old.get("users", {}).get(sender.user_id, old.get("users_default", 0))
    try:
        check_auth_rules(event, state)
        allowed = True
    except AuthError:
        allowed = False
    assert allowed == expected_allowed(old, new, sender.user_id, level)


@given(data=st.data())
def test_v12_creator_may_change_anything_but_creators(data):
    room = _v12_room()
    old = data.draw(pl_contents(["@a:example.org", "@b:example.org"]), label="old")
    new = data.draw(pl_contents(["@a:example.org", room.creator.user_id]), label="new")
    state = dict(room.state)
    state[PL] = room.build(room.creator, "m.room.power_levels", old, "")
    event = room.build(room.creator, "m.room.power_levels", new, "")
    if room.creator.user_id in new.get("users", {}):
        with pytest.raises(AuthError, match="must not contain a room creator"):
            check_auth_rules(event, state)
    else:
        check_auth_rules(event, state)


_v12_rooms: list[Room] = []


def _v12_room() -> Room:
    if not _v12_rooms:
        _v12_rooms.append(new_room(ROOM_V12))
    return _v12_rooms[0]


# -- robustness: anything but AuthError is a bug ---------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(max_size=8),
    st.sampled_from(
        [
            "join",
            "invite",
            "leave",
            "ban",
            "knock",
            "public",
            "restricted",
            "knock_restricted",
            "@s:example.org",
            "10",
            "12",
        ]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "membership",
        "join_authorised_via_users_server",
        "third_party_invite",
        "signed",
        "mxid",
        "token",
        "signatures",
        "users",
        "users_default",
        "events",
        "notifications",
        "ban",
        "kick",
        "invite",
        "redact",
        "state_default",
        "events_default",
        "join_rule",
        "allow",
        "public_key",
        "public_keys",
        "room_version",
        "creator",
        "additional_creators",
        "m.federate",
        "redacts",
    ]
)
contents = st.recursive(
    st.dictionaries(keys, json_values, max_size=5),
    lambda inner: st.dictionaries(keys, inner | json_values, max_size=4),
    max_leaves=6,
)
event_types = st.sampled_from(
    [
        "m.room.member",
        "m.room.power_levels",
        "m.room.create",
        "m.room.join_rules",
        "m.room.third_party_invite",
        "m.room.redaction",
        "m.room.message",
    ]
)


class FuzzRoom:
    def __init__(self, version):
        self.bob = new_user("bob")
        self.room = new_room(version, join_rule="restricted", members=(self.bob,))


@pytest.fixture(scope="module", params=ALL_VERSIONS, ids=VERSION_IDS)
def fuzz_room(request):
    return FuzzRoom(request.param)


@settings(max_examples=60)
@given(
    event_type=event_types,
    content=contents,
    state_key=st.sampled_from([None, "", "@s:example.org", "tok"]),
    sender_is_member=st.booleans(),
    cosigned=st.booleans(),
)
def test_arbitrary_content_gives_auth_errors_only(
    fuzz_room, event_type, content, state_key, sender_is_member, cosigned
):
    room = fuzz_room.room
    sender = fuzz_room.bob if sender_is_member else new_user("s")
    if event_type == "m.room.member" and state_key in (None, "@s:example.org"):
        state_key = sender.user_id if state_key else state_key
    event = room.build(sender, event_type, content, state_key)
    if cosigned:
        event = cosign(event, room.creator)
    version = room.version
    auth_types_for_event(version, event.type, event.sender, event.state_key, event.content)
    ids = {k: e.event_id for k, e in room.state.items()}
    select_auth_event_ids(version, event.type, event.sender, event.state_key, event.content, ids)
    for attempt in (
        lambda: check_auth_rules(event, room.auth_map_for(event)),
        lambda: check_auth_rules(event, room.state),
        lambda: check_auth_events(event, room.auth_events_of(event), set()),
    ):
        with contextlib.suppress(AuthError):
            attempt()


@settings(max_examples=60)
@given(state_content=contents, state_type=event_types, message_type=event_types)
def test_arbitrary_state_gives_auth_errors_only(fuzz_room, state_content, state_type, message_type):
    # Garbage in the *state* (as an outlier never authorised might carry).
    room, bob = fuzz_room.room, fuzz_room.bob
    state_key = "" if state_type != "m.room.member" else bob.user_id
    garbage = room.build(room.creator, state_type, state_content, state_key)
    state: dict[tuple[str, str], Event] = dict(room.state)
    state[(garbage.type, state_key)] = garbage
    for content in ({"membership": "join"}, {"membership": "leave"}, {"body": "x"}, {}):
        sk = bob.user_id if message_type == "m.room.member" else (None if "body" in content else "")
        event = room.build(bob, message_type, content, sk)
        with contextlib.suppress(AuthError):
            check_auth_rules(event, state)
