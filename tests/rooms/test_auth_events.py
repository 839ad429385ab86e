"""The event's own auth_events (v12 rule 3, v10/v11 rule 2) and the auth
events selection algorithm."""

from __future__ import annotations

import pytest

from p2pserver.rooms.auth import (
    MissingAuthEvents,
    auth_types_for_event,
    check_auth_events,
    select_auth_event_ids,
)
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12
from tests.rooms.authkit import new_room, new_user, versions

CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")


def member(user_id):
    return ("m.room.member", user_id)


# -- check_auth_events -------------------------------------------------------------


@versions
def test_valid_auth_events_give_the_map(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    event = room.build(bob, "m.room.message", {"body": "hi"})
    auth_map = check_auth_events(event, room.auth_events_of(event), set())
    assert auth_map == {
        CREATE: room.create,
        PL: room.state[PL],
        member(bob.user_id): room.state[member(bob.user_id)],
    }
    listed = {room.events[i].type for i in event.auth_event_ids}
    # v12: the create event is in the map but never listed.
    assert ("m.room.create" in listed) is (version is not ROOM_V12)


@versions
def test_3_1_duplicate_entries_rejected(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    old_join = room.state[member(bob.user_id)]
    new_join = room.join(bob, displayname="Bob")
    ids = room.build(bob, "m.room.message", {}).auth_event_ids
    event = room.build(bob, "m.room.message", {}, auth_events=[*ids, old_join.event_id])
    assert new_join.event_id in event.auth_event_ids
    with pytest.raises(AuthError, match="3.1: duplicate"):
        check_auth_events(event, room.auth_events_of(event), set())


@versions
def test_3_1_same_event_listed_twice_rejected(version):
    room = new_room(version)
    pl = room.state[PL]
    event = room.build(room.creator, "m.room.message", {})
    twice = room.build(
        room.creator, "m.room.message", {}, auth_events=[*event.auth_event_ids, pl.event_id]
    )
    with pytest.raises(AuthError, match="3.1: duplicate"):
        check_auth_events(twice, room.auth_events_of(twice), set())


@versions
def test_3_2_unexpected_entry_rejected(version):
    room = new_room(version)
    event = room.build(room.creator, "m.room.message", {})
    check_auth_events(event, room.auth_events_of(event), set())
    # join_rules are selected only for join, invite and knock.
    extra = room.build(
        room.creator,
        "m.room.message",
        {},
        auth_events=[*event.auth_event_ids, room.state[JR].event_id],
    )
    with pytest.raises(AuthError, match="3.2: unexpected entry"):
        check_auth_events(extra, room.auth_events_of(extra), set())


@versions
def test_3_2_another_users_membership_rejected(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    event = room.build(bob, "m.room.message", {})
    creator_join = room.state[member(room.creator.user_id)]
    extra = room.build(
        bob, "m.room.message", {}, auth_events=[*event.auth_event_ids, creator_join.event_id]
    )
    with pytest.raises(AuthError, match="3.2: unexpected entry"):
        check_auth_events(extra, room.auth_events_of(extra), set())


@versions
def test_3_2_non_state_entry_rejected(version):
    room = new_room(version)
    message = room.send(room.creator, "m.room.message", {"body": "hi"})
    event = room.build(room.creator, "m.room.message", {})
    extra = room.build(
        room.creator, "m.room.message", {}, auth_events=[*event.auth_event_ids, message.event_id]
    )
    with pytest.raises(AuthError, match="not a state event"):
        check_auth_events(extra, room.auth_events_of(extra), set())


def test_3_2_v12_create_listed_rejected():
    room = new_room(ROOM_V12)
    event = room.build(room.creator, "m.room.message", {})
    listed = room.build(
        room.creator,
        "m.room.message",
        {},
        auth_events=[room.create.event_id, *event.auth_event_ids],
    )
    with pytest.raises(AuthError, match="must not be listed"):
        check_auth_events(listed, room.auth_events_of(listed), set())


@versions
def test_3_3_rejected_entry_rejected(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    event = room.build(bob, "m.room.message", {})
    bob_join = room.state[member(bob.user_id)].event_id
    with pytest.raises(AuthError, match="3.3: entry .* was rejected"):
        check_auth_events(event, room.auth_events_of(event), {bob_join})
    with pytest.raises(AuthError, match="3.3"):
        check_auth_events(event, room.auth_events_of(event), {room.state[PL].event_id})


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_3_3_rejected_create_rejected_before_v12(version):
    room = new_room(version)
    event = room.build(room.creator, "m.room.message", {})
    with pytest.raises(AuthError, match="3.3"):
        check_auth_events(event, room.auth_events_of(event), {room.create.event_id})


@versions
def test_3_5_entry_from_another_room_rejected(version):
    alice = new_user("alice")
    room = new_room(version, creator=alice)
    other = new_room(version, creator=alice)
    event = room.build(alice, "m.room.message", {})
    foreign_pl = other.state[PL]
    ids = [i for i in event.auth_event_ids if i != room.state[PL].event_id]
    forged = room.build(alice, "m.room.message", {}, auth_events=[*ids, foreign_pl.event_id])
    supplied = [*room.auth_events_of(forged), foreign_pl]
    with pytest.raises(AuthError, match="3.5: entry .* another room"):
        check_auth_events(forged, supplied, set())


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_2_4_no_create_event_rejected_before_v12(version):
    room = new_room(version)
    event = room.build(room.creator, "m.room.message", {})
    ids = [i for i in event.auth_event_ids if i != room.create.event_id]
    forged = room.build(room.creator, "m.room.message", {}, auth_events=ids)
    with pytest.raises(AuthError, match="2.4: no m.room.create"):
        check_auth_events(forged, room.auth_events_of(forged), set())


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_create_of_another_room_listed_rejected_before_v12(version):
    alice = new_user("alice")
    room = new_room(version, creator=alice)
    other = new_room(version, creator=alice)
    event = room.build(alice, "m.room.message", {})
    ids = [i for i in event.auth_event_ids if i != room.create.event_id]
    forged = room.build(alice, "m.room.message", {}, auth_events=[other.create.event_id, *ids])
    with pytest.raises(AuthError, match="another room"):
        check_auth_events(forged, [*room.auth_events_of(forged), other.create], set())


def test_v12_missing_create_event_is_missing_not_rejected():
    room = new_room(ROOM_V12)
    event = room.build(room.creator, "m.room.message", {})
    listed = [room.events[i] for i in event.auth_event_ids]
    with pytest.raises(MissingAuthEvents) as info:
        check_auth_events(event, listed, set())
    assert info.value.event_ids == (room.create.event_id,)


@versions
def test_unsupplied_listed_event_is_missing(version):
    room = new_room(version)
    event = room.build(room.creator, "m.room.message", {})
    supplied = [e for e in room.auth_events_of(event) if e.type != "m.room.power_levels"]
    with pytest.raises(MissingAuthEvents) as info:
        check_auth_events(event, supplied, set())
    assert info.value.event_ids == (room.state[PL].event_id,)
    assert not isinstance(info.value, AuthError)


@versions
def test_extra_supplied_events_are_ignored(version):
    room = new_room(version)
    event = room.build(room.creator, "m.room.message", {})
    supplied = [*room.auth_events_of(event), room.state[JR]]
    assert JR not in check_auth_events(event, supplied, set())


# -- auth_types_for_event ------------------------------------------------------------


def base(version, sender):
    types = {PL, member(sender)}
    if version is not ROOM_V12:
        types.add(CREATE)
    return types


@versions
def test_auth_types_create_event_has_none(version):
    assert auth_types_for_event(version, "m.room.create", "@a:x", "", {}) == set()


@versions
def test_auth_types_message(version):
    assert auth_types_for_event(version, "m.room.message", "@a:x", None, {"body": "x"}) == base(
        version, "@a:x"
    )


@versions
@pytest.mark.parametrize("membership", ["join", "invite", "knock"])
def test_auth_types_membership_with_join_rules(version, membership):
    got = auth_types_for_event(version, "m.room.member", "@a:x", "@b:x", {"membership": membership})
    assert got == base(version, "@a:x") | {member("@b:x"), JR}


@versions
@pytest.mark.parametrize("membership", ["leave", "ban", "foo", None, 5])
def test_auth_types_membership_without_join_rules(version, membership):
    got = auth_types_for_event(version, "m.room.member", "@a:x", "@b:x", {"membership": membership})
    assert got == base(version, "@a:x") | {member("@b:x")}


@versions
def test_auth_types_third_party_invite(version):
    content = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
    got = auth_types_for_event(version, "m.room.member", "@a:x", "@b:x", content)
    assert got == base(version, "@a:x") | {member("@b:x"), JR, ("m.room.third_party_invite", "tok")}


@versions
@pytest.mark.parametrize(
    "invite", [None, "x", {}, {"signed": "x"}, {"signed": {}}, {"signed": {"token": 5}}]
)
def test_auth_types_malformed_third_party_invite(version, invite):
    content = {"membership": "invite", "third_party_invite": invite}
    got = auth_types_for_event(version, "m.room.member", "@a:x", "@b:x", content)
    assert got == base(version, "@a:x") | {member("@b:x"), JR}


@versions
def test_auth_types_restricted_join(version):
    content = {"membership": "join", "join_authorised_via_users_server": "@c:y"}
    got = auth_types_for_event(version, "m.room.member", "@b:x", "@b:x", content)
    assert got == base(version, "@b:x") | {JR, member("@c:y")}
    # Only for joins.
    content = {"membership": "leave", "join_authorised_via_users_server": "@c:y"}
    got = auth_types_for_event(version, "m.room.member", "@b:x", "@b:x", content)
    assert member("@c:y") not in got


@versions
def test_auth_types_member_without_state_key(version):
    got = auth_types_for_event(version, "m.room.member", "@a:x", None, {"membership": "join"})
    assert got == base(version, "@a:x") | {JR}


@versions
def test_select_auth_event_ids_order_and_absence(version):
    state = {
        CREATE: "$create",
        PL: "$pl",
        JR: "$jr",
        member("@a:x"): "$a",
        member("@c:y"): "$c",
        ("m.room.third_party_invite", "tok"): "$tpi",
        ("m.room.name", ""): "$name",
    }
    content = {"membership": "join", "join_authorised_via_users_server": "@c:y"}
    got = select_auth_event_ids(version, "m.room.member", "@b:x", "@b:x", content, state)
    # The joiner has no member event yet: it is simply left out.
    expected = ["$pl", "$jr", "$c"]
    if version is not ROOM_V12:
        expected.insert(0, "$create")
    assert got == expected
    got = select_auth_event_ids(version, "m.room.message", "@a:x", None, {}, state)
    assert got == (["$pl", "$a"] if version is ROOM_V12 else ["$create", "$pl", "$a"])
    got = select_auth_event_ids(version, "m.room.create", "@a:x", "", {}, state)
    assert got == []


@versions
def test_select_self_membership_not_duplicated(version):
    state = {CREATE: "$create", PL: "$pl", member("@a:x"): "$a"}
    got = select_auth_event_ids(
        version, "m.room.member", "@a:x", "@a:x", {"membership": "leave"}, state
    )
    assert got.count("$a") == 1
