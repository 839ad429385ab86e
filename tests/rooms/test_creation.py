"""Tests for p2pserver.rooms.creation (createRoom's initial events)."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.auth import check_auth_events, check_auth_rules
from p2pserver.rooms.base64 import encode_base64
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.creation import PRESETS, CreatedRoom, create_room_events
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.hashing import compute_content_hash
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey, verify_event_signature

KEY = SigningKey.from_seed(bytes(range(32)))
SERVER = KEY.server_name
ALICE = f"@alice:{SERVER}"
BOB = "@bob:example.org"
CAROL = "@carol:example.net"
VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]
PRESET_NAMES = ["private_chat", "trusted_private_chat", "public_chat"]
TS = 1_700_000_000_000


def create(
    request: dict[str, Any] | None = None,
    version: RoomVersion | None = None,
    **kwargs: Any,
) -> CreatedRoom:
    """Create a room as Alice, with ``version`` as the server default."""
    kwargs.setdefault("rng", random.Random(7))
    return create_room_events(
        version,
        creator=ALICE,
        signing_key=KEY,
        request={} if request is None else request,
        server_name=SERVER,
        origin_server_ts=TS,
        **kwargs,
    )


def keys_of(room: CreatedRoom) -> list[tuple[str, str | None]]:
    return [(e.type, e.state_key) for e in room.events]


def state_event(room: CreatedRoom, event_type: str, state_key: str = "") -> Event:
    event_id = room.state[(event_type, state_key)]
    (event,) = [e for e in room.events if e.event_id == event_id]
    return event


def error_of(request: Any, version: RoomVersion | None = None) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        create(request, version)
    return info.value


# -- presets x room versions ----------------------------------------------------

EXPECTED_PRESET_STATE = {
    "private_chat": ("invite", "shared", "can_join", 0),
    "trusted_private_chat": ("invite", "shared", "can_join", 0),
    "public_chat": ("public", "shared", "forbidden", 50),
}


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_preset_events_and_power_levels(version: RoomVersion, preset: str) -> None:
    room = create({"preset": preset, "room_version": version.identifier})
    assert room.room_version is version
    assert keys_of(room) == [
        ("m.room.create", ""),
        ("m.room.member", ALICE),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
    ]
    join_rule, history, guest, invite_level = EXPECTED_PRESET_STATE[preset]
    assert state_event(room, "m.room.join_rules").content == {"join_rule": join_rule}
    assert state_event(room, "m.room.history_visibility").content == {"history_visibility": history}
    assert state_event(room, "m.room.guest_access").content == {"guest_access": guest}
    assert state_event(room, "m.room.member", ALICE).content == {"membership": "join"}

    power_levels = state_event(room, "m.room.power_levels").content
    v12 = version is ROOM_V12
    assert power_levels == {
        "users": {} if v12 else {ALICE: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 150 if v12 else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": invite_level,
    }
    # v12: tombstoning must need more than ordinary state (MSC4289).
    if v12:
        assert power_levels["events"]["m.room.tombstone"] > power_levels["state_default"]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_create_event_content(version: RoomVersion) -> None:
    room = create(
        {
            "room_version": version.identifier,
            "creation_content": {
                "m.federate": False,
                "type": "m.space",
                "creator": "@mallory:evil.example",
                "room_version": "1",
            },
        }
    )
    create_event = room.events[0]
    expected: dict[str, Any] = {
        "m.federate": False,
        "type": "m.space",
        "room_version": version.identifier,
    }
    if version is ROOM_V10:
        expected["creator"] = ALICE  # the server overwrites `creator`
    assert create_event.content == expected
    assert create_event.sender == ALICE
    assert create_event.prev_event_ids == ()
    assert create_event.auth_event_ids == ()


@pytest.mark.parametrize(
    "visibility,preset",
    [("public", "public_chat"), ("private", "private_chat"), (None, "private_chat")],
)
def test_preset_defaults_from_visibility(visibility: str | None, preset: str) -> None:
    request = {} if visibility is None else {"visibility": visibility}
    room = create(request)
    join_rule = EXPECTED_PRESET_STATE[preset][0]
    assert state_event(room, "m.room.join_rules").content == {"join_rule": join_rule}
    assert room.visibility == (visibility or "private")


def test_explicit_preset_beats_visibility() -> None:
    room = create({"visibility": "public", "preset": "private_chat"})
    assert state_event(room, "m.room.join_rules").content == {"join_rule": "invite"}
    assert room.visibility == "public"


# -- room versions and room IDs ---------------------------------------------------


def test_default_room_version_is_12() -> None:
    room = create()
    assert room.room_version is ROOM_V12
    assert room.events[0].content["room_version"] == "12"


def test_server_default_applies_and_request_overrides_it() -> None:
    assert create({}, ROOM_V10).room_version is ROOM_V10
    assert create({"room_version": "11"}, ROOM_V10).room_version is ROOM_V11
    assert create({"room_version": "12"}, ROOM_V10).room_version is ROOM_V12


def test_v12_room_id_is_create_event_reference_hash() -> None:
    room = create({"name": "hashes"})
    create_event = room.events[0]
    assert "room_id" not in create_event.pdu
    # Recompute the reference hash from the PDU, independently of hashing.py.
    stripped = redact(create_event.pdu, ROOM_V12)
    stripped.pop("signatures", None)
    stripped.pop("unsigned", None)
    digest = hashlib.sha256(encode_canonical_json(stripped)).digest()
    assert room.room_id == "!" + encode_base64(digest, urlsafe=True)
    assert create_event.event_id == "$" + room.room_id[1:]
    assert ":" not in room.room_id
    for event in room.events[1:]:
        assert event.pdu["room_id"] == room.room_id
        assert create_event.event_id not in event.auth_event_ids  # v12 rule


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_pre_v12_room_id_is_random_and_local(version: RoomVersion) -> None:
    room = create({}, version, rng=random.Random(1))
    assert re.fullmatch(rf"![A-Za-z]{{18}}:{SERVER}", room.room_id)
    assert all(e.pdu["room_id"] == room.room_id for e in room.events)
    assert create({}, version, rng=random.Random(1)).room_id == room.room_id
    assert create({}, version, rng=random.Random(2)).room_id != room.room_id
    # Without an rng the OS's randomness is used.
    first = create({}, version, rng=None).room_id
    assert first != create({}, version, rng=None).room_id


def test_v12_room_id_depends_on_the_request() -> None:
    assert create({"creation_content": {"m.federate": False}}).room_id != create().room_id


# -- DAG shape: prev_events, depth, auth_events, signatures ---------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_events_form_a_signed_chain(version: RoomVersion) -> None:
    room = create({"invite": [BOB], "name": "n", "topic": "t", "room_alias_name": "chain"}, version)
    previous = None
    for depth, event in enumerate(room.events, start=1):
        assert event.depth == depth
        assert event.origin_server_ts == TS
        assert event.sender == ALICE
        assert event.prev_event_ids == (() if previous is None else (previous.event_id,))
        assert event.pdu["hashes"]["sha256"] == encode_base64(compute_content_hash(event.pdu))
        verify_event_signature(event.pdu, SERVER, version, {KEY.key_id: KEY.verify_key})
        previous = event
    assert len({e.event_id for e in room.events}) == len(room.events)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_auth_events_follow_the_selection_algorithm(version: RoomVersion) -> None:
    room = create({"invite": [BOB], "name": "n"}, version)
    ids = {(e.type, e.state_key): e.event_id for e in room.events}
    create_id = [] if version is ROOM_V12 else [ids[("m.room.create", "")]]
    power = ids[("m.room.power_levels", "")]
    alice = ids[("m.room.member", ALICE)]
    join_rules = ids[("m.room.join_rules", "")]
    expected = {
        ("m.room.create", ""): [],
        ("m.room.member", ALICE): create_id,
        ("m.room.power_levels", ""): [*create_id, alice],
        ("m.room.join_rules", ""): [*create_id, power, alice],
        ("m.room.name", ""): [*create_id, power, alice],
        ("m.room.member", BOB): [*create_id, power, alice, join_rules],
    }
    for event in room.events:
        key = (event.type, event.state_key)
        if key in expected:
            assert sorted(event.auth_event_ids) == sorted(expected[key]), key


def test_state_map_is_the_state_after_the_last_event() -> None:
    room = create({"invite": [BOB, CAROL], "topic": "t"})
    assert room.state == {(e.type, e.state_key): e.event_id for e in room.events}
    assert len(room.state) == len(room.events)  # every event sets a new key


def assert_every_event_is_authorised(room: CreatedRoom) -> None:
    """Replay the room: each event passes the auth rules against the full
    state before it, and against its own auth_events as a receiver sees it."""
    state: dict[StateKey, Event] = {}
    by_id: dict[str, Event] = {}
    for event in room.events:
        check_auth_rules(event, state)
        listed = [by_id[event_id] for event_id in event.auth_event_ids]
        auth_map = check_auth_events(event, [*listed, room.events[0]], ())
        check_auth_rules(event, auth_map)
        assert event.state_key is not None
        state[(event.type, event.state_key)] = event
        by_id[event.event_id] = event


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
@pytest.mark.parametrize("preset", [*PRESET_NAMES, None])
def test_every_event_passes_the_auth_rules(version: RoomVersion, preset: str | None) -> None:
    request: dict[str, Any] = {
        "room_version": version.identifier,
        "room_alias_name": "auth",
        "name": "n",
        "topic": "t",
        "invite": [BOB, CAROL],
        "is_direct": True,
        "initial_state": [
            {"type": "m.room.avatar", "content": {"url": "mxc://a/b"}},
            {
                "type": "m.room.member",
                "state_key": "@dave:example.com",
                "content": {"membership": "invite"},
            },
        ],
        "creation_content": {"m.federate": False},
    }
    if preset is not None:
        request["preset"] = preset
    assert_every_event_is_authorised(create(request))


def test_v12_creators_keep_power_that_v11_creators_lose() -> None:
    # A state_default above 100 locks a v11 creator out; a v12 creator's
    # power is infinite (MSC4289).
    request = {"power_level_content_override": {"state_default": 1000}}
    room = create(request, ROOM_V12)
    assert_every_event_is_authorised(room)
    err = error_of(request, ROOM_V11)
    assert err.errcode == "M_INVALID_ROOM_STATE"
    assert "m.room.join_rules" in err.message


@pytest.mark.parametrize(
    "version,request_body",
    [
        # The creator demotes themselves, then cannot send the preset events.
        (ROOM_V10, {"power_level_content_override": {"users": {ALICE: 0}}}),
        (
            ROOM_V11,
            {"initial_state": [{"type": "m.room.power_levels", "content": {}}], "name": "x"},
        ),
        # v12: creators may not appear in users (rule 10.4) ...
        (ROOM_V12, {"power_level_content_override": {"users": {ALICE: 100}}}),
        # ... including invitees made creators by trusted_private_chat.
        (
            ROOM_V12,
            {
                "preset": "trusted_private_chat",
                "invite": [BOB],
                "power_level_content_override": {"users": {BOB: 50}},
            },
        ),
        # Nobody can be joined on someone else's behalf.
        (
            ROOM_V11,
            {
                "initial_state": [
                    {"type": "m.room.member", "state_key": BOB, "content": {"membership": "join"}}
                ]
            },
        ),
        # Inviting someone initial_state already invited and then banned.
        (
            ROOM_V12,
            {
                "invite": [BOB],
                "initial_state": [
                    {"type": "m.room.member", "state_key": BOB, "content": {"membership": "ban"}}
                ],
            },
        ),
        # Power levels that are not integers.
        (ROOM_V11, {"power_level_content_override": {"ban": "50"}}),
        (ROOM_V12, {"power_level_content_override": {"users": {"not-a-user": 1}}}),
    ],
)
def test_unauthorisable_requests_are_invalid_room_state(
    version: RoomVersion, request_body: dict[str, Any]
) -> None:
    assert error_of(request_body, version).errcode == "M_INVALID_ROOM_STATE"


# -- options ---------------------------------------------------------------------


def test_full_request_order() -> None:
    room = create(
        {
            "preset": "public_chat",
            "room_alias_name": "pub",
            "name": "The Pub",
            "topic": "Happy hour",
            "initial_state": [
                {"type": "m.room.avatar", "content": {"url": "mxc://a/b"}},
                {"type": "org.example.x", "state_key": "k", "content": {"v": 1}},
            ],
            "invite": [BOB, CAROL],
        }
    )
    assert keys_of(room) == [
        ("m.room.create", ""),
        ("m.room.member", ALICE),
        ("m.room.power_levels", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
        ("m.room.avatar", ""),
        ("org.example.x", "k"),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.member", BOB),
        ("m.room.member", CAROL),
    ]


def test_name_and_topic() -> None:
    room = create({"name": "Room", "topic": "All about *this*"})
    assert state_event(room, "m.room.name").content == {"name": "Room"}
    assert state_event(room, "m.room.topic").content == {
        "topic": "All about *this*",
        "m.topic": {"m.text": [{"mimetype": "text/plain", "body": "All about *this*"}]},
    }


def test_empty_name_is_still_sent() -> None:
    room = create({"name": ""})
    assert state_event(room, "m.room.name").content == {"name": ""}


def test_room_alias_name() -> None:
    room = create({"room_alias_name": "thepub"})
    assert room.alias == f"#thepub:{SERVER}"
    assert state_event(room, "m.room.canonical_alias").content == {"alias": room.alias}
    assert create().alias is None
    assert ("m.room.canonical_alias", "") not in create().state


@pytest.mark.parametrize("is_direct", [True, False, None])
def test_invites_and_is_direct(is_direct: bool | None) -> None:
    request: dict[str, Any] = {"invite": [BOB, CAROL, BOB]}
    if is_direct is not None:
        request["is_direct"] = is_direct
    room = create(request)
    invites = [e for e in room.events if e.membership == "invite"]
    assert [e.state_key for e in invites] == [BOB, CAROL]  # repeats dropped, order kept
    expected = (
        {"membership": "invite", "is_direct": True} if is_direct else {"membership": "invite"}
    )
    assert all(e.content == expected for e in invites)
    assert room.events[-2:] == tuple(invites)


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_trusted_private_chat_invitees_get_creator_level_before_v12(
    version: RoomVersion,
) -> None:
    room = create({"preset": "trusted_private_chat", "invite": [BOB, CAROL]}, version)
    users = state_event(room, "m.room.power_levels").content["users"]
    assert users == {ALICE: 100, BOB: 100, CAROL: 100}
    assert "additional_creators" not in room.events[0].content


@pytest.mark.parametrize("preset", ["private_chat", "public_chat"])
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_other_presets_give_invitees_nothing(preset: str, version: RoomVersion) -> None:
    room = create({"preset": preset, "invite": [BOB]}, version)
    users = state_event(room, "m.room.power_levels").content["users"]
    assert BOB not in users
    assert "additional_creators" not in room.events[0].content


def test_trusted_private_chat_v12_invitees_become_additional_creators() -> None:
    room = create(
        {
            "preset": "trusted_private_chat",
            "invite": [BOB, CAROL],
            "creation_content": {"additional_creators": ["@dave:example.com", BOB]},
        }
    )
    assert room.events[0].content["additional_creators"] == [
        "@dave:example.com",
        BOB,
        CAROL,
    ]
    assert state_event(room, "m.room.power_levels").content["users"] == {}
    assert [e.state_key for e in room.events if e.membership == "invite"] == [BOB, CAROL]


def test_v12_additional_creators_pass_through_without_trusted_preset() -> None:
    room = create({"creation_content": {"additional_creators": [BOB]}, "invite": [CAROL]})
    assert room.events[0].content["additional_creators"] == [BOB]


def test_power_level_content_override_is_applied_on_top() -> None:
    override = {"invite": 100, "events": {"m.room.name": 0}, "notifications": {"room": 20}}
    room = create({"preset": "private_chat", "power_level_content_override": override}, ROOM_V11)
    content = state_event(room, "m.room.power_levels").content
    assert content["invite"] == 100
    assert content["events"] == {"m.room.name": 0}  # top-level keys replace
    assert content["notifications"] == {"room": 20}
    assert content["users"] == {ALICE: 100}
    assert content["ban"] == 50


def test_override_beats_trusted_preset_users() -> None:
    override = {"users": {ALICE: 100, BOB: 50}}
    room = create(
        {
            "preset": "trusted_private_chat",
            "invite": [BOB],
            "power_level_content_override": override,
        },
        ROOM_V10,
    )
    assert state_event(room, "m.room.power_levels").content["users"] == {ALICE: 100, BOB: 50}


def test_initial_state_beats_preset_and_alias() -> None:
    room = create(
        {
            "preset": "public_chat",
            "room_alias_name": "a",
            "initial_state": [
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}},
                {"type": "m.room.canonical_alias", "content": {"alias": "#b:x.org"}},
            ],
        }
    )
    assert keys_of(room) == [
        ("m.room.create", ""),
        ("m.room.member", ALICE),
        ("m.room.power_levels", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
        ("m.room.join_rules", ""),
        ("m.room.canonical_alias", ""),
    ]
    assert state_event(room, "m.room.join_rules").content == {"join_rule": "knock"}
    assert state_event(room, "m.room.canonical_alias").content == {"alias": "#b:x.org"}
    assert room.alias == f"#a:{SERVER}"  # still to be mapped by the caller


def test_name_and_topic_beat_initial_state() -> None:
    room = create(
        {
            "name": "param",
            "topic": "param topic",
            "initial_state": [
                {"type": "m.room.name", "content": {"name": "initial"}},
                {"type": "m.room.topic", "content": {"topic": "initial"}},
            ],
        }
    )
    assert [k for k in keys_of(room) if k[0] in ("m.room.name", "m.room.topic")] == [
        ("m.room.name", ""),
        ("m.room.topic", ""),
    ]
    assert state_event(room, "m.room.name").content == {"name": "param"}
    assert state_event(room, "m.room.topic").content["topic"] == "param topic"


def test_initial_state_keeps_order_and_collapses_repeats() -> None:
    room = create(
        {
            "initial_state": [
                {"type": "x.a", "content": {"n": 1}},
                {"type": "x.b", "content": {"n": 2}},
                {"type": "x.a", "content": {"n": 3}},
                {"type": "x.a", "state_key": "other", "content": {"n": 4}},
            ]
        }
    )
    tail = room.events[-3:]
    assert [(e.type, e.state_key, e.content) for e in tail] == [
        ("x.a", "", {"n": 3}),
        ("x.b", "", {"n": 2}),
        ("x.a", "other", {"n": 4}),
    ]


def test_initial_state_power_levels_replace_the_default() -> None:
    initial_pl = {"users": {ALICE: 100}, "state_default": 10}
    room = create(
        {
            "initial_state": [
                {"type": "x.first", "content": {}},
                {"type": "m.room.power_levels", "content": initial_pl},
            ],
            "power_level_content_override": {"kick": 70},
        },
        ROOM_V11,
    )
    power_levels = [e for e in room.events if e.type == "m.room.power_levels"]
    assert len(power_levels) == 1
    assert room.events[2] == power_levels[0]  # at step 3, not step 6
    assert power_levels[0].content == {"users": {ALICE: 100}, "state_default": 10, "kick": 70}


def test_creator_profile_goes_into_the_join() -> None:
    room = create(creator_profile={"displayname": "Alice", "avatar_url": "mxc://s/a", "x": 1})
    assert state_event(room, "m.room.member", ALICE).content == {
        "membership": "join",
        "displayname": "Alice",
        "avatar_url": "mxc://s/a",
    }


def test_invite_3pid_is_ignored() -> None:
    room = create({"invite_3pid": [{"medium": "email", "address": "a@b.c"}]})
    assert not any(e.type == "m.room.third_party_invite" for e in room.events)
    assert len(room.events) == 6


def test_events_do_not_share_state_with_the_request() -> None:
    request: dict[str, Any] = {
        "creation_content": {"nested": {"a": 1}},
        "initial_state": [{"type": "x.y", "content": {"list": [1]}}],
        "power_level_content_override": {"events": {"x.y": 5}},
    }
    room = create(request, ROOM_V11)
    request["creation_content"]["nested"]["a"] = 2
    request["initial_state"][0]["content"]["list"].append(2)
    request["power_level_content_override"]["events"]["x.y"] = 6
    for event in room.events:
        assert Event(event.pdu, ROOM_V11).event_id == event.event_id


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_body",
    [
        [],
        "createRoom",
        {"preset": "secret_chat"},
        {"preset": 1},
        {"visibility": "hidden"},
        {"room_version": 12},
        {"invite": BOB},
        {"invite": [BOB, 7]},
        {"name": 5},
        {"topic": ["t"]},
        {"is_direct": "yes"},
        {"is_direct": 1},
        {"room_alias_name": 3},
        {"creation_content": []},
        {"power_level_content_override": "x"},
        {"power_level_content_override": {"ban": 1.5}},
        {"initial_state": {}},
        {"initial_state": ["x"]},
        {"initial_state": [{"content": {}}]},
        {"initial_state": [{"type": "x.y"}]},
        {"initial_state": [{"type": "x.y", "content": []}]},
        {"initial_state": [{"type": "x.y", "state_key": 0, "content": {}}]},
        {"initial_state": [{"type": "x.y", "content": {"f": 0.5}}]},
        {"creation_content": {"additional_creators": BOB}},
        {"creation_content": {"additional_creators": [1]}},
    ],
)
def test_malformed_requests_are_bad_json(request_body: Any) -> None:
    assert error_of(request_body).errcode == "M_BAD_JSON"


@pytest.mark.parametrize(
    "request_body",
    [
        {"invite": ["bob"]},
        {"invite": ["@bob"]},
        {"invite": ["@:example.org"]},
        {"invite": ["@b:ob:example.org:1"]},
        {"invite": [ALICE]},
        {"room_alias_name": ""},
        {"room_alias_name": "a:b"},
        {"room_alias_name": "a\x00b"},
        {"room_alias_name": "x" * 250},
        {"creation_content": {"additional_creators": ["not-a-user"]}},
        {"preset": "trusted_private_chat", "invite": ["@ bob:example.org"]},
    ],
)
def test_invalid_parameters(request_body: Any) -> None:
    assert error_of(request_body).errcode == "M_INVALID_PARAM"


@pytest.mark.parametrize("version", ["1", "9", "13", "", "org.example.custom"])
def test_unsupported_room_versions(version: str) -> None:
    assert error_of({"room_version": version}).errcode == "M_UNSUPPORTED_ROOM_VERSION"


def test_initial_state_cannot_hold_a_create_event() -> None:
    err = error_of({"initial_state": [{"type": "m.room.create", "content": {}}]})
    assert err.errcode == "M_INVALID_ROOM_STATE"


def test_v10_ignores_additional_creators_shape() -> None:
    # Only v12 gives additional_creators meaning; before, it is opaque content.
    room = create({"creation_content": {"additional_creators": "anything"}}, ROOM_V10)
    assert room.events[0].content["additional_creators"] == "anything"


@pytest.mark.parametrize("creator", ["alice", "@alice:other.example", f"@:{SERVER}"])
def test_creator_must_be_a_local_user(creator: str) -> None:
    with pytest.raises(ValueError):
        create_room_events(
            None,
            creator=creator,
            signing_key=KEY,
            request={},
            server_name=SERVER,
            origin_server_ts=TS,
        )


# -- properties over random requests --------------------------------------------------

_users = st.sampled_from([BOB, CAROL, "@dave:example.com", "@eve:[::1]:8448"])
_text = st.text(max_size=20)
_requests = st.fixed_dictionaries(
    {},
    optional={
        "preset": st.sampled_from(PRESET_NAMES),
        "visibility": st.sampled_from(["public", "private"]),
        "room_version": st.sampled_from(["10", "11", "12"]),
        "name": _text,
        "topic": _text,
        "room_alias_name": st.text(
            st.characters(codec="utf-8", exclude_characters=":\x00"),
            min_size=1,
            max_size=20,
        ),
        "invite": st.lists(_users, max_size=4),
        "is_direct": st.booleans(),
        "initial_state": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(
                        ["m.room.name", "m.room.topic", "m.room.join_rules", "x.custom"]
                    ),
                    "content": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9)),
                },
                optional={"state_key": st.sampled_from(["", "k"])},
            ),
            max_size=4,
        ),
        "power_level_content_override": st.fixed_dictionaries(
            {}, optional={"invite": st.integers(0, 100), "state_default": st.integers(0, 100)}
        ),
    },
)


@given(_requests)
def test_random_requests_keep_the_invariants(request: dict[str, Any]) -> None:
    room = create(request)
    assert_every_event_is_authorised(room)
    events = room.events
    version = room.room_version
    assert version.identifier == request.get("room_version", "12")
    # The fixed head, then one event per state key, chained.
    assert keys_of(room)[:3] == [
        ("m.room.create", ""),
        ("m.room.member", ALICE),
        ("m.room.power_levels", ""),
    ]
    assert len(room.state) == len(events)
    for before, after in itertools.pairwise(events):
        assert after.prev_event_ids == (before.event_id,)
    assert all(e.room_id == room.room_id for e in events)
    # The request's explicit values win in the final state.
    if "name" in request:
        assert state_event(room, "m.room.name").content == {"name": request["name"]}
    if "topic" in request:
        assert state_event(room, "m.room.topic").content["topic"] == request["topic"]
    for item in request.get("initial_state", []):
        key = (item["type"], item.get("state_key", ""))
        overridden = (key == ("m.room.name", "") and "name" in request) or (
            key == ("m.room.topic", "") and "topic" in request
        )
        last = [i for i in request["initial_state"] if (i["type"], i.get("state_key", "")) == key]
        if not overridden:
            assert state_event(room, *key).content == last[-1]["content"]
    invitees = list(dict.fromkeys(request.get("invite", [])))
    invites = [e for e in events if e.membership == "invite"]
    assert [e.state_key for e in invites] == invitees
    assert events[len(events) - len(invites) :] == tuple(invites)
    power_levels = state_event(room, "m.room.power_levels").content
    for key, value in request.get("power_level_content_override", {}).items():
        assert power_levels[key] == value
    if version is ROOM_V12:
        assert ALICE not in power_levels["users"]
        trusted = request.get("preset") == "trusted_private_chat"
        if trusted and invitees:
            assert events[0].content["additional_creators"] == invitees
        else:
            assert "additional_creators" not in events[0].content
    else:
        assert power_levels["users"][ALICE] == 100


def test_presets_table_matches_the_spec() -> None:
    for name, (join_rule, history, guest, _) in EXPECTED_PRESET_STATE.items():
        preset = PRESETS[name]
        assert (preset.join_rule, preset.history_visibility, preset.guest_access) == (
            join_rule,
            history,
            guest,
        )
    assert set(PRESETS) == set(EXPECTED_PRESET_STATE)
