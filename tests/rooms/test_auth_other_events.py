"""Rules 6-9 and 11 (v10/v11: 5-8 and 10) for non-membership events, and
redactions (no auth rule of their own; "Handling redactions")."""

from __future__ import annotations

import pytest

from p2pserver.rooms.auth import redaction_applies
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V12
from tests.rooms.authkit import Room, new_room, new_user, versions

# -- 6: the sender must be joined -------------------------------------------------------


@versions
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban", "knock"])
def test_6_sender_not_joined_rejected(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="knock")
    if membership == "knock":
        room.send_member(bob, bob, "knock")
    elif membership is not None:
        room.invite(room.creator, bob)
        if membership != "invite":
            room.join(bob)
            room.send_member(room.creator if membership == "ban" else bob, bob, membership)
    for event_type, state_key in [("m.room.message", None), ("m.room.topic", "")]:
        event = room.build(bob, event_type, {"body": "x", "topic": "x"}, state_key)
        with pytest.raises(AuthError, match="rule 6: sender .* is not joined"):
            room.check(event)


@versions
def test_6_joined_sender_allowed(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    room.send(bob, "m.room.message", {"body": "hi"})


def test_6_v12_creators_must_be_joined_too():
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(ROOM_V12, alice, create_content={"additional_creators": [bob.user_id]})
    room.join(alice)
    with pytest.raises(AuthError, match="rule 6"):
        room.check(room.build(bob, "m.room.message", {"body": "hi"}))


# -- 7: m.room.third_party_invite ----------------------------------------------------------


@versions
def test_7_third_party_invite_with_invite_level_allowed(version):
    bob = new_user("bob")
    room = new_room(
        version,
        members=(bob,),
        power_users={bob.user_id: 10},
        invite=10,
        events={"m.room.third_party_invite": 100},  # ignored: rule 7 comes before rule 8
    )
    room.send(bob, "m.room.third_party_invite", {"display_name": "x"}, "token")


@versions
def test_7_third_party_invite_below_invite_level_rejected(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,), power_users={bob.user_id: 9}, invite=10)
    event = room.build(bob, "m.room.third_party_invite", {"display_name": "x"}, "token")
    with pytest.raises(AuthError, match="third_party_invite: sender's power level is below"):
        room.check(event)


@versions
def test_7_third_party_invite_state_key_starting_with_at_is_not_checked(version):
    # Rule 7 allows before rule 9 is reached.
    room = new_room(version)
    room.send(room.creator, "m.room.third_party_invite", {}, "@someone:example.org")


# -- 8: required power level ------------------------------------------------------------


@versions
def test_8_state_default(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 50})
    with pytest.raises(AuthError, match="rule 8: sending m.room.topic needs power level 50"):
        room.check(room.build(bob, "m.room.topic", {"topic": "x"}, ""))
    room.send(mod, "m.room.topic", {"topic": "x"}, "")


@versions
@pytest.mark.parametrize("event_type, state_key", [("m.room.topic", ""), ("m.room.message", None)])
def test_8_boundary(version, event_type, state_key):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(
        version,
        members=(bob, carol),
        events_default=50,
        power_users={bob.user_id: 49, carol.user_id: 50},
    )
    with pytest.raises(AuthError, match="needs power level 50, sender has 49"):
        room.check(room.build(bob, event_type, {"x": 1}, state_key))
    room.send(carol, event_type, {"x": 1}, state_key)


@versions
def test_8_events_default(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 50}, events_default=20)
    with pytest.raises(AuthError, match="rule 8: sending m.room.message needs power level 20"):
        room.check(room.build(bob, "m.room.message", {"body": "x"}))
    room.send(mod, "m.room.message", {"body": "x"})


@versions
def test_8_events_override_both_ways(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,), events={"m.room.topic": 0, "m.reaction": 5})
    room.send(bob, "m.room.topic", {"topic": "x"}, "")  # below state_default
    with pytest.raises(AuthError, match="needs power level 5"):
        room.check(room.build(bob, "m.reaction", {}))


@versions
def test_8_state_event_with_any_state_key_uses_state_default(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,))
    with pytest.raises(AuthError, match="rule 8"):
        room.check(room.build(bob, "m.custom", {}, "some key"))
    room.send(bob, "m.custom", {})  # the same type as a message event


@versions
def test_8_no_power_levels_event(version):
    # Without m.room.power_levels: state_default 0, creator 100 (v12: infinite).
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(version, alice)
    room.join(alice)
    room.send(alice, "m.room.join_rules", {"join_rule": "public"}, "")
    room.join(bob)
    room.send(bob, "m.room.topic", {"topic": "x"}, "")
    room.send(bob, "m.room.message", {"body": "x"})


# -- 9: state keys naming users --------------------------------------------------------------


@versions
def test_9_own_user_state_key_allowed(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,), state_default=0)
    room.send(bob, "m.custom.profile", {}, bob.user_id)
    room.send(bob, "m.custom.profile", {}, "not-a-user")


@versions
@pytest.mark.parametrize("state_key", ["@someone:example.org", "@", "@bob"])
def test_9_other_user_state_key_rejected(version, state_key):
    bob = new_user("bob")
    room = new_room(version, members=(bob,), state_default=0)
    with pytest.raises(AuthError, match="rule 9: state_key starting with @"):
        room.check(room.build(bob, "m.custom.profile", {}, state_key))
    # Even the creator may not.
    with pytest.raises(AuthError, match="rule 9"):
        room.check(room.build(room.creator, "m.custom.profile", {}, bob.user_id))


# -- 11: otherwise allow ------------------------------------------------------------------------


@versions
@pytest.mark.parametrize(
    "event_type, state_key",
    [
        ("m.room.name", ""),
        ("m.room.encryption", ""),
        ("org.example.custom", "x"),
        ("m.room.message", None),
        ("m.room.aliases", "example.org"),
        ("m.room.server_acl", ""),
        ("m.room.history_visibility", ""),
    ],
)
def test_11_everything_else_allowed(version, event_type, state_key):
    room = new_room(version)
    room.send(room.creator, event_type, {"x": 1}, state_key)


# -- redactions ------------------------------------------------------------------------------------


def _redaction(room, sender, target):
    if room.version.redacts_in_content:
        return room.build(sender, "m.room.redaction", {"redacts": target.event_id})
    return room.build(sender, "m.room.redaction", {}, extra={"redacts": target.event_id})


@versions
def test_redaction_without_redact_level_passes_the_rules(version):
    # The redact level is not an auth rule since room version 3.
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, members=(bob, carol), redact=100)
    message = room.send(carol, "m.room.message", {"body": "x"})
    redaction = _redaction(room, bob, message)
    assert redaction.redacts == message.event_id
    room.check(redaction)
    # ... but it is not applied: bob is neither powerful nor carol's server.
    assert not redaction_applies(redaction, message, room.state)


@versions
def test_redaction_needs_its_event_level(version):
    bob = new_user("bob")
    room = new_room(version, members=(bob,), events={"m.room.redaction": 50})
    message = room.send(bob, "m.room.message", {"body": "x"})
    with pytest.raises(AuthError, match="rule 8: sending m.room.redaction needs power level 50"):
        room.check(_redaction(room, bob, message))
    room.check(_redaction(room, room.creator, message))


@versions
def test_redaction_by_non_member_rejected(version):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, members=(bob,))
    message = room.send(bob, "m.room.message", {"body": "x"})
    with pytest.raises(AuthError, match="rule 6"):
        room.check(_redaction(room, carol, message))


@versions
def test_redaction_applies_with_redact_level(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 50})
    message = room.send(bob, "m.room.message", {"body": "x"})
    redaction = room.send(
        mod,
        "m.room.redaction",
        {"redacts": message.event_id},
        extra=None if version.redacts_in_content else {"redacts": message.event_id},
    )
    assert redaction_applies(redaction, message, room.state)
    room.set_power_levels(room.creator, room.power_levels_content(redact=51))
    assert not redaction_applies(redaction, message, room.state)


@versions
def test_redaction_applies_to_own_servers_events(version):
    bob = new_user("bob")
    bob2, carol = bob.peer("bob2"), new_user("carol")
    room = new_room(version, members=(bob, bob2, carol))
    own = room.send(bob, "m.room.message", {"body": "x"})
    peer = room.send(bob2, "m.room.message", {"body": "x"})
    other = room.send(carol, "m.room.message", {"body": "x"})
    redaction = _redaction(room, bob, own)
    assert redaction_applies(redaction, own, room.state)
    assert redaction_applies(redaction, peer, room.state)  # same server: allowed
    assert not redaction_applies(redaction, other, room.state)


def test_redaction_v12_creator_applies_everywhere():
    bob = new_user("bob")
    room = new_room(ROOM_V12, members=(bob,), redact=2**53 - 1)
    message = room.send(bob, "m.room.message", {"body": "x"})
    redaction = _redaction(room, room.creator, message)
    assert redaction_applies(redaction, message, room.state)
    v10 = new_room(ROOM_V10, members=(bob,), redact=101)
    message = v10.send(bob, "m.room.message", {"body": "x"})
    assert not redaction_applies(_redaction(v10, v10.creator, message), message, v10.state)
