"""Events after a gap (the state before them fetched from a peer), and unknown rooms."""

import copy
from typing import Any

from p2pserver.engine.local import LocalNetwork, LocalPeerClient
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V12
from p2pserver.storage import EventStatus

from .conftest import make_room, state_content, trio_test, user


async def _busy_room(net: LocalNetwork, messages: int = 30):  # type: ignore[no-untyped-def]
    """A public room on a new engine, with ``messages`` events after its creation."""
    a = net.add_engine()
    alice = user(a, "alice")
    rid = await a.create_room(alice, {"preset": "public_chat"})
    for i in range(messages):
        if i % 7 == 0:
            await a.send_state(rid, alice, "m.room.topic", "", {"topic": str(i)})
        else:
            await a.send_message(rid, alice, {"body": str(i)})
    return a, alice, rid


@trio_test
async def test_an_invite_after_a_large_gap_into_an_unknown_room_is_accepted() -> None:
    net = LocalNetwork()
    a, alice, rid = await _busy_room(net)
    b = net.add_engine()
    bob = user(b, "bob")
    invite = await a.invite(rid, alice, bob)
    pdu = a.store.load_event(invite).get_pdu_json()  # type: ignore[union-attr]
    result = await b.receive_pdu(a.server_name, pdu)
    methods = [r[2] for r in net.requests if r[0] == b.server_name]
    assert "state_ids" in methods  # the gap was too large for /get_missing_events
    # Not soft failed against a current state of the create event alone.
    assert result.status == EventStatus.ACCEPTED, result
    assert invite in b.forward_extremities(rid)
    assert b.room_state(rid) == a.room_state(rid)
    assert b.store.current_membership(rid, bob) == "invite"
    # The room is usable: bob joins on b, alice's next events are accepted there.
    join = await b.join(rid, bob)
    await net.deliver()
    assert a.store.event_meta(join).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    later = [await a.send_message(rid, alice, {"body": f"later {i}"}) for i in range(3)]
    await net.deliver()
    for event_id in later:
        assert b.store.event_meta(event_id).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    assert b.forward_extremities(rid) == [later[-1]]
    assert b.room_state(rid) == a.room_state(rid)
    assert b.store.check_consistency() == []


@trio_test
async def test_events_after_a_gap_in_a_room_we_hold_join_the_current_state() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    room.net.offline.add(b.server_name)
    for i in range(25):
        await a.send_state(rid, room.users[0], "m.room.topic", "", {"topic": str(i)})
    last = await a.send_message(rid, room.users[0], {"body": "after the gap"})
    room.net.offline.clear()
    pdu = a.store.load_event(last).get_pdu_json()  # type: ignore[union-attr]
    assert (await b.receive_pdu(a.server_name, pdu)).status == EventStatus.ACCEPTED
    assert state_content(b, rid, ("m.room.topic", "")) == {"topic": "24"}
    nxt = await a.send_message(rid, room.users[0], {"body": "next"})
    await room.net.deliver()
    assert b.store.event_meta(nxt).status == EventStatus.ACCEPTED  # type: ignore[union-attr]


@trio_test
async def test_a_banned_users_event_after_a_gap_is_still_soft_failed() -> None:
    room = await make_room(2)
    (a, m), (alice, mallory) = room.engines, room.users
    rid = room.room_id
    room.net.offline.add(m.server_name)
    await a.ban(rid, alice, mallory)
    # m never hears of the ban and builds a long branch on the old state.
    ids = [await m.send_message(rid, mallory, {"body": str(i)}) for i in range(25)]
    room.net.offline.clear()
    pdu = m.store.load_event(ids[-1]).get_pdu_json()  # type: ignore[union-attr]
    result = await a.receive_pdu(m.server_name, pdu)
    # The state before it (taken from m) says mallory is joined, so it is no
    # rejection; but the ban wins the resolution with our current state.
    assert result.status == EventStatus.SOFT_FAILED, result
    assert a.store.current_membership(rid, mallory) == "ban"
    assert ids[-1] not in a.forward_extremities(rid)
    assert a.store.check_consistency() == []


@trio_test
async def test_a_room_version_hint_discovers_an_unknown_room() -> None:
    for version in (ROOM_V10, ROOM_V12):
        net = LocalNetwork()
        a, b = net.add_engine(), net.add_engine()
        alice, bob = user(a, "alice"), user(b, "bob")
        rid = await a.create_room(alice, {"preset": "private_chat"}, room_version=version)
        invite = await a.invite(rid, alice, bob)
        pdu = a.store.load_event(invite).get_pdu_json()  # type: ignore[union-attr]
        result = await b.receive_pdu(a.server_name, pdu, room_version=version.identifier)
        assert result.status == EventStatus.ACCEPTED, result
        assert b.store.room_version(rid) is version
        assert b.store.current_membership(rid, bob) == "invite"


@trio_test
async def test_the_create_event_decides_the_version_not_the_hint() -> None:
    net = LocalNetwork()
    a, b = net.add_engine(), net.add_engine()
    alice, bob = user(a, "alice"), user(b, "bob")
    rid = await a.create_room(alice, {"preset": "private_chat"}, room_version=ROOM_V10)
    invite = await a.invite(rid, alice, bob)
    pdu = a.store.load_event(invite).get_pdu_json()  # type: ignore[union-attr]
    # A v10 invite parses as v11 too; the create event says 10.
    result = await b.receive_pdu(a.server_name, pdu, room_version="11")
    assert result.status == EventStatus.ACCEPTED, result
    assert b.store.room_version(rid) is ROOM_V10
    # A PDU that is malformed for the hinted version is dropped before any request.
    other = net.add_engine()
    net.requests.clear()
    bad = copy.deepcopy(pdu)
    bad["depth"] = -1
    result = await other.receive_pdu(a.server_name, bad, room_version="10")
    assert result.status is None and "format" in (result.reason or "")
    assert net.requests == []
    # An unknown version hint is a format error too.
    result = await other.receive_pdu(a.server_name, pdu, room_version="999")
    assert result.status is None and "format" in (result.reason or "")


@trio_test
async def test_a_gap_is_recorded_and_filled_with_history() -> None:
    room = await make_room(3, power={2: 50})
    (a, b, c), rid = room.engines, room.room_id
    alice, carol = room.users[0], room.users[2]
    room.net.offline.add(b.server_name)
    early = [await c.send_message(rid, carol, {"body": f"carol {i}"}) for i in range(5)]
    await room.net.deliver()
    await a.kick(rid, alice, carol)  # carol's messages stay history
    for i in range(25):
        await a.send_message(rid, alice, {"body": str(i)})
    last = await a.send_message(rid, alice, {"body": "last"})
    await room.net.deliver()
    room.net.offline.clear()
    old_tips = b.forward_extremities(rid)
    pdu = a.store.load_event(last).get_pdu_json()  # type: ignore[union-attr]
    assert (await b.receive_pdu(a.server_name, pdu)).status == EventStatus.ACCEPTED
    gaps = b.gaps(rid)
    assert gaps and b.store.event_meta(early[0]) is None
    assert set(b.forward_extremities(rid)) == {*old_tips, last}
    state = b.room_state(rid)
    # What a filler collects: the gap's events, and one event of no gap of ours.
    history = a.on_backfill(b.server_name, rid, gaps, 100)
    stranger = await a.send_message(rid, alice, {"body": "after"})
    extra = a.store.load_event(stranger).get_pdu_json()  # type: ignore[union-attr]
    results = await b.receive_history(a.server_name, rid, [*history, extra])
    assert all(r.accepted for r in results if r.event_id != stranger)
    assert next(r for r in results if r.event_id == stranger).status is None
    for event_id in early:  # sent before the kick: history, not soft failed
        assert b.store.event_meta(event_id).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    assert b.gaps(rid) == []
    assert b.forward_extremities(rid) == [last]  # the old tips are behind it now
    assert b.room_state(rid) == state
    assert b.store.check_consistency() == []


@trio_test
async def test_no_gap_is_recorded_for_history_before_we_were_in_the_room() -> None:
    net = LocalNetwork()
    a, alice, rid = await _busy_room(net)
    b = net.add_engine()
    invite = await a.invite(rid, alice, user(b, "bob"))
    pdu = a.store.load_event(invite).get_pdu_json()  # type: ignore[union-attr]
    assert (await b.receive_pdu(a.server_name, pdu)).status == EventStatus.ACCEPTED
    assert b.gaps(rid) == []


class _NoMissingEvents(LocalPeerClient):
    """A peer that answers /get_missing_events with nothing: every gap takes the state."""

    async def get_missing_events(self, destination: str, room_id: str, **kwargs: Any) -> list[Any]:
        return []


@trio_test
async def test_events_arriving_after_events_that_follow_them_are_no_forward_extremities() -> None:
    for order in ("prev last", "soft-failed last"):
        room = await make_room(3)
        (a, b, c), rid = room.engines, room.room_id
        alice, carol = room.users[0], room.users[2]
        b.peers = _NoMissingEvents(room.net, b.server_name)
        room.net.offline.add(b.server_name)
        p = await a.send_message(rid, alice, {"body": "P"})  # T <- P
        await room.net.deliver()
        s = await c.send_message(rid, carol, {"body": "S"})  # P <- S
        await room.net.deliver()
        follow = await a.send_message(rid, alice, {"body": "A"})  # S <- A
        room.net.offline.clear()
        kick = await a.kick(rid, alice, carol)  # after A at a; b gets it first
        kick_pdu = a.store.load_event(kick).get_pdu_json()  # type: ignore[union-attr]
        pdus = {e: a.store.load_event(e).get_pdu_json() for e in (p, s, follow)}  # type: ignore[union-attr]
        await b.receive_pdu(a.server_name, kick_pdu)  # a gap: the state is fetched
        sequence = [s, follow, p] if order == "prev last" else [follow, p, s]
        for event_id in sequence:
            await b.receive_pdu(a.server_name, pdus[event_id])
        assert b.store.event_meta(s).status == EventStatus.SOFT_FAILED, order  # type: ignore[union-attr]
        assert b.store.event_meta(follow).status == EventStatus.ACCEPTED, order  # type: ignore[union-attr]
        # P is followed by A (through the soft-failed S): no forward extremity.
        assert p not in b.forward_extremities(rid), order
        assert b.forward_extremities(rid) == [kick], order
        assert b.store.check_consistency() == [], order
