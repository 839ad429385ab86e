"""Peers that lie or send junk: the engine drops or rejects, and never crashes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from p2pserver.engine.local import LocalPeerClient
from p2pserver.engine.peers import PeerError, StateIds
from p2pserver.storage import EventStatus

from .conftest import make_room, trio_test


class HostilePeer(LocalPeerClient):
    """Answers like the real peer, except where a test says otherwise."""

    junk: Any = None
    extra_state: list[str] = []
    refuse_missing_events = False

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> list[Any]:
        if self.refuse_missing_events:
            raise PeerError("no")
        if self.junk is not None:
            return self.junk  # type: ignore[no-any-return]
        return await super().get_missing_events(
            destination,
            room_id,
            earliest_events=earliest_events,
            latest_events=latest_events,
            limit=limit,
            min_depth=min_depth,
        )

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIds:
        ids = await super().get_state_ids(destination, room_id, event_id)
        return StateIds(ids.pdu_ids + self.extra_state, ids.auth_chain_ids)

    async def get_event_auth(self, destination: str, room_id: str, event_id: str) -> list[Any]:
        if self.junk is not None:
            return self.junk  # type: ignore[no-any-return]
        return await super().get_event_auth(destination, room_id, event_id)


def _hostile(engine: Any) -> HostilePeer:
    peer = HostilePeer(engine.peers.network, engine.server_name)
    engine.peers = peer
    return peer


@trio_test
async def test_peer_listing_the_event_in_its_own_state() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    first = await a.send_message(rid, room.users[0], {"body": "1"})
    second = await a.send_message(rid, room.users[0], {"body": "2"})
    peer = _hostile(b)
    peer.refuse_missing_events = True
    peer.extra_state = [second]  # "the state before 1 includes 2"
    pdu = a.store.load_event(second).get_pdu_json()  # type: ignore[union-attr]
    result = await b.receive_pdu(a.server_name, pdu)
    assert result.status == EventStatus.ACCEPTED
    assert b.store.event_meta(first).status == EventStatus.OUTLIER  # type: ignore[union-attr]
    assert b.room_state(rid) == a.room_state(rid)
    assert b.store.check_consistency() == []


@trio_test
async def test_junk_answers_are_survived() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    ids = [await a.send_message(rid, room.users[0], {"body": str(i)}) for i in range(3)]
    peer = _hostile(b)
    for junk in ({"not": "a list"}, [1, "two", None, {"type": 3}], [[]]):
        peer.junk = junk
        result = await b.receive_pdu(a.server_name, a.store.load_event(ids[-1]).get_pdu_json())  # type: ignore[union-attr]
        # the state fallback still works, or the event is dropped with a reason
        assert result.status in (EventStatus.ACCEPTED, None)
        assert result.status or result.reason
    assert b.store.check_consistency() == []


@trio_test
async def test_event_with_unfetchable_auth_events_is_dropped() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    outsider = room.net.add_engine()
    invite = await a.invite(rid, room.users[0], f"@c:{outsider.server_name}")
    peer = _hostile(outsider)
    peer.junk = []  # /event_auth answers an empty chain
    pdu = a.store.load_event(invite).get_pdu_json()  # type: ignore[union-attr]
    room.net.offline.add(a.server_name)  # and the create event cannot be fetched either
    result = await outsider.receive_pdu(a.server_name, pdu)
    assert result.status is None and result.reason
    assert outsider.store.event_meta(invite) is None
    del b
