"""Rule 1 (m.room.create), v12's rule 2 (room ID names the create event),
and the user ID grammar the rules use."""

from __future__ import annotations

import pytest

from p2pserver.rooms import auth as auth_module
from p2pserver.rooms import validation
from p2pserver.rooms.auth import check_auth_events, check_auth_rules, create_event_id_for_room
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12
from tests.rooms.authkit import Room, forge, new_room, new_user, versions

# -- rule 1: the create event ------------------------------------------------------


@versions
def test_create_allowed(version):
    room = Room(version, new_user("alice"))
    check_auth_rules(room.create, {})
    assert check_auth_events(room.create, [], set()) == {}


@versions
def test_create_1_1_prev_events_rejected(version):
    room = Room(version, new_user("alice"))
    other = Room(version, new_user("bob")).create
    bad = forge(room.create, prev_events=[other.event_id])
    with pytest.raises(AuthError, match="prev_events"):
        check_auth_rules(bad, {})


def test_create_1_2_v12_room_id_rejected():
    room = Room(ROOM_V12, new_user("alice"))
    assert "room_id" not in room.create.pdu
    bad = forge(room.create, room_id="!abc:example.org")
    with pytest.raises(AuthError, match="must not have a room_id"):
        check_auth_rules(bad, {})


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_create_1_2_room_id_domain_must_be_senders(version):
    alice = new_user("alice")
    room = Room(version, alice)
    assert room.room_id.endswith(":" + alice.server)
    check_auth_rules(room.create, {})
    bad = forge(room.create, room_id="!abc:elsewhere.example.org")
    with pytest.raises(AuthError, match="room_id domain"):
        check_auth_rules(bad, {})
    missing = forge(room.create, room_id=None)
    with pytest.raises(AuthError, match="room_id domain"):
        check_auth_rules(missing, {})


@versions
@pytest.mark.parametrize("room_version", ["10", "11", "12"])
def test_create_1_3_recognised_room_version_allowed(version, room_version):
    room = Room(version, new_user("alice"), create_content={"room_version": room_version})
    check_auth_rules(room.create, {})


@versions
def test_create_1_3_absent_room_version_allowed(version):
    room = Room(version, new_user("alice"))
    check_auth_rules(
        forge(
            room.create,
            content={k: v for k, v in room.create.content.items() if k != "room_version"},
        ),
        {},
    )


@versions
@pytest.mark.parametrize("room_version", ["9", "13", "foo", "", 11, None, ["11"]])
def test_create_1_3_unrecognised_room_version_rejected(version, room_version):
    room = Room(version, new_user("alice"), create_content={"room_version": room_version})
    with pytest.raises(AuthError, match="unrecognised room_version"):
        check_auth_rules(room.create, {})


def test_create_1_4_v10_requires_creator():
    room = Room(ROOM_V10, new_user("alice"))
    content = dict(room.create.content)
    del content["creator"]
    with pytest.raises(AuthError, match="no creator"):
        check_auth_rules(forge(room.create, content=content), {})


@pytest.mark.parametrize("version", [ROOM_V11, ROOM_V12], ids=["11", "12"])
def test_create_1_4_v11_needs_no_creator(version):
    room = Room(version, new_user("alice"))
    assert "creator" not in room.create.content
    check_auth_rules(room.create, {})


def test_create_1_4_v12_additional_creators_allowed():
    bob, carol = new_user("bob"), new_user("carol")
    room = Room(
        ROOM_V12,
        new_user("alice"),
        create_content={"additional_creators": [bob.user_id, carol.user_id]},
    )
    check_auth_rules(room.create, {})
    empty = Room(ROOM_V12, new_user("alice"), create_content={"additional_creators": []})
    check_auth_rules(empty.create, {})


@pytest.mark.parametrize(
    "value",
    [
        "@bob:example.org",  # not an array
        {"@bob:example.org": True},
        None,
        ["@bob:example.org", 5],
        ["bob"],
        ["@bob"],
        ["@bob:"],
        ["@bob:exa mple.org"],
        ["@bo\x00b:example.org"],
        ["@" + "b" * 250 + ":example.org"],  # over 255 bytes
    ],
)
def test_create_1_4_v12_bad_additional_creators_rejected(value):
    room = Room(ROOM_V12, new_user("alice"), create_content={"additional_creators": value})
    with pytest.raises(AuthError, match="additional_creators"):
        check_auth_rules(room.create, {})


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_additional_creators_means_nothing_before_v12(version):
    room = Room(version, new_user("alice"), create_content={"additional_creators": "junk"})
    check_auth_rules(room.create, {})


# -- v12 rule 2: the room ID is the create event's ID --------------------------------


def test_v12_room_id_is_create_event_id():
    room = new_room(ROOM_V12)
    assert room.room_id == "!" + room.create.event_id[1:]
    assert create_event_id_for_room(room.room_id) == room.create.event_id


def test_v12_rule_2_room_id_of_another_create_rejected():
    room = new_room(ROOM_V12)
    other = Room(ROOM_V12, room.creator)
    event = room.build(room.creator, "m.room.message", {"body": "hi"})
    state = dict(room.state)
    state[("m.room.create", "")] = other.create
    with pytest.raises(AuthError, match="rule 2"):
        check_auth_rules(event, state)
    check_auth_rules(event, room.state)


def test_v12_rule_2_room_id_not_a_room_id_rejected():
    room = new_room(ROOM_V12)
    event = room.build(
        room.creator, "m.room.message", {"body": "hi"}, room_id="$" + room.room_id[1:]
    )
    with pytest.raises(AuthError, match="rule 2"):
        check_auth_rules(event, room.state)
    with pytest.raises(AuthError, match="rule 2"):
        check_auth_events(event, room.auth_events_of(event), set())


def test_v12_rule_2_rejected_create_event_rejected():
    room = new_room(ROOM_V12)
    event = room.build(room.creator, "m.room.message", {"body": "hi"})
    check_auth_events(event, room.auth_events_of(event), set())
    with pytest.raises(AuthError, match="rule 2: the room's create event"):
        check_auth_events(event, room.auth_events_of(event), {room.create.event_id})


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["10", "11"])
def test_create_of_another_room_rejected_before_v12(version):
    room = new_room(version)
    other = Room(version, room.creator)
    event = room.build(room.creator, "m.room.message", {"body": "hi"})
    state = dict(room.state)
    state[("m.room.create", "")] = other.create
    with pytest.raises(AuthError, match="another room"):
        check_auth_rules(event, state)


@versions
def test_no_create_event_in_state_rejected(version):
    room = new_room(version)
    event = room.build(room.creator, "m.room.message", {"body": "hi"})
    state = {k: v for k, v in room.state.items() if k != ("m.room.create", "")}
    with pytest.raises(AuthError, match="no m.room.create"):
        check_auth_rules(event, state)


@versions
def test_event_without_room_id_rejected(version):
    room = new_room(version)
    event = forge(room.build(room.creator, "m.room.message", {"body": "hi"}), room_id=None)
    with pytest.raises(AuthError, match="no room_id"):
        check_auth_rules(event, room.state)
    with pytest.raises(AuthError, match="no room_id"):
        check_auth_events(event, room.auth_events_of(event), set())


# -- user IDs --------------------------------------------------------------------------


def test_user_ids_are_validated_like_senders():
    # Rule 1.4: "the same user ID validation applied to sender".
    assert auth_module.is_valid_user_id is validation.is_valid_user_id


@pytest.mark.parametrize(
    "user_id",
    [
        "@bob:example.org",
        "@Bö b:example.org",
        "@:example.org",
        "@bob",
        "bob:example.org",
        "@bob:exa_mple.org",
        "@bob:[::1]:8448",
        "@" + "b" * 300 + ":x.org",
    ],
)
def test_additional_creators_accepted_iff_a_valid_sender(user_id):
    room = Room(ROOM_V12, new_user("alice"), create_content={"additional_creators": [user_id]})
    if validation.is_valid_user_id(user_id):
        check_auth_rules(room.create, {})
    else:
        with pytest.raises(AuthError, match="additional_creators"):
            check_auth_rules(room.create, {})
