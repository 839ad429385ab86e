"""Review of 7afe357: the merge rule (:func:`p2pserver.federation.merging.unreconciled`).

Each test is a fault found on the code as committed (they were strict
xfails until fixed): cut-short head lists, a stale peer, a merging user
without power.
"""

from __future__ import annotations

import trio

from p2pserver.federation.merging import MAX_EXTREMITIES
from p2pserver.federation.protocol import MAX_HEADS_PER_ROOM

from .conftest import cluster, forged_message, run, same_heads, shared_room, start_all, wait_until

# -- merging ---------------------------------------------------------------------------


def test_servers_holding_the_same_many_extremities_do_not_merge():
    """40 forks of one event (as 40 servers sending during a split would
    make), held by both a and b: same events, same extremities, same state.
    Nothing needs merging, yet a and b send 4 merge events (8 servers: 35)."""

    async def main():
        hub, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            await wait_until(lambda: same_heads([a, b], room_id))
            (base,) = a.store.forward_extremities(room_id)
            forks = [forged_message(a, room_id, [base], f"fork {i}") for i in range(40)]
            for node in (a, b):
                for pdu in forks:
                    assert (await node.engine.receive_pdu(a.server_name, pdu)).accepted
            assert same_heads([a, b], room_id)
            assert len(a.store.forward_extremities(room_id)) == 40 > MAX_HEADS_PER_ROOM
            await trio.sleep(600)
            assert a.fed.sync.merger.merges == 0
            assert b.fed.sync.merger.merges == 0
            nursery.cancel_scope.cancel()

    run(main)


def test_a_peer_reporting_stale_heads_does_not_make_two_servers_merge_forever():
    """d answers room_heads with the heads it had long ago (a dishonest
    peer, or one that can no longer store events). The room branches once
    (a and b speak while cut off from each other), then stays quiet for an
    hour: a and b send 120 merge events each."""

    async def main():
        hub, (a, b, d) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, d])
            room_id = await shared_room([a, b, d])
            await wait_until(lambda: same_heads([a, b, d], room_id))
            stale = d.store.forward_extremities(room_id)
            d.fed.sync._heads = lambda room_id: stale  # type: ignore[method-assign]
            hub.set_link(a.server_name, b.server_name, up=False)
            sent = [
                await a.engine.send_message(room_id, a.user("u0"), {"body": "a"}),
                await b.engine.send_message(room_id, b.user("u1"), {"body": "b"}),
            ]
            hub.set_link(a.server_name, b.server_name, up=True)
            await wait_until(lambda: all(a.has(e) and b.has(e) for e in sent))
            await trio.sleep(3600)  # a quiet room
            assert a.fed.sync.merger.merges <= 1
            assert b.fed.sync.merger.merges <= 1
            nursery.cancel_scope.cancel()

    run(main)


def test_a_merge_is_sent_by_a_local_user_who_may_send_it():
    async def main():
        hub, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            await b.fed.join(room_id, b.user("a1"))  # sorts before u1
            power = a.store.load_event(a.store.current_state(room_id)[("m.room.power_levels", "")])
            assert power is not None
            content = {
                **power.content,
                "events_default": 50,  # an announcement room
                "users": {**power.content["users"], b.user("u1"): 50},
            }
            levels = await a.engine.send_event(
                room_id, a.user("u0"), "m.room.power_levels", content, state_key=""
            )
            await wait_until(lambda: b.has(levels))
            await b.engine.send_message(room_id, b.user("u1"), {"body": "u1 may speak"})
            assert await b.fed.sync.merger.merge(room_id) is not None
            nursery.cancel_scope.cancel()

    run(main)


# -- restoring stripped copies ----------------------------------------------------------


def test_more_extremities_than_a_head_list_holds_are_merged_and_spread():
    """a holds 40 forks that b never got (as the resident server of a burst
    of joins does). room_heads shows b only a's first 20 heads, so without
    merging b would never learn of the other 20 (the outage scenario: the
    servers disagreed on the membership for minutes)."""

    async def main():
        hub, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            await wait_until(lambda: same_heads([a, b], room_id))
            (base,) = a.store.forward_extremities(room_id)
            hub.set_link(a.server_name, b.server_name, up=False)  # no pushes to b
            forks = []
            for i in range(40):
                pdu = forged_message(a, room_id, [base], f"fork {i}")
                result = await a.engine.receive_pdu(a.server_name, pdu)
                assert result.accepted and result.event_id is not None
                forks.append(result.event_id)
            assert len(a.store.forward_extremities(room_id)) == 40 > MAX_HEADS_PER_ROOM
            hub.heal()
            await wait_until(
                lambda: (
                    all(b.has(e) for e in forks)
                    and same_heads([a, b], room_id)
                    and len(a.store.forward_extremities(room_id)) <= MAX_EXTREMITIES
                ),
                timeout=600,
            )
            assert a.fed.sync.merger.reductions + b.fed.sync.merger.reductions >= 4
            assert a.fed.sync.merger.merges == b.fed.sync.merger.merges == 0
            nursery.cancel_scope.cancel()

    run(main)
