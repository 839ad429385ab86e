import copy

import pytest

from p2pserver.engine import NotFound
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.events import Event
from p2pserver.rooms.room_versions import ROOM_V11
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage import EventStatus

from .conftest import Room, make_room, set_power, state_content, trio_test


def _tip(room: Room, index: int = 0) -> tuple[list[str], int]:
    engine = room.engines[index]
    tips = engine.forward_extremities(room.room_id)
    depth = max(engine.store.event_meta(t).depth for t in tips)  # type: ignore[union-attr]
    return tips, depth


def _state_ids(room: Room, *keys: tuple[str, str]) -> list[str]:
    state = room.engines[0].room_state(room.room_id)
    return [state[k] for k in keys if k in state]


def _remote_event(
    room: Room, key: SigningKey, sender: str, type_: str, content: dict, **kw
) -> Event:
    engine = room.engines[0]
    version = engine.store.room_version(room.room_id)
    assert version is not None
    tips, depth = _tip(room)
    auth = _state_ids(
        room,
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", sender),
    )
    if version.room_id_is_create_event_hash:
        auth = auth[1:]
    return build_event(
        version,
        signing_key=key,
        sender=sender,
        type=type_,
        content=content,
        room_id=room.room_id,
        prev_events=tips,
        auth_events=auth,
        depth=depth + 1,
        **kw,
    )


def _stored_status(room: Room, event_id: str) -> EventStatus | None:
    meta = room.engines[0].store.event_meta(event_id)
    return meta.status if meta else None


@trio_test
async def test_malformed_and_forged_events_are_dropped() -> None:
    room = await make_room(2)
    a, b = room.engines
    event_id = await b.send_message(room.room_id, room.users[1], {"body": "original"})
    pdu = b.store.load_event(event_id).get_pdu_json()  # type: ignore[union-attr]
    rows = a.store.table_rows()

    malformed = dict(pdu)
    del malformed["type"]
    result = await a.receive_pdu(b.server_name, malformed)
    assert result.status is None and "format" in (result.reason or "")
    assert (await a.receive_pdu(b.server_name, ["not", "an", "object"])).status is None

    forged = copy.deepcopy(pdu)
    forged["origin_server_ts"] += 1  # covered by the signature, not only the hash
    result = await a.receive_pdu(b.server_name, forged)
    assert result.status is None and "signature" in (result.reason or "")

    imposter = SigningKey.generate()  # signs as b's server with the wrong key
    fake = _remote_event(
        room,
        imposter,
        room.users[1],
        "m.room.topic",
        {"topic": "pwned"},
        state_key="",
        server_name=b.server_name,
    )
    result = await a.receive_pdu(b.server_name, fake.get_pdu_json())
    assert result.status is None
    assert a.store.table_rows() == rows  # dropped events are not stored
    assert (await a.receive_pdu(b.server_name, pdu)).accepted


@trio_test
async def test_content_hash_mismatch_is_used_redacted() -> None:
    room = await make_room(2)
    a, b = room.engines
    event_id = await b.send_message(room.room_id, room.users[1], {"body": "original"})
    pdu = copy.deepcopy(b.store.load_event(event_id).get_pdu_json())  # type: ignore[union-attr]
    pdu["content"]["body"] = "tampered"  # the hash no longer matches; signatures still do
    result = await a.receive_pdu(b.server_name, pdu)
    assert result.accepted and result.event_id == event_id
    stored = a.store.load_event(event_id)
    assert stored is not None and stored.redacted and stored.content == {}


@trio_test
async def test_unauthorised_events_are_rejected_and_never_state() -> None:
    room = await make_room(2, request={"preset": "private_chat"})
    a, b = room.engines
    rid = room.room_id
    mallory_key = SigningKey.generate()
    mallory = f"@mallory:{mallory_key.server_name}"
    # not in the room at all
    intruder = _remote_event(
        room, mallory_key, mallory, "m.room.topic", {"topic": "x"}, state_key=""
    )
    # a member without the power to set the topic
    weak = _remote_event(
        room, b.signing_key, room.users[1], "m.room.topic", {"topic": "y"}, state_key=""
    )
    for event, origin in ((intruder, mallory_key.server_name), (weak, b.server_name)):
        result = await a.receive_pdu(origin, event.get_pdu_json())
        assert result.status == EventStatus.REJECTED, result
        assert result.rejected_reason
        assert a.store.get_event(event.event_id) is None
        with pytest.raises(NotFound):
            a.on_get_event(b.server_name, event.event_id)
        assert event.event_id not in a.forward_extremities(rid)
    assert ("m.room.topic", "") not in a.room_state(rid)
    # an event built on top of a rejected one is fine; the rejected state is not inherited
    tips, depth = _tip(room)
    later = build_event(
        a.store.room_version(rid),  # type: ignore[arg-type]
        signing_key=b.signing_key,
        sender=room.users[1],
        type="m.room.message",
        content={"body": "after"},
        room_id=rid,
        prev_events=[*tips, weak.event_id],
        auth_events=weak.auth_event_ids,
        depth=depth + 2,
    )
    assert (await a.receive_pdu(b.server_name, later.get_pdu_json())).status == EventStatus.ACCEPTED
    meta = a.store.event_meta(later.event_id)
    assert ("m.room.topic", "") not in a.store.state_map(meta.state_before)  # type: ignore[arg-type, union-attr]
    assert a.forward_extremities(rid) == [later.event_id]
    assert a.store.check_consistency() == []


@trio_test
async def test_ban_evasion_is_soft_failed_and_rooms_converge() -> None:
    room = await make_room(
        2,
        request={
            "preset": "public_chat",
            "power_level_content_override": {"events": {"m.room.topic": 0}},
        },
    )
    (a, m), (alice, mallory) = room.engines, room.users
    rid = room.room_id
    room.net.offline.add(m.server_name)
    await a.ban(rid, alice, mallory)
    topic = await m.send_state(rid, mallory, "m.room.topic", "", {"topic": "evasion"})
    room.net.offline.clear()
    await room.net.deliver()
    meta = a.store.event_meta(topic)
    assert meta is not None and meta.status == EventStatus.SOFT_FAILED
    assert topic not in a.forward_extremities(rid)
    assert a.store.current_membership(rid, mallory) == "ban"
    assert state_content(a, rid, ("m.room.topic", "")) is None
    # m saw both branches: the ban wins state resolution there too
    assert m.store.current_membership(rid, mallory) == "ban"
    assert a.room_state(rid) == m.room_state(rid)
    # an event referencing the soft-failed one is handled as normal
    await a.send_message(rid, alice, {"body": "still here"})
    await room.net.deliver()
    assert a.room_state(rid) == m.room_state(rid)
    assert a.store.check_consistency() == [] and m.store.check_consistency() == []


@trio_test
async def test_small_gap_is_filled_with_get_missing_events() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    ids = [await a.send_message(rid, room.users[0], {"body": str(i)}) for i in range(6)]
    last = a.store.load_event(ids[-1]).get_pdu_json()  # type: ignore[union-attr]
    room.net.requests.clear()
    result = await b.receive_pdu(a.server_name, last)
    assert result.status == EventStatus.ACCEPTED
    assert [r[2] for r in room.net.requests] == ["get_missing_events"]
    for event_id in ids:
        assert b.store.event_meta(event_id).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    assert b.forward_extremities(rid) == [ids[-1]]


@trio_test
async def test_large_gap_falls_back_to_the_state_at_the_event() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    old_tips = b.forward_extremities(rid)
    ids = []
    for i in range(30):
        if i % 7 == 0:
            ids.append(
                await a.send_state(rid, room.users[0], "m.room.topic", "", {"topic": str(i)})
            )
        else:
            ids.append(await a.send_message(rid, room.users[0], {"body": str(i)}))
    last = a.store.load_event(ids[-1]).get_pdu_json()  # type: ignore[union-attr]
    room.net.requests.clear()
    result = await b.receive_pdu(a.server_name, last)
    assert result.status == EventStatus.ACCEPTED
    methods = [r[2] for r in room.net.requests]
    assert methods[0] == "get_missing_events" and "state_ids" in methods
    assert b.room_state(rid) == a.room_state(rid)
    # the gap stays open: b's old tip has no child b knows of, so both are extremities
    assert set(b.forward_extremities(rid)) == {*old_tips, ids[-1]}
    assert b.store.check_consistency() == []
    # events fetched only for their state are outliers, not timeline events
    assert b.store.event_meta(ids[0]) is None or b.store.event_meta(ids[0]).status in (  # type: ignore[union-attr]
        EventStatus.OUTLIER,
    )


@trio_test
async def test_unreachable_peer_drops_the_event_until_it_can_be_decided() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    ids = [await a.send_message(rid, room.users[0], {"body": str(i)}) for i in range(3)]
    last = a.store.load_event(ids[-1]).get_pdu_json()  # type: ignore[union-attr]
    room.net.offline.add(a.server_name)
    result = await b.receive_pdu(a.server_name, last)
    assert result.status is None and "prev event" in (result.reason or "")
    assert b.store.event_meta(ids[-1]) is None
    room.net.offline.clear()
    assert (await b.receive_pdu(a.server_name, last)).status == EventStatus.ACCEPTED


@trio_test
async def test_duplicates_are_answered_from_the_store() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    event_id = await a.send_message(rid, room.users[0], {"body": "once"})
    pdu = a.store.load_event(event_id).get_pdu_json()  # type: ignore[union-attr]
    first = await b.receive_pdu(a.server_name, pdu)
    rows = b.store.table_rows()
    again = await b.receive_pdu(a.server_name, pdu)
    assert first == again and b.store.table_rows() == rows


@trio_test
async def test_power_changes_race() -> None:
    # a moderator names the room while the admin demotes them; all end up agreeing
    room = await make_room(3, power={1: 50}, room_version=ROOM_V11)
    (a, b, _), rid = room.engines, room.room_id
    room.net.offline.update({a.server_name, b.server_name})
    await set_power(a, rid, room.users[0], {room.users[1]: 0})
    await b.send_state(rid, room.users[1], "m.room.name", "", {"name": "mine"})
    room.net.offline.clear()
    await room.net.deliver()
    for engine in room.engines:
        await engine.send_message(rid, room.users[room.engines.index(engine)], {"body": "sync"})
    await room.net.deliver()
    states = [e.room_state(rid) for e in room.engines]
    assert states[0] == states[1] == states[2]
    # state resolution applies the demotion first: the name is not authorised
    assert ("m.room.name", "") not in states[0]


@trio_test
async def test_a_transaction_is_decided_in_order_and_committed_together() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    ids = [await a.send_message(rid, room.users[0], {"body": str(i)}) for i in range(20)]
    pdus = [a.store.load_event(i).get_pdu_json() for i in ids]  # type: ignore[union-attr]
    forged = copy.deepcopy(pdus[5])
    forged["origin_server_ts"] += 1  # bad signature: dropped, the rest unaffected
    heard: list[str] = []
    b.notifier.add_listener(lambda u: heard.append(u.event.event_id if u.event else ""))
    room.net.requests.clear()
    results = await b.receive_transaction(a.server_name, [*pdus[:10], forged, *pdus[10:]])
    assert [r.event_id for r in results[:10] + results[11:]] == ids
    assert results[10].status is None and results[10].reason.startswith("signature")  # type: ignore[union-attr]
    assert all(r.accepted for i, r in enumerate(results) if i != 10)
    assert room.net.requests == []  # nothing needed fetching
    assert heard == ids
    assert b.forward_extremities(rid) == [ids[-1]]
    assert b.store.check_consistency() == []
