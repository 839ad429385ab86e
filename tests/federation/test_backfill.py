"""Paging back: history from before a node joined is fetched on demand with /backfill."""

from __future__ import annotations

import trio

from p2pserver.storage.store import EventStatus

from .conftest import cluster, run, start_all


def _positions(node, event_ids):
    metas = node.store.event_metas(event_ids)
    return [metas[e].stream_ordering for e in event_ids]


def test_history_before_a_join_is_backfilled_oldest_last_with_positions_below_all_others():
    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("u0"), {"preset": "public_chat"})
            history = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(250)
            ]
            join_id = await b.fed.join(room_id, b.user("u1"), via=[a.server_name])
            await trio.sleep(2)  # any catch-up the join sets off
            assert not any(b.has(e) for e in history)
            # The join's prev event is history to fetch on demand, not a gap to fill.
            assert b.engine.gaps(room_id) == []
            assert b.engine.backward_extremities(room_id) == [history[-1]]
            join_position = b.store.event_meta(join_id).stream_ordering
            assert join_position > 0

            rounds = []
            while got := await b.fed.sync.backfill(room_id, 100):
                rounds.append(got)
            assert len(rounds) >= 3 and all(r <= 100 for r in rounds), rounds
            assert all(b.has(e) for e in history)
            # Down to the create event: nothing older exists.
            assert b.engine.backward_extremities(room_id) == []
            positions = _positions(b, history)
            assert all(p < 0 for p in positions)
            assert positions == sorted(positions)  # the DAG's order, oldest lowest
            # The room's first events, held as outliers after the join, are now
            # in the DAG and older still.
            create_id = b.store.room(room_id).create_event_id
            create = b.store.event_meta(create_id)
            assert create.status == EventStatus.ACCEPTED
            assert create.stream_ordering < positions[0]
            # History never becomes a forward extremity, nor moves the stream.
            assert b.store.forward_extremities(room_id) == [join_id]
            assert b.store.max_stream_ordering() == join_position
            assert b.store.check_consistency() == []
            nursery.cancel_scope.cancel()

    run(main)


def test_backfill_with_no_server_to_ask_is_an_empty_answer():
    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("u0"), {"preset": "public_chat"})
            sent = [await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(5)]
            await b.fed.join(room_id, b.user("u1"), via=[a.server_name])
            a.stop()
            assert await b.fed.sync.backfill(room_id, 10) == 0
            assert b.engine.backward_extremities(room_id) == [sent[-1]]  # still to be had
            nursery.cancel_scope.cancel()

    run(main)
