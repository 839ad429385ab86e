"""The pure parts: sync response building, filters, push rules, tokens, routing."""

from __future__ import annotations

import pytest

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.filters import Filter, parse_filter, project_fields
from p2pserver.clientapi.pushrules import RoomFacts, count_unread, default_ruleset, evaluate
from p2pserver.clientapi.routing import Router
from p2pserver.clientapi.streams import StreamToken
from p2pserver.clientapi.sync import (
    RoomSync,
    SyncEvent,
    SyncInput,
    build_sync_response,
    has_updates,
)
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.events import Event
from p2pserver.rooms.room_versions import ROOM_V11
from p2pserver.rooms.signing import SigningKey

KEY = SigningKey.generate()
SERVER = KEY.server_name
ALICE, BOB = f"@alice:{SERVER}", f"@bob:{SERVER}"
ROOM = f"!room:{SERVER}"


def event(
    type_: str, content: dict, *, sender: str = ALICE, state_key: str | None = None, ts: int = 1
) -> Event:
    return build_event(
        ROOM_V11,
        signing_key=KEY,
        server_name=SERVER,
        sender=sender,
        type=type_,
        content=content,
        room_id=ROOM,
        prev_events=[],
        auth_events=[],
        state_key=state_key,
        depth=1,
        origin_server_ts=ts,
    )


def item(e: Event, stream: int = 1) -> SyncEvent:
    return SyncEvent(e, stream)


NAME = event("m.room.name", {"name": "n"}, state_key="")
ALICE_MEMBER = event("m.room.member", {"membership": "join"}, state_key=ALICE)
BOB_MEMBER = event("m.room.member", {"membership": "join"}, sender=BOB, state_key=BOB)
STATE = {
    ("m.room.name", ""): item(NAME),
    ("m.room.member", ALICE): item(ALICE_MEMBER),
    ("m.room.member", BOB): item(BOB_MEMBER),
}


def build(rooms: list[RoomSync], *, flt: Filter | None = None, initial: bool = False) -> dict:
    return build_sync_response(
        SyncInput(
            user_id=BOB,
            next_batch="s9_0_0",
            now_ms=10,
            filter=flt or Filter(),
            rooms=rooms,
            initial=initial,
        )
    )


def test_state_is_the_difference_from_since() -> None:
    renamed = event("m.room.name", {"name": "new"}, state_key="")
    state = dict(STATE) | {("m.room.name", ""): item(renamed)}
    since = {k: v.event.event_id for k, v in STATE.items()}
    room = RoomSync(ROOM, "join", state_at_start=state, state_at_since=since)
    response = build([room])
    assert response["rooms"]["join"][ROOM]["state"]["events"][0]["content"] == {"name": "new"}
    assert len(response["rooms"]["join"][ROOM]["state"]["events"]) == 1
    # Nothing changed: the room is left out of an incremental sync.
    quiet = RoomSync(ROOM, "join", state_at_start=STATE, state_at_since=since)
    assert "rooms" not in build([quiet])
    assert not has_updates(build([quiet]))
    # None: all of it (initial sync, full_state, newly joined).
    full = build([RoomSync(ROOM, "join", state_at_start=STATE)], initial=True)
    assert len(full["rooms"]["join"][ROOM]["state"]["events"]) == 3
    # Held whole since the client saw it stripped: sent again, the same event.
    restored_id = next(iter(since.values()))
    again = build([RoomSync(ROOM, "join", state_at_start=STATE, state_at_since=since,
                            restored=frozenset({restored_id}))])  # fmt: skip
    assert [e["event_id"] for e in again["rooms"]["join"][ROOM]["state"]["events"]] == [restored_id]


def test_lazy_loading_keeps_members_of_timeline_senders_and_self() -> None:
    message = event("m.room.message", {"body": "hi"}, sender=ALICE)
    flt = parse_filter({"room": {"state": {"lazy_load_members": True}}})
    room = RoomSync(ROOM, "join", timeline=[item(message, 5)], state_at_start=STATE)
    keys = {
        (e["type"], e["state_key"])
        for e in build([room], flt=flt)["rooms"]["join"][ROOM]["state"]["events"]
    }
    assert keys == {("m.room.name", ""), ("m.room.member", ALICE), ("m.room.member", BOB)}
    room = RoomSync(ROOM, "join", timeline=[], state_at_start=STATE)
    keys = {
        (e["type"], e["state_key"])
        for e in build([room], flt=flt, initial=True)["rooms"]["join"][ROOM]["state"]["events"]
    }
    assert ("m.room.member", ALICE) not in keys


def test_timeline_format_ephemeral_and_sections() -> None:
    message = event("m.room.message", {"body": "hi"}, ts=4)
    room = RoomSync(
        ROOM,
        "join",
        timeline=[SyncEvent(message, 7, {"transaction_id": "t"})],
        limited=True,
        prev_batch="s6",
        typing=[ALICE],
        unread=(2, 1),
    )
    joined = build([room])["rooms"]["join"][ROOM]
    (formatted,) = joined["timeline"]["events"]
    assert "room_id" not in formatted
    assert formatted["unsigned"] == {"age": 6, "transaction_id": "t"}
    assert joined["timeline"]["limited"] is True and joined["timeline"]["prev_batch"] == "s6"
    assert joined["ephemeral"]["events"] == [{"type": "m.typing", "content": {"user_ids": [ALICE]}}]
    assert joined["unread_notifications"] == {"notification_count": 2, "highlight_count": 1}
    invite = RoomSync("!i:x", "invite", stripped=[NAME])
    leave = RoomSync("!l:x", "ban", timeline=[item(message)])
    rooms = build([invite, leave])["rooms"]
    assert rooms["invite"]["!i:x"]["invite_state"]["events"] == [
        {"type": "m.room.name", "state_key": "", "content": {"name": "n"}, "sender": ALICE}
    ]
    assert "!l:x" in rooms["leave"]
    assert "ephemeral" not in rooms["leave"]["!l:x"]


def test_filters_types_senders_rooms_and_fields() -> None:
    flt = parse_filter(
        {
            "event_fields": ["type", "content.body"],
            "room": {
                "not_rooms": ["!other:x"],
                "timeline": {"types": ["m.room.*"], "not_senders": [BOB]},
            },
        }
    )
    messages = [
        item(event("m.room.message", {"body": "a", "extra": 1})),
        item(event("m.room.message", {"body": "b"}, sender=BOB)),
        item(event("org.custom", {"body": "c"})),
    ]
    response = build(
        [
            RoomSync(ROOM, "join", timeline=messages),
            RoomSync("!other:x", "join", timeline=messages),
        ],
        flt=flt,
    )
    assert list(response["rooms"]["join"]) == [ROOM]
    assert response["rooms"]["join"][ROOM]["timeline"]["events"] == [
        {"type": "m.room.message", "content": {"body": "a"}}
    ]
    assert project_fields({"content": {"a.b": 1}}, ["content.a\\.b"]) == {"content": {"a.b": 1}}
    for bad in (
        {"room": {"timeline": {"limit": 0}}},
        {"event_format": "x"},
        {"room": []},
        {"presence": {"types": "x"}},
    ):
        with pytest.raises(ApiError) as exc:
            parse_filter(bad)
        assert exc.value.errcode == "M_BAD_JSON"


def facts(members: int = 3, power: int = 0) -> RoomFacts:
    return RoomFacts(BOB, "Bobby", members, {"room": 50}, lambda sender: power)


def pdu(e: Event) -> dict:
    return e.get_pdu_json() | {"event_id": e.event_id}


def test_default_push_rules_evaluate_as_the_spec_says() -> None:
    rules = default_ruleset(BOB)
    plain = pdu(event("m.room.message", {"msgtype": "m.text", "body": "hello"}))
    assert evaluate(rules, plain, ROOM, facts()) == ["notify"]
    assert evaluate(rules, plain, ROOM, facts(members=2))[0] == "notify"
    assert evaluate(rules, plain, ROOM, facts(members=2))[1] == {
        "set_tweak": "sound",
        "value": "default",
    }
    notice = pdu(event("m.room.message", {"msgtype": "m.notice", "body": "bot"}))
    assert evaluate(rules, notice, ROOM, facts()) == []
    mention = pdu(event("m.room.message", {"body": "x", "m.mentions": {"user_ids": [BOB]}}))
    assert {"set_tweak": "highlight"} in evaluate(rules, mention, ROOM, facts())
    by_name = pdu(event("m.room.message", {"body": "hey bobby!"}))
    assert {"set_tweak": "highlight"} in evaluate(rules, by_name, ROOM, facts())
    room_ping = pdu(event("m.room.message", {"body": "x", "m.mentions": {"room": True}}))
    assert {"set_tweak": "highlight"} not in evaluate(rules, room_ping, ROOM, facts(power=0))
    assert {"set_tweak": "highlight"} in evaluate(rules, room_ping, ROOM, facts(power=50))
    member = pdu(event("m.room.member", {"membership": "join"}, state_key=ALICE))
    assert evaluate(rules, member, ROOM, facts()) == []
    invite = pdu(event("m.room.member", {"membership": "invite"}, state_key=BOB))
    assert evaluate(rules, invite, ROOM, facts())[0] == "notify"
    edit = pdu(
        event(
            "m.room.message",
            {"body": "*x", "m.relates_to": {"rel_type": "m.replace", "event_id": "$e"}},
        )
    )
    assert evaluate(rules, edit, ROOM, facts()) == []
    assert count_unread(rules, [plain, notice, mention], ROOM, facts()) == (2, 1)
    # A room rule set to not notify silences the room.
    rules["global"]["room"].append(
        {"rule_id": ROOM, "default": False, "enabled": True, "actions": []}
    )
    assert count_unread(rules, [plain, mention], ROOM, facts()) == (1, 1)


def test_stream_tokens() -> None:
    assert StreamToken.parse("s1_2_3") == StreamToken(1, 2, 3)
    assert StreamToken.parse("s5") == StreamToken(5, 0, 0)
    assert str(StreamToken(1, 2, 3)) == "s1_2_3"
    # History paged back to has negative event positions; nothing else does.
    assert StreamToken.parse("s-7_2_3") == StreamToken(-7, 2, 3)
    assert str(StreamToken(-7)) == "s-7_0_0"
    lowest = StreamToken(-(2**62))  # /messages' start when paging forwards from the beginning
    assert StreamToken.parse(str(lowest)) == lowest
    for bad in ("", "x1", "s", "s1_2_3_4", "s-", "s--1", "s1_-2", "s1_x", "s" + "9" * 30):
        with pytest.raises(ApiError):
            StreamToken.parse(bad)


def test_router_prefixes_placeholders_and_errors() -> None:
    router = Router()

    async def a(ctx):  # pragma: no cover - never called
        return {}

    router.add("GET", "/rooms/{roomId}/state/{eventType}", a)
    router.add("GET", "/rooms/{roomId}/state/{eventType}/{stateKey}", a)
    route, params = router.resolve(
        "GET", "/_matrix/client/r0/rooms/%21r%3Ax/state/m.room.member/%40u%3Ax"
    )
    assert params == {"roomId": "!r:x", "eventType": "m.room.member", "stateKey": "@u:x"}
    _, params = router.resolve("GET", "/_matrix/client/v3/rooms/!r:x/state/m.room.name/")
    assert params == {"roomId": "!r:x", "eventType": "m.room.name"}
    # An encoded slash stays inside its segment.
    _, params = router.resolve("GET", "/_matrix/client/v3/rooms/!r:x/state/a%2Fb/c")
    assert params["eventType"] == "a/b"
    with pytest.raises(ApiError) as exc:
        router.resolve("PUT", "/_matrix/client/v3/rooms/!r:x/state/t")
    assert (exc.value.status, exc.value.errcode) == (405, "M_UNRECOGNIZED")
    with pytest.raises(ApiError) as exc:
        router.resolve("GET", "/_matrix/client/v3/rooms/!r:x")
    assert (exc.value.status, exc.value.errcode) == (404, "M_UNRECOGNIZED")
