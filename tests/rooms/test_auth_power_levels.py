"""Rule 10 (v10/v11: rule 9): m.room.power_levels, and the power-level
readers in p2pserver.rooms.power_levels."""

from __future__ import annotations

import pytest

from p2pserver.rooms.auth import check_auth_rules
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.power_levels import (
    get_creators,
    get_named_level,
    get_required_power_level,
    get_user_power_level,
    is_creator,
)
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12
from tests.rooms.authkit import Room, new_room, new_user, versions, with_content

PL = ("m.room.power_levels", "")
SCALARS = ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
INF = float("inf")


class Setup:
    """creator, admin (100), mod (50), user (0); mods may send power levels."""

    def __init__(self, version, **overrides):
        self.admin, self.mod, self.user = new_user("admin"), new_user("mod"), new_user("user")
        self.room = new_room(
            version,
            members=(self.admin, self.mod, self.user),
            power_users={self.admin.user_id: 100, self.mod.user_id: 50},
            events={"m.room.power_levels": 50, "m.room.name": 50},
            **overrides,
        )

    def pl(self, sender, **changes):
        """A power levels event by ``sender``: current content with ``changes``
        (a value of ``DROP`` removes the key)."""
        content = self.room.power_levels_content()
        for key, value in changes.items():
            if value is DROP:
                content.pop(key, None)
            else:
                content[key] = value
        return self.room.build(sender, "m.room.power_levels", content, "")

    def users(self, **changes):
        """The current users map with changes by role name (None removes)."""
        users = dict(self.room.power_levels_content()["users"])
        for role, level in changes.items():
            user_id = getattr(self, role).user_id
            if level is None:
                users.pop(user_id, None)
            else:
                users[user_id] = level
        return users

    def allowed(self, event):
        self.room.check(event)

    def rejected(self, event, match):
        with pytest.raises(AuthError, match=match):
            self.room.check(event)


DROP = object()


# -- 10.1: scalar levels are integers ----------------------------------------------------


@versions
@pytest.mark.parametrize("name", SCALARS)
@pytest.mark.parametrize("value", [0, -5, 50, 100, 2**53 - 1])
def test_10_1_integer_allowed(version, name, value):
    s = Setup(version)
    if value > 100:
        event = s.pl(s.room.creator, **{name: value})
        # Only v12's infinitely powerful creator can set a level above 100.
        if version is ROOM_V12:
            s.allowed(event)
        else:
            s.rejected(event, "above the sender's level")
        return
    s.allowed(s.pl(s.room.creator, **{name: value}))


@versions
@pytest.mark.parametrize("name", SCALARS)
@pytest.mark.parametrize("value", ["50", "0", True, False, None, [50], {"level": 50}])
def test_10_1_non_integer_rejected(version, name, value):
    s = Setup(version)
    s.rejected(s.pl(s.room.creator, **{name: value}), f"{name} is not an integer")


@versions
@pytest.mark.parametrize("name", SCALARS)
def test_10_1_float_rejected(version, name):
    # Canonical JSON cannot even hash a float: a forged event with a given ID.
    s = Setup(version)
    event = s.pl(s.room.creator)
    content = dict(event.content, **{name: 50.0})
    forged = with_content(event, content, event_id="$forged")
    with pytest.raises(AuthError, match=f"{name} is not an integer"):
        check_auth_rules(forged, s.room.state)


# -- 10.2: events and notifications are objects of integers -----------------------------


@versions
@pytest.mark.parametrize("name", ["events", "notifications"])
def test_10_2_int_map_allowed(version, name):
    s = Setup(version)
    s.allowed(s.pl(s.room.creator, **{name: {"m.room.topic": 20, "room": 50}}))
    s.allowed(s.pl(s.room.creator, **{name: {}}))


@versions
@pytest.mark.parametrize("name", ["events", "notifications"])
@pytest.mark.parametrize(
    "value", ["x", 5, None, [], [["room", 50]], {"room": "50"}, {"room": True}, {"room": None}]
)
def test_10_2_not_int_map_rejected(version, name, value):
    s = Setup(version)
    s.rejected(s.pl(s.room.creator, **{name: value}), f"{name} is not an object of integers")


@versions
def test_10_2_float_in_events_rejected(version):
    s = Setup(version)
    event = s.pl(s.room.creator)
    content = dict(event.content, events={"m.room.name": 50.5})
    with pytest.raises(AuthError, match="events is not an object of integers"):
        check_auth_rules(with_content(event, content, event_id="$forged"), s.room.state)


# -- 10.3: users maps user IDs to integers -------------------------------------------------


@versions
@pytest.mark.parametrize(
    "users",
    [
        "x",
        [],
        None,
        {"user": 10},
        {"@user": 10},
        {"@user:exa mple.org": 10},
        {"@user:example.org": "10"},
        {"@user:example.org": True},
        {"@user:example.org": None},
    ],
)
def test_10_3_bad_users_rejected(version, users):
    s = Setup(version)
    content = dict(s.users(), **users) if isinstance(users, dict) else users
    s.rejected(s.pl(s.room.creator, users=content), "users is not an object from user IDs")


@versions
def test_10_3_users_may_be_absent(version):
    alice = new_user("alice")
    room = Room(version, alice)
    room.join(alice)
    room.check(room.build(alice, "m.room.power_levels", {"ban": 50}, ""))


# -- 10.4 (v12): no creators in users ---------------------------------------------------------


def _v12_room_with_second_creator():
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(ROOM_V12, alice, create_content={"additional_creators": [bob.user_id]})
    room.join(alice)
    return room, alice, bob


@pytest.mark.parametrize("level", [100, 0, 2**53 - 1])
def test_10_4_v12_creator_in_users_rejected(level):
    room, alice, bob = _v12_room_with_second_creator()
    for user in (alice, bob):
        event = room.build(alice, "m.room.power_levels", {"users": {user.user_id: level}}, "")
        with pytest.raises(AuthError, match="must not contain a room creator"):
            room.check(event)
    room.check(room.build(alice, "m.room.power_levels", {"users": {"@x:example.org": 50}}, ""))


def test_10_4_v12_creators_cannot_be_demoted_later():
    s = Setup(ROOM_V12)
    s.rejected(
        s.pl(s.admin, users=dict(s.users(), **{s.room.creator.user_id: 0})),
        "must not contain a room creator",
    )
    assert get_user_power_level(s.room.creator.user_id, s.room.state) == INF


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_10_4_creator_in_users_fine_before_v12(version):
    s = Setup(version)
    assert s.room.creator.user_id in s.users()
    s.allowed(s.pl(s.room.creator, users=s.users()))


# -- 10.5: the first power levels event ------------------------------------------------------


@versions
def test_10_5_first_power_levels_allowed(version):
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(version, alice)
    room.join(alice)
    room.check(
        room.build(
            alice,
            "m.room.power_levels",
            {"users": {bob.user_id: 100}, "ban": 100, "events": {"x": 100}},
            "",
        )
    )


@versions
def test_10_5_first_power_levels_by_any_member(version):
    # With no power levels event state_default is 0, so any member may send
    # the first one and give themselves anything.
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(version, alice)
    room.join(alice)
    room.send(alice, "m.room.join_rules", {"join_rule": "public"}, "")
    room.join(bob)
    room.check(room.build(bob, "m.room.power_levels", {"users": {bob.user_id: 9000}}, ""))
    # ... but the rules before 10.5 still apply.
    with pytest.raises(AuthError, match="ban is not an integer"):
        room.check(room.build(bob, "m.room.power_levels", {"ban": "1"}, ""))


# -- 10.6: scalar levels ----------------------------------------------------------------------


@versions
@pytest.mark.parametrize("name", SCALARS)
def test_10_6_change_within_reach_allowed(version, name):
    s = Setup(version, **{n: 40 for n in SCALARS if n != "users_default"})
    s.allowed(s.pl(s.mod, **{name: 30}))
    s.allowed(s.pl(s.mod, **{name: 50}))  # up to the sender's own level
    s.allowed(s.pl(s.mod, **{name: DROP}))  # removing a value within reach


@versions
@pytest.mark.parametrize("name", SCALARS)
def test_10_6_2_new_value_above_sender_rejected(version, name):
    s = Setup(version)
    s.rejected(s.pl(s.mod, **{name: 51}), f"new {name} is above the sender's level")


@versions
@pytest.mark.parametrize("name", SCALARS)
def test_10_6_1_current_value_above_sender_rejected(version, name):
    s = Setup(version, **{name: 60})
    s.rejected(s.pl(s.mod, **{name: 10}), f"current {name} is above the sender's level")
    s.rejected(s.pl(s.mod, **{name: DROP}), f"current {name} is above the sender's level")


@versions
@pytest.mark.parametrize("name", SCALARS)
def test_10_6_unchanged_value_above_sender_allowed(version, name):
    s = Setup(version, **{name: 60})
    s.allowed(s.pl(s.mod))  # not altered: not checked


@versions
def test_10_6_adding_absent_value(version):
    s = Setup(version)
    s.room.set_power_levels(s.room.creator, s.room.power_levels_content())
    content = s.room.power_levels_content()
    del content["kick"]
    s.room.set_power_levels(s.room.creator, content)
    s.allowed(s.pl(s.mod, kick=50))
    s.rejected(s.pl(s.mod, kick=70), "new kick is above")


# -- 10.7 / 10.8: events and notifications entries ----------------------------------------


@versions
@pytest.mark.parametrize("name", ["events", "notifications"])
def test_10_7_10_8_entries_within_reach_allowed(version, name):
    s = Setup(version)
    current = s.room.power_levels_content().get(name, {})
    s.allowed(s.pl(s.mod, **{name: dict(current, custom=50)}))  # added, equal to the sender
    s.room.set_power_levels(
        s.room.creator, s.room.power_levels_content(**{name: dict(current, custom=40)})
    )
    s.allowed(s.pl(s.mod, **{name: dict(current, custom=10)}))  # changed
    s.allowed(s.pl(s.mod, **{name: dict(current)}))  # removed


@versions
@pytest.mark.parametrize("name", ["events", "notifications"])
def test_10_7_current_entry_above_sender_rejected(version, name):
    s = Setup(version)
    current = s.room.power_levels_content().get(name, {})
    s.room.set_power_levels(
        s.room.creator, s.room.power_levels_content(**{name: dict(current, custom=75)})
    )
    s.rejected(s.pl(s.mod, **{name: dict(current, custom=10)}), f"current {name}\\['custom'\\]")
    s.rejected(s.pl(s.mod, **{name: dict(current)}), f"current {name}\\['custom'\\]")
    s.rejected(s.pl(s.mod, **{name: DROP}), f"current {name}\\['custom'\\]")
    # Leaving it alone is fine.
    s.allowed(s.pl(s.mod, **{name: dict(current, custom=75, other=5)}))


@versions
@pytest.mark.parametrize("name", ["events", "notifications"])
def test_10_8_new_entry_above_sender_rejected(version, name):
    s = Setup(version)
    current = s.room.power_levels_content().get(name, {})
    s.rejected(s.pl(s.mod, **{name: dict(current, custom=51)}), f"new {name}\\['custom'\\]")
    s.room.set_power_levels(
        s.room.creator, s.room.power_levels_content(**{name: dict(current, custom=10)})
    )
    s.rejected(s.pl(s.mod, **{name: dict(current, custom=51)}), f"new {name}\\['custom'\\]")


# -- 10.9 / 10.10: users entries ----------------------------------------------------------------


@versions
def test_10_9_changing_lower_users_allowed(version):
    s = Setup(version)
    s.allowed(s.pl(s.mod, users=s.users(user=49)))  # added
    s.room.set_power_levels(s.admin, s.room.power_levels_content(users=s.users(user=10)))
    s.allowed(s.pl(s.mod, users=s.users(user=20)))  # changed
    s.allowed(s.pl(s.mod, users=s.users(user=None)))  # removed


@versions
@pytest.mark.parametrize("other_level", [50, 60])
def test_10_9_changing_equal_or_higher_user_rejected(version, other_level):
    s = Setup(version)
    s.room.set_power_levels(s.admin, s.room.power_levels_content(users=s.users(user=other_level)))
    s.rejected(s.pl(s.mod, users=s.users(user=10)), "whose level is not below the sender's")
    s.rejected(s.pl(s.mod, users=s.users(user=None)), "whose level is not below the sender's")
    s.rejected(s.pl(s.mod, users=s.users(admin=10)), "whose level is not below the sender's")


@versions
def test_10_9_own_entry_may_be_lowered_or_removed(version):
    s = Setup(version)
    s.allowed(s.pl(s.mod, users=s.users(mod=10)))
    s.allowed(s.pl(s.mod, users=s.users(mod=None)))
    s.allowed(s.pl(s.admin, users=s.users(admin=0)))


@versions
def test_10_10_raising_above_sender_rejected(version):
    s = Setup(version)
    s.rejected(s.pl(s.mod, users=s.users(user=51)), "cannot raise .* above the sender's level")
    s.rejected(s.pl(s.mod, users=s.users(mod=51)), "cannot raise .* above the sender's level")
    newcomer = {"@new:example.org": 51}
    s.rejected(s.pl(s.mod, users=dict(s.users(), **newcomer)), "cannot raise")
    s.allowed(s.pl(s.mod, users=s.users(user=50)))  # equal to the sender's own level


@versions
def test_10_users_default_governs_unlisted_users(version):
    s = Setup(version, users_default=20)
    assert get_user_power_level(s.user.user_id, s.room.state) == 20
    # Writing out a level equal to the default is an addition: only 10.10 applies.
    s.allowed(s.pl(s.mod, users=s.users(user=20)))


@versions
def test_10_v12_creator_may_set_anything_but_creators(version):
    s = Setup(version)
    big = s.pl(s.room.creator, users=s.users(admin=2**53 - 1), ban=2**53 - 1)
    if version is ROOM_V12:
        s.allowed(big)
    else:
        s.rejected(big, "above the sender's level")


def test_10_v12_additional_creator_has_infinite_power():
    room, alice, bob = _v12_room_with_second_creator()
    room.send(alice, "m.room.join_rules", {"join_rule": "public"}, "")
    room.join(bob)
    room.set_power_levels(alice, {"users": {}, "events": {"m.room.power_levels": 2**53 - 1}})
    room.check(room.build(bob, "m.room.power_levels", {"users": {"@x:example.org": 9000}}, ""))


# -- sending power levels at all: rules 6, 8, 9 still apply -----------------------------------


@versions
def test_power_levels_needs_its_required_level(version):
    s = Setup(version)
    s.rejected(s.pl(s.user), "rule 8: sending m.room.power_levels needs power level 50")


@versions
def test_power_levels_with_user_state_key_rejected(version):
    s = Setup(version)
    event = s.room.build(
        s.room.creator, "m.room.power_levels", s.room.power_levels_content(), s.user.user_id
    )
    with pytest.raises(AuthError, match="rule 9"):
        s.room.check_against_state(event)


# -- the readers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_levels_without_power_levels_event(version):
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(version, alice)
    assert get_user_power_level(alice.user_id, room.state) == 100
    assert get_user_power_level(bob.user_id, room.state) == 0
    assert get_user_power_level(alice.user_id, {}) == 0  # no create event: nobody special


def test_levels_without_power_levels_event_v12():
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    room = Room(ROOM_V12, alice, create_content={"additional_creators": [bob.user_id]})
    assert get_user_power_level(alice.user_id, room.state) == INF
    assert get_user_power_level(bob.user_id, room.state) == INF
    assert get_user_power_level(carol.user_id, room.state) == 0


def test_v10_creator_is_content_creator():
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(ROOM_V10, alice, create_content={"creator": bob.user_id})
    assert get_creators(room.create) == {bob.user_id}
    assert is_creator(bob.user_id, room.create) and not is_creator(alice.user_id, room.create)
    assert get_user_power_level(bob.user_id, room.state) == 100
    assert get_user_power_level(alice.user_id, room.state) == 0


@pytest.mark.parametrize("version", [ROOM_V11, ROOM_V12], ids=["11", "12"])
def test_v11_creator_is_sender(version):
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(version, alice, create_content={"creator": bob.user_id})
    assert get_creators(room.create) == {alice.user_id}
    assert not is_creator(bob.user_id, room.create)


def test_v12_creators():
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(ROOM_V12, alice, create_content={"additional_creators": [bob.user_id]})
    assert get_creators(room.create) == {alice.user_id, bob.user_id}
    v11 = Room(ROOM_V11, alice, create_content={"additional_creators": [bob.user_id]})
    assert get_creators(v11.create) == {alice.user_id}
    assert not is_creator(bob.user_id, v11.create)


@versions
def test_user_levels_from_power_levels(version):
    s = Setup(version, users_default=5)
    state = s.room.state
    assert get_user_power_level(s.admin.user_id, state) == 100
    assert get_user_power_level(s.mod.user_id, state) == 50
    assert get_user_power_level(s.user.user_id, state) == 5
    creator_level = get_user_power_level(s.room.creator.user_id, state)
    assert creator_level == (INF if version is ROOM_V12 else 100)


@versions
def test_malformed_levels_read_as_absent(version):
    # Never accepted by the rules, but the readers must not crash on them.
    s = Setup(version)
    pl = s.room.state[PL]
    bad = with_content(
        pl,
        {
            "users": {s.user.user_id: "70"},
            "users_default": True,
            "ban": "7",
            "events": {"m.room.name": None},
        },
    )
    state = dict(s.room.state)
    state[PL] = bad
    assert get_user_power_level(s.user.user_id, state) == 0
    assert get_named_level(state, "ban") == 50
    assert get_required_power_level(state, "m.room.name", "") == 50
    state[PL] = with_content(pl, {"users": ["x"], "events": "x"})
    assert get_user_power_level(s.user.user_id, state) == 0
    assert get_required_power_level(state, "m.room.name", None) == 0


@versions
def test_named_level_defaults(version):
    alice = new_user("alice")
    room = Room(version, alice)
    no_pl = room.state
    expected = {
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "events_default": 0,
        "users_default": 0,
        "state_default": 0,
    }
    assert {n: get_named_level(no_pl, n) for n in expected} == expected
    room.join(alice)
    room.set_power_levels(alice, {})
    with_pl = room.state
    assert {n: get_named_level(with_pl, n) for n in expected} == dict(expected, state_default=50)
    assert get_named_level(with_pl, "kick", 7) == 7
    # (v10/v11: alice lost her 100 with the empty event; apply unchecked)
    room.apply(room.build(alice, "m.room.power_levels", {"kick": 3}, ""))
    assert get_named_level(room.state, "kick", 7) == 3


@versions
def test_required_power_level(version):
    alice = new_user("alice")
    room = Room(version, alice)
    assert get_required_power_level(room.state, "m.room.topic", "") == 0
    assert get_required_power_level(room.state, "m.room.message", None) == 0
    room.join(alice)
    room.set_power_levels(
        alice,
        {
            "events": {"m.room.topic": 10, "m.room.message": 20},
            "events_default": 1,
            "state_default": 2,
        },
    )
    assert get_required_power_level(room.state, "m.room.topic", "") == 10
    assert get_required_power_level(room.state, "m.room.message", None) == 20
    assert get_required_power_level(room.state, "m.room.name", "") == 2
    assert get_required_power_level(room.state, "m.custom", None) == 1
    # The events map applies to state and message events alike.
    assert get_required_power_level(room.state, "m.room.topic", None) == 10


@versions
def test_10_3_big_users_maps(version):
    # Big maps take the memoised path of rule 10.3; the verdict must not leak
    # between events.
    s = Setup(version)
    many = {f"@u{i}:example.org": i % 50 for i in range(200)}
    good = s.pl(s.room.creator, users=dict(s.users(), **many))
    bad = s.pl(s.room.creator, users=dict(s.users(), **many, **{"u200:example.org": 1}))
    for _ in range(2):
        s.allowed(good)
        s.rejected(bad, "users is not an object from user IDs")
