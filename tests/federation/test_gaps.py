"""A pushed event after a gap: the engine takes the state at the gap, the federation fills it."""

from __future__ import annotations

import trio

from .conftest import cluster, run, shared_room, start_all, wait_until


def test_a_gap_before_a_pushed_event_is_filled_in_the_background():
    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            b.stop()
            missed = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(40)
            ]
            await trio.sleep(1)
            # Nothing else brings b the missed events: no queue, no head exchanges.
            a.store.outbound.ack(b.server_name, 2**62)
            for node in (a, b):
                node.fed.sync.exchange = _no_exchange  # type: ignore[method-assign]
            await b.start(nursery)
            # Only the last event is pushed (as a relay that skipped the rest would).
            pdu = a.store.load_event(missed[-1]).get_pdu_json()  # type: ignore[union-attr]
            answer = await b.fed.server.on_send_transaction(
                a.server_name,
                {"txn_id": "t1", "origin": a.server_name, "origin_server_ts": 0, "pdus": [pdu]},
            )
            assert answer["pdus"] == {missed[-1]: {}}  # accepted at once, on the state at the gap
            await wait_until(lambda: all(b.has(e) for e in missed), timeout=60)
            assert b.store.forward_extremities(room_id) == [missed[-1]]
            assert b.engine.gaps(room_id) == []
            assert b.store.check_consistency() == []
            nursery.cancel_scope.cancel()

    run(main)


async def _no_exchange(*args, **kwargs):
    return 0
