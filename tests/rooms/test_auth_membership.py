"""Rule 5 (v10/v11: rule 4): m.room.member events.

Every rule gets an allowed and a rejected case, in every room version.
"""

from __future__ import annotations

import pytest

from p2pserver.rooms.auth import check_auth_rules
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V12
from p2pserver.rooms.signing import SigningKey, sign_json
from tests.rooms.authkit import (
    Room,
    cosign,
    forge,
    new_room,
    new_user,
    signed_block,
    third_party_invite_content,
    versions,
    with_content,
)

# -- 5.1: state_key and membership required -------------------------------------------


@versions
def test_5_1_missing_state_key_rejected(version):
    bob = new_user("bob")
    room = new_room(version)
    event = room.build(bob, "m.room.member", {"membership": "join"}, None)
    with pytest.raises(AuthError, match="no state_key or no membership"):
        room.check(event)


@versions
def test_5_1_missing_membership_rejected(version):
    bob = new_user("bob")
    room = new_room(version)
    good = room.member(bob, bob, "join")
    room.check(good)
    bad = room.build(bob, "m.room.member", {"displayname": "Bob"}, bob.user_id)
    with pytest.raises(AuthError, match="no state_key or no membership"):
        room.check(bad)


# -- 5.2: join_authorised_via_users_server must have signed ---------------------------


@versions
def test_5_2_signed_by_authorising_server_allowed(version):
    bob = new_user("bob")
    room = new_room(version, join_rule="restricted")
    event = room.member(bob, bob, "join", join_authorised_via_users_server=room.creator.user_id)
    room.check(cosign(event, room.creator))


@versions
def test_5_2_not_signed_by_authorising_server_rejected(version):
    bob = new_user("bob")
    room = new_room(version, join_rule="restricted")
    event = room.member(bob, bob, "join", join_authorised_via_users_server=room.creator.user_id)
    with pytest.raises(AuthError, match="not signed by the server of join_authorised"):
        room.check(event)
    # A signature under the authoriser's server name by some other key.
    impostor = room.creator.__class__(room.creator.name, SigningKey.generate())
    forged = forge(cosign(event, impostor), event_id=event.event_id)
    forged.pdu["signatures"][room.creator.server] = forged.pdu["signatures"].pop(impostor.server)
    with pytest.raises(AuthError, match="not signed by the server of join_authorised"):
        room.check(forged)


@versions
def test_5_2_applies_to_every_membership(version):
    # Even a public join carrying the key needs the named server's signature.
    bob = new_user("bob")
    room = new_room(version, join_rule="public")
    event = room.member(bob, bob, "join", join_authorised_via_users_server=room.creator.user_id)
    with pytest.raises(AuthError, match="not signed by the server"):
        room.check(event)
    room.check(cosign(event, room.creator))
    room.join(bob)
    leave = room.member(bob, bob, "leave", join_authorised_via_users_server=room.creator.user_id)
    with pytest.raises(AuthError, match="not signed by the server"):
        room.check(leave)
    room.check(cosign(leave, room.creator))


@versions
@pytest.mark.parametrize("authoriser", [5, None, "creator", "@creator:not a server"])
def test_5_2_authoriser_not_a_user_id_rejected(version, authoriser):
    bob = new_user("bob")
    room = new_room(version, join_rule="restricted")
    event = room.member(bob, bob, "join", join_authorised_via_users_server=authoriser)
    with pytest.raises(AuthError, match="not signed by the server"):
        room.check(cosign(event, room.creator))


# -- 5.3: join ---------------------------------------------------------------------------


@versions
def test_5_3_1_creator_first_join_allowed(version):
    alice = new_user("alice")
    room = Room(version, alice)
    room.check(room.member(alice, alice, "join"))


@versions
def test_5_3_1_only_right_after_create(version):
    alice = new_user("alice")
    room = Room(version, alice)
    first = room.member(alice, alice, "join")
    # Two prev events: no longer "the only previous event is the create".
    late = room.build(
        alice,
        "m.room.member",
        {"membership": "join"},
        alice.user_id,
        prev_events=[room.create, first],
    )
    with pytest.raises(AuthError, match="join rule is invite and sender is not invited"):
        room.check_against_state(late)


@versions
def test_5_3_1_not_for_other_users(version):
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(version, alice)
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member(bob, bob, "join"))


def test_5_3_1_v10_uses_content_creator():
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(ROOM_V10, alice, create_content={"creator": bob.user_id})
    room.check(room.member(bob, bob, "join"))
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member(alice, alice, "join"))


def test_5_3_1_v12_additional_creators_do_not_get_the_first_join():
    alice, bob = new_user("alice"), new_user("bob")
    room = Room(ROOM_V12, alice, create_content={"additional_creators": [bob.user_id]})
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member(bob, bob, "join"))
    room.check(room.member(alice, alice, "join"))


@versions
def test_5_3_2_join_for_someone_else_rejected(version):
    bob = new_user("bob")
    room = new_room(version, join_rule="public")
    with pytest.raises(AuthError, match="join: sender does not match state_key"):
        room.check(room.member(room.creator, bob, "join"))
    room.check(room.member(bob, bob, "join"))


@versions
@pytest.mark.parametrize(
    "join_rule", ["public", "invite", "knock", "restricted", "knock_restricted"]
)
def test_5_3_3_banned_user_cannot_join(version, join_rule):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule, members=(bob,))
    room.send_member(room.creator, bob, "ban")
    event = room.member(bob, bob, "join", join_authorised_via_users_server=room.creator.user_id)
    with pytest.raises(AuthError, match="join: sender is banned"):
        room.check(cosign(event, room.creator))
    # Unbanned and invited, the same user may join.
    room.send_member(room.creator, bob, "leave")
    room.invite(room.creator, bob)
    room.join(bob)


@versions
@pytest.mark.parametrize("join_rule", ["invite", "knock"])
def test_5_3_4_invited_or_joined_may_join(version, join_rule):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    room.invite(room.creator, bob)
    room.join(bob)
    room.join(bob, displayname="Bob")  # joined -> join again (profile change)


@versions
@pytest.mark.parametrize("join_rule", ["invite", "knock"])
@pytest.mark.parametrize("previous", [None, "leave", "knock"])
def test_5_3_4_uninvited_rejected(version, join_rule, previous):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    if previous == "leave":
        room.invite(room.creator, bob)
        room.send_member(bob, bob, "leave")
    elif previous == "knock":
        room.set_join_rule(room.creator, "knock")
        room.send_member(bob, bob, "knock")
        room.set_join_rule(room.creator, join_rule)
    with pytest.raises(AuthError, match=f"join rule is {join_rule} and sender is not invited"):
        room.check(room.member(bob, bob, "join"))


@versions
def test_no_join_rules_event_means_invite(version):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    room = Room(version, alice)
    room.join(alice)
    with pytest.raises(AuthError, match="join rule is invite"):
        room.check(room.member(bob, bob, "join"))
    room.invite(alice, carol)
    room.join(carol)


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_5_3_5_1_invited_or_joined_allowed(version, join_rule):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    room.invite(room.creator, bob)
    room.join(bob)
    room.join(bob, displayname="Bob")


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_5_3_5_2_authorised_join_allowed(version, join_rule):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, join_rule=join_rule, members=(carol,))
    event = room.member(bob, bob, "join", join_authorised_via_users_server=carol.user_id)
    assert room.state[("m.room.member", carol.user_id)].event_id in event.auth_event_ids
    room.check(cosign(event, carol))


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
@pytest.mark.parametrize("previous", [None, "leave", "knock"])
def test_5_3_5_2_missing_authoriser_rejected(version, join_rule, previous):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    if previous == "leave":
        room.invite(room.creator, bob)
        room.send_member(bob, bob, "leave")
    elif previous == "knock" and join_rule == "knock_restricted":
        room.send_member(bob, bob, "knock")
    with pytest.raises(AuthError, match="join without join_authorised_via_users_server"):
        room.check(room.member(bob, bob, "join"))


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
@pytest.mark.parametrize("authoriser_membership", [None, "invite", "leave", "ban", "knock"])
def test_5_3_5_2_authoriser_not_joined_rejected(version, join_rule, authoriser_membership):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, join_rule=join_rule)
    if authoriser_membership == "knock":
        room.set_join_rule(room.creator, "knock")
        room.send_member(carol, carol, "knock")
        room.set_join_rule(room.creator, join_rule)
    elif authoriser_membership is not None:
        room.invite(room.creator, carol)
        if authoriser_membership != "invite":
            room.join(carol)
            room.send_member(room.creator, carol, authoriser_membership)
    event = room.member(bob, bob, "join", join_authorised_via_users_server=carol.user_id)
    with pytest.raises(AuthError, match="join_authorised_via_users_server is not joined"):
        room.check(cosign(event, carol))


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_5_3_5_2_authoriser_without_invite_power_rejected(version, join_rule):
    bob, carol, dave = new_user("bob"), new_user("carol"), new_user("dave")
    room = new_room(
        version,
        join_rule=join_rule,
        members=(carol, dave),
        power_users={dave.user_id: 50},
        invite=50,
    )
    event = room.member(bob, bob, "join", join_authorised_via_users_server=carol.user_id)
    with pytest.raises(AuthError, match="join_authorised_via_users_server may not invite"):
        room.check(cosign(event, carol))
    event = room.member(bob, bob, "join", join_authorised_via_users_server=dave.user_id)
    room.check(cosign(event, dave))


def test_5_3_5_2_v12_creator_authorises_without_power_levels_entry():
    bob = new_user("bob")
    room = new_room(ROOM_V12, join_rule="restricted", invite=100)
    assert room.creator.user_id not in room.state[("m.room.power_levels", "")].content["users"]
    event = room.member(bob, bob, "join", join_authorised_via_users_server=room.creator.user_id)
    room.check(cosign(event, room.creator))


@versions
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_restricted_join_rule_allow_list_is_not_the_servers_business(version, join_rule):
    # The allow conditions are checked by the authorising server, not the rules.
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    room.set_join_rule(
        room.creator,
        join_rule,
        allow=[{"type": "m.room_membership", "room_id": "!space:example.org"}],
    )
    event = room.member(bob, bob, "join", join_authorised_via_users_server=room.creator.user_id)
    room.check(cosign(event, room.creator))


@versions
def test_5_3_6_public_allowed(version):
    bob = new_user("bob")
    room = new_room(version, join_rule="public")
    room.join(bob)
    room.send_member(bob, bob, "leave")
    room.join(bob)


@versions
@pytest.mark.parametrize("join_rule", ["private", "Public", "", "foo"])
def test_5_3_7_other_join_rules_rejected(version, join_rule):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    with pytest.raises(AuthError, match="does not allow joining"):
        room.check(room.member(bob, bob, "join"))


@versions
@pytest.mark.parametrize("content", [{}, {"join_rule": 5}, {"join_rule": None}])
def test_5_3_7_malformed_join_rules_rejected(version, content):
    bob = new_user("bob")
    room = new_room(version, join_rule="public")
    room.send(room.creator, "m.room.join_rules", content, "")
    with pytest.raises(AuthError, match="does not allow joining"):
        room.check(room.member(bob, bob, "join"))


# -- 5.4: invite ---------------------------------------------------------------------------


@versions
def test_5_4_invite_allowed(version):
    bob = new_user("bob")
    room = new_room(version, join_rule="invite")
    room.invite(room.creator, bob)
    room.invite(room.creator, bob)  # re-inviting an invited user is fine


@versions
def test_5_4_2_inviter_must_be_joined(version):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, join_rule="invite")
    room.invite(room.creator, carol)
    with pytest.raises(AuthError, match="invite: sender is not joined"):
        room.check(room.member(carol, bob, "invite"))
    with pytest.raises(AuthError, match="invite: sender is not joined"):
        room.check(room.member(new_user("dave"), bob, "invite"))


@versions
@pytest.mark.parametrize("membership", ["join", "ban"])
def test_5_4_3_target_joined_or_banned_rejected(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="public", members=(bob,))
    if membership == "ban":
        room.send_member(room.creator, bob, "ban")
    with pytest.raises(AuthError, match=f"target user's membership is {membership}"):
        room.check(room.member(room.creator, bob, "invite"))


@versions
@pytest.mark.parametrize("membership", ["leave", "knock"])
def test_5_4_3_target_left_or_knocking_may_be_invited(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="knock")
    room.send_member(bob, bob, "knock")
    if membership == "leave":
        room.send_member(bob, bob, "leave")
    room.invite(room.creator, bob)


@versions
def test_5_4_4_invite_level(version):
    bob, carol, dave = new_user("bob"), new_user("carol"), new_user("dave")
    room = new_room(version, members=(bob, carol), power_users={carol.user_id: 50}, invite=50)
    with pytest.raises(AuthError, match="invite: sender's power level is below invite"):
        room.check(room.member(bob, dave, "invite"))
    room.invite(carol, dave)


# -- 5.4.1: third-party invites ------------------------------------------------------------


_VALID = object()  # TPI.invite: a correctly signed third_party_invite


class TPI:
    """A room with a pending third-party invite from the creator."""

    def __init__(self, version, *, single=True, many=False, sender=None):
        self.id_key = SigningKey.generate()
        self.bob = new_user("bob")
        self.room = new_room(version, join_rule="invite")
        self.token = "tok" + self.id_key.server_name[:8]
        self.tpi = self.room.send(
            sender or self.room.creator,
            "m.room.third_party_invite",
            third_party_invite_content(self.id_key, single=single, many=many),
            self.token,
        )

    def invite(self, sender=None, target=None, third_party_invite=_VALID, **signed_kw):
        sender = sender or self.room.creator
        target = target or self.bob
        if third_party_invite is _VALID:
            third_party_invite = {
                "display_name": "b...@example.org",
                "signed": signed_block(self.id_key, target.user_id, self.token, **signed_kw),
            }
        return self.room.member(sender, target, "invite", third_party_invite=third_party_invite)


@versions
@pytest.mark.parametrize("keys", ["public_key", "public_keys", "both"])
def test_5_4_1_7_signed_by_invite_key_allowed(version, keys):
    t = TPI(version, single=keys != "public_keys", many=keys != "public_key")
    event = t.invite()
    assert t.tpi.event_id in event.auth_event_ids
    t.room.check(event)


@versions
def test_5_4_1_7_does_not_need_the_sender_joined(version):
    # The invite's sender must be the third-party invite's sender (5.4.1.6),
    # whose power was checked when it was sent; nothing else is checked.
    t = TPI(version)
    t.room.send_member(t.room.creator, t.room.creator, "leave")
    t.room.check(t.invite())


@versions
def test_5_4_1_1_banned_target_rejected(version):
    t = TPI(version)
    t.room.invite(t.room.creator, t.bob)
    t.room.join(t.bob)
    t.room.send_member(t.room.creator, t.bob, "ban")
    with pytest.raises(AuthError, match="invite: target user is banned"):
        t.room.check(t.invite())


@versions
@pytest.mark.parametrize(
    "third_party_invite", [{}, {"display_name": "x"}, "x", None, {"signed": 5}]
)
def test_5_4_1_2_no_signed_rejected(version, third_party_invite):
    t = TPI(version)
    with pytest.raises(AuthError, match="third_party_invite has no signed object"):
        t.room.check(t.invite(third_party_invite=third_party_invite))


@versions
@pytest.mark.parametrize("drop", ["mxid", "token"])
def test_5_4_1_3_signed_without_mxid_or_token_rejected(version, drop):
    t = TPI(version)
    signed = {"mxid": t.bob.user_id, "token": t.token}
    del signed[drop]
    sign_json(signed, "id.example.org", t.id_key)
    event = t.invite(third_party_invite={"signed": signed})
    with pytest.raises(AuthError, match="signed lacks mxid or token"):
        check_auth_rules(event, t.room.state)


@versions
def test_5_4_1_4_mxid_must_be_the_target(version):
    t = TPI(version)
    carol = new_user("carol")
    third_party_invite = {"signed": signed_block(t.id_key, carol.user_id, t.token)}
    with pytest.raises(AuthError, match="mxid does not match state_key"):
        t.room.check(t.invite(third_party_invite=third_party_invite))


@versions
def test_5_4_1_5_unknown_token_rejected(version):
    t = TPI(version)
    third_party_invite = {"signed": signed_block(t.id_key, t.bob.user_id, "other-token")}
    with pytest.raises(AuthError, match="no m.room.third_party_invite for the token"):
        t.room.check(t.invite(third_party_invite=third_party_invite))
    # A non-string token names no invite either.
    signed = sign_json({"mxid": t.bob.user_id, "token": 5}, "id.example.org", t.id_key)
    with pytest.raises(AuthError, match="no m.room.third_party_invite for the token"):
        check_auth_rules(t.invite(third_party_invite={"signed": signed}), t.room.state)


@versions
def test_5_4_1_6_sender_must_match_the_invites_sender(version):
    t = TPI(version)
    carol = new_user("carol")
    t.room.invite(t.room.creator, carol)
    t.room.join(carol)
    with pytest.raises(AuthError, match="sender did not send the m.room.third_party_invite"):
        t.room.check(t.invite(sender=carol))


@versions
def test_5_4_1_8_signed_by_another_key_rejected(version):
    t = TPI(version)
    other_key = SigningKey.generate()
    third_party_invite = {"signed": signed_block(other_key, t.bob.user_id, t.token)}
    with pytest.raises(AuthError, match="not signed by the invite's keys"):
        t.room.check(t.invite(third_party_invite=third_party_invite))


@versions
def test_5_4_1_8_tampered_signed_rejected(version):
    t = TPI(version)
    signed = signed_block(t.id_key, t.bob.user_id, t.token)
    signed["sender"] = "@mallory:example.org"
    with pytest.raises(AuthError, match="not signed by the invite's keys"):
        t.room.check(t.invite(third_party_invite={"signed": signed}))


@versions
@pytest.mark.parametrize(
    "signatures",
    [
        None,
        "x",
        {},
        {"id.example.org": "x"},
        {"id.example.org": {}},
        {"id.example.org": {"ed25519:0": 5}},
        {"id.example.org": {"ed25519:0": "!!!"}},
        {"id.example.org": {"curve25519:0": "AAAA"}},
    ],
)
def test_5_4_1_8_malformed_signatures_rejected(version, signatures):
    t = TPI(version)
    signed = {"mxid": t.bob.user_id, "token": t.token}
    if signatures is not None:
        signed["signatures"] = signatures
    with pytest.raises(AuthError, match="not signed by the invite's keys"):
        t.room.check(t.invite(third_party_invite={"signed": signed}))


@versions
@pytest.mark.parametrize(
    "content",
    [
        {},
        {"public_key": 5},
        {"public_key": "!!"},
        {"public_key": "AAAA"},
        {"public_keys": "x"},
        {"public_keys": [5, {"public_key": None}]},
    ],
)
def test_5_4_1_8_unusable_invite_keys_rejected(version, content):
    t = TPI(version)
    t.room.send(t.room.creator, "m.room.third_party_invite", content, t.token)
    with pytest.raises(AuthError, match="not signed by the invite's keys"):
        t.room.check(t.invite())


# -- 5.5: leave ----------------------------------------------------------------------------


@versions
@pytest.mark.parametrize("membership", ["join", "invite", "knock"])
def test_5_5_1_leave_self_allowed(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="knock")
    if membership == "knock":
        room.send_member(bob, bob, "knock")
    else:
        room.invite(room.creator, bob)
        if membership == "join":
            room.join(bob)
    room.send_member(bob, bob, "leave")


@versions
@pytest.mark.parametrize("membership", [None, "leave", "ban"])
def test_5_5_1_leave_self_rejected(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="public")
    if membership is not None:
        room.join(bob)
        room.send_member(room.creator if membership == "ban" else bob, bob, membership)
    with pytest.raises(AuthError, match=f"cannot leave with membership {membership}"):
        room.check(room.member(bob, bob, "leave"))


@versions
def test_5_5_2_kicker_must_be_joined(version):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, members=(bob,), power_users={carol.user_id: 100})
    room.invite(room.creator, carol)
    with pytest.raises(AuthError, match="leave: sender is not joined"):
        room.check(room.member(carol, bob, "leave"))
    room.join(carol)
    room.send_member(carol, bob, "leave")


@versions
def test_5_5_3_unban_needs_ban_level(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 60}, ban=75, kick=50)
    room.send_member(room.creator, bob, "ban")
    with pytest.raises(AuthError, match="below ban \\(unban\\)"):
        room.check(room.member(mod, bob, "leave"))
    room.send_member(room.creator, bob, "leave")


@versions
def test_5_5_3_unban_needs_kick_level_too(version):
    # "To unban somebody, you must have power level greater than or equal to
    # both the kick and ban levels".
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 60}, ban=50, kick=75)
    room.send_member(room.creator, bob, "ban")
    with pytest.raises(AuthError, match="leave: sender may not kick the target"):
        room.check(room.member(mod, bob, "leave"))


@versions
def test_5_5_4_kick_allowed(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 50})
    room.send_member(mod, bob, "leave")
    room.invite(room.creator, bob)
    room.send_member(mod, bob, "leave")  # kicking out an invite (revoking it)


@versions
def test_5_5_5_kick_below_kick_level_rejected(version):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, members=(bob, carol), power_users={carol.user_id: 40})
    with pytest.raises(AuthError, match="leave: sender may not kick the target"):
        room.check(room.member(carol, bob, "leave"))


@versions
@pytest.mark.parametrize("target_level", [50, 60])
def test_5_5_5_kick_equal_or_higher_rejected(version, target_level):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(
        version, members=(bob, mod), power_users={mod.user_id: 50, bob.user_id: target_level}
    )
    with pytest.raises(AuthError, match="leave: sender may not kick the target"):
        room.check(room.member(mod, bob, "leave"))


# -- 5.6: ban --------------------------------------------------------------------------------


@versions
@pytest.mark.parametrize("target_membership", [None, "join", "invite", "leave"])
def test_5_6_2_ban_allowed(version, target_membership):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(mod,), power_users={mod.user_id: 50})
    if target_membership is not None:
        room.invite(room.creator, bob)
        if target_membership != "invite":
            room.join(bob)
        if target_membership == "leave":
            room.send_member(bob, bob, "leave")
    room.send_member(mod, bob, "ban")
    room.send_member(mod, bob, "ban")  # banning again


@versions
def test_5_6_1_banner_must_be_joined(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 100})
    room.send_member(mod, mod, "leave")
    with pytest.raises(AuthError, match="ban: sender is not joined"):
        room.check(room.member(mod, bob, "ban"))


@versions
def test_5_6_3_below_ban_level_rejected(version):
    bob, carol = new_user("bob"), new_user("carol")
    room = new_room(version, members=(bob, carol), power_users={carol.user_id: 49})
    with pytest.raises(AuthError, match="ban: sender may not ban the target"):
        room.check(room.member(carol, bob, "ban"))


@versions
def test_5_6_3_target_not_below_rejected(version):
    bob, mod = new_user("bob"), new_user("mod")
    room = new_room(version, members=(bob, mod), power_users={mod.user_id: 50, bob.user_id: 50})
    with pytest.raises(AuthError, match="ban: sender may not ban the target"):
        room.check(room.member(mod, bob, "ban"))
    # Nor the creator, whose level is 100 (v10/v11) or infinite (v12).
    with pytest.raises(AuthError, match="ban: sender may not ban the target"):
        room.check(room.member(mod, room.creator, "ban"))


def test_5_6_v12_creators_cannot_ban_or_kick_each_other():
    alice, bob, admin = new_user("alice"), new_user("bob"), new_user("admin")
    room = Room(ROOM_V12, alice, create_content={"additional_creators": [bob.user_id]})
    room.join(alice)
    room.set_power_levels(alice, {"users": {admin.user_id: 100}})
    room.set_join_rule(alice, "public")
    room.join(bob)
    room.join(admin)
    for sender, target in [(alice, bob), (bob, alice), (admin, alice)]:
        for membership in ("ban", "leave"):
            with pytest.raises(AuthError, match="may not"):
                room.check(room.member(sender, target, membership))
    room.check(room.member(bob, admin, "ban"))
    room.check(room.member(alice, admin, "leave"))


# -- 5.7: knock ------------------------------------------------------------------------------


@versions
@pytest.mark.parametrize("join_rule", ["knock", "knock_restricted"])
def test_5_7_3_knock_allowed(version, join_rule):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    room.send_member(bob, bob, "knock")
    room.send_member(bob, bob, "knock")  # knocking again
    room.send_member(bob, bob, "leave")
    room.send_member(bob, bob, "knock")  # after rescinding


@versions
@pytest.mark.parametrize("join_rule", ["public", "invite", "restricted", "private"])
def test_5_7_1_knock_needs_knock_rule(version, join_rule):
    bob = new_user("bob")
    room = new_room(version, join_rule=join_rule)
    with pytest.raises(AuthError, match="join rule does not allow knocking"):
        room.check(room.member(bob, bob, "knock"))


@versions
def test_5_7_2_knock_for_someone_else_rejected(version):
    bob = new_user("bob")
    room = new_room(version, join_rule="knock")
    with pytest.raises(AuthError, match="knock: sender does not match state_key"):
        room.check(room.member(room.creator, bob, "knock"))


@versions
@pytest.mark.parametrize("membership", ["ban", "invite", "join"])
def test_5_7_4_knock_while_banned_invited_or_joined_rejected(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="knock")
    room.invite(room.creator, bob)
    if membership != "invite":
        room.join(bob)
    if membership == "ban":
        room.send_member(room.creator, bob, "ban")
    with pytest.raises(AuthError, match="knock: sender is banned, invited or joined"):
        room.check(room.member(bob, bob, "knock"))


# -- 5.8: unknown memberships ----------------------------------------------------------------


@versions
@pytest.mark.parametrize("membership", ["foo", "JOIN", "", 5, None, ["join"]])
def test_5_8_unknown_membership_rejected(version, membership):
    bob = new_user("bob")
    room = new_room(version, join_rule="public")
    event = room.member(bob, bob, "join")
    event = with_content(event, {"membership": membership})
    with pytest.raises(AuthError, match="unknown membership"):
        check_auth_rules(event, room.state)


# -- rule 4: m.federate -------------------------------------------------------------------------


@versions
def test_4_unfederated_room_keeps_other_servers_out(version):
    alice = new_user("alice")
    peer, stranger = alice.peer("peer"), new_user("stranger")
    room = new_room(version, creator=alice, create_content={"m.federate": False})
    room.join(peer)
    with pytest.raises(AuthError, match="m.federate"):
        room.check(room.member(stranger, stranger, "join"))
    # Rule 4 applies to every event, not only memberships.
    with pytest.raises(AuthError, match="m.federate"):
        room.check_against_state(room.build(stranger, "m.room.message", {}))


@versions
@pytest.mark.parametrize("federate", [True, "false", 0, None])
def test_4_federated_unless_exactly_false(version, federate):
    stranger = new_user("stranger")
    room = new_room(version, create_content={"m.federate": federate})
    room.join(stranger)
    room.send(stranger, "m.room.message", {"body": "hi"})
