import pytest

from p2pserver.engine import NotFound, RoomUpdate
from p2pserver.engine.local import LocalNetwork
from p2pserver.rooms.auth import select_auth_event_ids
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.errors import AuthError, BadJSON, EventTooLarge
from p2pserver.rooms.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from p2pserver.rooms.validation import MAX_PDU_BYTES
from p2pserver.storage import EventStatus

from .conftest import make_room, state_content, trio_test, user

VERSIONS = list(KNOWN_ROOM_VERSIONS.values())


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
@trio_test
async def test_create_room_stores_initial_state(version: RoomVersion) -> None:
    net = LocalNetwork()
    engine = net.add_engine()
    updates: list[RoomUpdate] = []
    engine.notifier.add_listener(updates.append)
    alice = user(engine, "alice")
    room_id = await engine.create_room(
        alice, {"preset": "private_chat", "name": "Room", "topic": "T"}, room_version=version
    )
    state = engine.room_state(room_id)
    assert {k[0] for k in state} >= {
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    }
    assert engine.store.room_version(room_id) == version
    assert engine.store.current_membership(room_id, alice) == "join"
    assert engine.store.joined_servers(room_id) == {engine.server_name}
    # every initial event was announced, in order, and the last is the extremity
    assert [u.event.type for u in updates if u.event][0] == "m.room.create"
    assert engine.forward_extremities(room_id) == [updates[-1].event.event_id]  # type: ignore[union-attr]
    assert engine.store.check_consistency() == []


@trio_test
async def test_message_points_at_extremities_with_selected_auth_events() -> None:
    room = await make_room(1)
    engine, alice = room.engines[0], room.users[0]
    before = engine.room_state(room.room_id)
    tip = engine.forward_extremities(room.room_id)
    event_id = await engine.send_message(room.room_id, alice, {"msgtype": "m.text", "body": "hi"})
    event = engine.store.load_event(event_id)
    assert event is not None
    assert list(event.prev_event_ids) == tip
    tip_event = engine.store.load_event(tip[0])
    assert tip_event is not None and event.depth == tip_event.depth + 1
    version = engine.store.room_version(room.room_id)
    assert version is not None
    assert list(event.auth_event_ids) == select_auth_event_ids(
        version, "m.room.message", alice, None, event.content, before
    )
    assert engine.store.event_meta(event_id).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    assert engine.forward_extremities(room.room_id) == [event_id]
    assert engine.room_state(room.room_id) == before  # messages change no state


@trio_test
async def test_refused_local_event_stores_nothing() -> None:
    room = await make_room(2, request={"preset": "private_chat"})
    engine = room.engines[0]
    stranger = user(engine, "stranger")
    rows = engine.store.table_rows()
    with pytest.raises(AuthError):
        await engine.send_message(room.room_id, stranger, {"body": "let me in"})
    with pytest.raises(AuthError):  # power levels: users default to 0, topic needs 50
        await room.engines[1].send_state(room.room_id, room.users[1], "m.room.topic", "", {})
    assert engine.store.table_rows() == rows
    with pytest.raises(ValueError, match="not a user of this server"):
        await engine.send_message(room.room_id, room.users[1], {"body": "spoof"})
    with pytest.raises(NotFound):
        await engine.send_message("!nowhere:x", room.users[0], {"body": "?"})


@trio_test
async def test_membership_lifecycle_across_servers() -> None:
    room = await make_room(2, request={"preset": "private_chat"})
    (a, b), (alice, bob) = room.engines, room.users
    rid = room.room_id

    async def membership_everywhere(target: str) -> set[str | None]:
        await room.net.deliver()
        return {e.store.current_membership(rid, target) for e in room.engines}

    assert await membership_everywhere(bob) == {"join"}
    await b.leave(rid, bob)
    assert await membership_everywhere(bob) == {"leave"}
    assert a.store.joined_servers(rid) == {a.server_name}
    await a.invite(rid, alice, bob)
    assert await membership_everywhere(bob) == {"invite"}
    await b.join(rid, bob)
    assert await membership_everywhere(bob) == {"join"}
    await a.kick(rid, alice, bob, reason="bye")
    assert await membership_everywhere(bob) == {"leave"}
    await a.ban(rid, alice, bob)
    assert await membership_everywhere(bob) == {"ban"}
    with pytest.raises(AuthError):
        await b.join(rid, bob)
    await a.unban(rid, alice, bob)
    assert await membership_everywhere(bob) == {"leave"}
    assert a.room_state(rid) == b.room_state(rid)
    for engine in room.engines:
        assert engine.store.check_consistency() == []


@trio_test
async def test_state_changes_and_redaction() -> None:
    room = await make_room(2)
    (a, b), (alice, bob) = room.engines, room.users
    rid = room.room_id
    await a.send_state(rid, alice, "m.room.topic", "", {"topic": "news"})
    message = await b.send_message(rid, bob, {"msgtype": "m.text", "body": "secret"})
    await room.net.deliver()
    assert state_content(b, rid, ("m.room.topic", "")) == {"topic": "news"}
    redaction = await a.redact(rid, alice, message, reason="spam")
    await room.net.deliver()
    for engine in room.engines:
        assert engine.store.redactions_of(message) == [redaction]
        seen = engine.get_event_for_user(alice, message)
        assert seen is not None and seen.redacted and "body" not in seen.content
        assert "body" not in engine.on_get_event(b.server_name, message)["content"]


@trio_test
async def test_local_events_queued_for_joined_servers_and_invitee() -> None:
    room = await make_room(2)
    net = room.net
    outsider = net.add_engine()
    a = room.engines[0]
    await a.send_message(room.room_id, room.users[0], {"body": "x"})
    assert a.store.outbound.destinations() == [room.engines[1].server_name]
    await net.deliver()
    await a.invite(room.room_id, room.users[0], user(outsider, "carol"))
    assert set(a.store.outbound.destinations()) == {
        room.engines[1].server_name,
        outsider.server_name,
    }
    assert a.server_name not in a.store.outbound.destinations()


@trio_test
async def test_at_most_ten_prev_events() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    # twelve concurrent messages from b, each delivered on its own
    tip = b.forward_extremities(rid)
    pdus = []
    for i in range(12):
        event_id = await b.send_message(rid, room.users[1], {"body": str(i)})
        event = b.store.load_event(event_id)
        assert event is not None
        pdus.append(event.get_pdu_json())
        # roll b's extremities back so the next message is concurrent
        with b.store.transaction():
            b.store.set_forward_extremities(rid, tip)
    for pdu in pdus:
        assert (await a.receive_pdu(b.server_name, pdu)).accepted
    assert len(a.forward_extremities(rid)) == 12
    event_id = await a.send_message(rid, room.users[0], {"body": "merge"})
    event = a.store.load_event(event_id)
    assert event is not None and len(event.prev_event_ids) == 10
    assert len(a.forward_extremities(rid)) == 3


@trio_test
async def test_local_events_over_the_pdu_size_limit_are_refused() -> None:
    room = await make_room(2)
    (a, b), rid, alice = room.engines, room.room_id, room.users[0]
    rows = a.store.table_rows()
    for content in ({"body": "x" * 70_000}, {"body": "é" * 33_000}):  # bytes count, not characters
        with pytest.raises(EventTooLarge) as info:
            await a.send_message(rid, alice, content)
        assert info.value.errcode == "M_TOO_LARGE"
    with pytest.raises(EventTooLarge):  # state keys are at most 255 bytes
        await a.send_state(rid, alice, "m.room.topic", "k" * 256, {"topic": "t"})
    with pytest.raises(BadJSON):
        await a.send_message(rid, alice, {"body": 1.5})
    assert a.store.table_rows() == rows  # nothing stored, nothing queued
    # Exactly at the limit is allowed, and the receiving engine takes it.
    probe = await a.send_message(rid, alice, {"body": ""})
    depth = a.store.event_meta(probe).depth  # type: ignore[union-attr]
    if len(str(depth + 1)) > len(str(depth)):  # the next event's depth takes a digit more
        probe = await a.send_message(rid, alice, {"body": ""})
    size = len(encode_canonical_json(a.store.load_event(probe).pdu))  # type: ignore[union-attr]
    big = await a.send_message(rid, alice, {"body": "y" * (MAX_PDU_BYTES - size)})
    pdu = a.store.load_event(big).pdu  # type: ignore[union-attr]
    assert len(encode_canonical_json(pdu)) == MAX_PDU_BYTES
    await room.net.deliver()
    assert b.store.event_meta(big).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    with pytest.raises(EventTooLarge):  # one byte more
        await a.send_message(rid, alice, {"body": "y" * (MAX_PDU_BYTES - size + 1)})
    with pytest.raises(EventTooLarge):
        await a.create_room(alice, {"preset": "private_chat", "topic": "t" * 70_000})
    assert len(a.store.room_ids()) == 1


@trio_test
async def test_a_new_member_can_speak_when_its_join_is_not_among_the_deepest_extremities() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    late = user(a, "late")
    join_id = await a.join(rid, late)
    # Eleven two-message chains from b, concurrent with each other and with
    # the join (b has not seen it): all deeper than the join.
    tip = b.forward_extremities(rid)
    pdus = []
    for i in range(11):
        for j in range(2):
            event = b.store.load_event(
                await b.send_message(rid, room.users[1], {"body": f"{i}.{j}"})
            )
            assert event is not None
            pdus.append(event.get_pdu_json())
        with b.store.transaction():
            b.store.set_forward_extremities(rid, tip)
    for pdu in pdus:
        assert (await a.receive_pdu(b.server_name, pdu)).accepted
    extremities = a.forward_extremities(rid)
    assert len(extremities) == 12 and extremities[-1] == join_id  # the shallowest
    event_id = await a.send_message(rid, late, {"body": "hello"})
    event = a.store.load_event(event_id)
    assert event is not None and len(event.prev_event_ids) == 10
    assert join_id in event.prev_event_ids
    assert a.store.event_meta(event_id).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
