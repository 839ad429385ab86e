"""Paging back: history from before a node joined is fetched on demand with /backfill."""

from __future__ import annotations

import base64
import hashlib

import trio

from p2pserver.storage.store import EventStatus

from .conftest import cluster, run, start_all, wait_until


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


def test_two_clients_paging_back_at_once_both_get_history():
    """The second waits for the first, then goes on from where it left off."""

    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("u0"), {"preset": "public_chat"})
            for i in range(250):
                await a.engine.send_message(room_id, a.user("u0"), {"n": i})
            await b.fed.join(room_id, b.user("u1"), via=[a.server_name])
            got: list[int] = []

            async def page_back() -> None:
                got.append(await b.fed.sync.backfill(room_id, 50))

            async with trio.open_nursery() as clients:
                clients.start_soon(page_back)
                clients.start_soon(page_back)
            assert len(got) == 2 and min(got) > 0, got
            nursery.cancel_scope.cancel()

    run(main)


def test_events_missed_while_joined_are_never_taken_as_history():
    """A gap left while joined is filled as new events, not placed before our join."""

    async def main():
        _, (a, b) = cluster(2)

        async def no_fill(peer: str, room_id: str) -> int:
            return 0  # the fill has not run yet (or its peer was unreachable)

        b.fed.sync.fill_gaps = no_fill  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("u0"), {"preset": "public_chat"})
            before = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(5)
            ]
            join_id = await b.fed.join(room_id, b.user("u1"), via=[a.server_name])
            await wait_until(lambda: b.server_name in a.store.joined_servers(room_id))
            b.stop()
            missed = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(250)
            ]
            a.store.outbound.ack(b.server_name, 2**62)  # nothing queued brings them
            for node in (a, b):
                node.fed.sync.exchange = _no_exchange  # type: ignore[method-assign]
            await b.start(nursery)
            pdu = a.store.load_event(missed[-1]).get_pdu_json()  # type: ignore[union-attr]
            await b.engine.receive_pdu(a.server_name, pdu)
            assert b.has(missed[-1]) and b.engine.gaps(room_id)
            while await b.fed.sync.backfill(room_id, 50):
                pass
            assert all(b.has(e) for e in before)  # the history before the join
            join_position = b.store.event_meta(join_id).stream_ordering  # type: ignore[union-attr]
            placed = [m.stream_ordering for m in b.store.event_metas(missed).values()]
            assert all(p > join_position for p in placed if p is not None)  # outliers: unplaced
            nursery.cancel_scope.cancel()

    run(main)


def test_history_points_no_server_can_fill_do_not_crowd_out_the_others():
    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("u0"), {"preset": "public_chat"})
            history = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(30)
            ]
            await b.fed.join(room_id, b.user("u1"), via=[a.server_name])
            # Well-formed IDs of events nobody holds.
            unknown = [compute_event_id_like(f"nobody {i}") for i in range(150)]
            with b.store.transaction():
                b.store.add_gaps(room_id, unknown, auto=False)
            # A request names at most 100; those asked for in vain go last.
            got = [await b.fed.sync.backfill(room_id, 50) for _ in range(3)]
            assert sum(got) > 0, got
            assert all(b.has(e) for e in history)
            nursery.cancel_scope.cancel()

    run(main)


def compute_event_id_like(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def _no_exchange(*args, **kwargs):
    return 0
