"""Servers holding the same events resolve the same state, even when one of them soft-failed an event."""

from __future__ import annotations

import trio

from p2pserver.federation.merging import MERGE_EVENT_TYPE, unreconciled
from p2pserver.storage.store import EventStatus

from .conftest import cluster, run, shared_room, start_all, wait_until


def test_a_soft_failed_extremity_is_merged_away():
    """a kicks c while cut off from b and c; meanwhile c sets state on b's side.
    After the heal a soft-fails c's event (c is kicked in a's state), so a's
    extremities keep the event c built on, while b's hold c's event: both hold
    every event, and their states differ. b must merge (the converge fuzzer,
    seed 15, stayed diverged for good)."""

    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            power = a.store.load_event(a.store.current_state(room_id)[("m.room.power_levels", "")])
            assert power is not None
            users = {**power.content["users"], b.user("u1"): 50, c.user("u2"): 50}
            levels = await a.engine.send_event(
                room_id,
                a.user("u0"),
                "m.room.power_levels",
                {**power.content, "users": users},
                state_key="",
            )
            await wait_until(lambda: b.has(levels) and c.has(levels))
            hub.partition([a.server_name], [b.server_name, c.server_name])
            kick = await a.engine.kick(room_id, a.user("u0"), c.user("u2"))
            first = await b.engine.send_event(
                room_id, b.user("u1"), "org.test", {"v": "b"}, state_key="x"
            )
            await wait_until(lambda: c.has(first))
            second = await c.engine.send_event(
                room_id, c.user("u2"), "org.test", {"v": "c"}, state_key="x"
            )
            await wait_until(lambda: b.has(second))
            hub.heal()

            def soft_failed_at_a() -> bool:
                meta = a.store.event_meta(second)
                return meta is not None and meta.status == EventStatus.SOFT_FAILED

            await wait_until(lambda: soft_failed_at_a() and b.has(kick), timeout=60)
            # The divergence this is about: same events, different states.
            assert a.store.current_state(room_id) != b.store.current_state(room_id)
            assert unreconciled(b.store, room_id, a.store.forward_extremities(room_id))
            assert not unreconciled(a.store, room_id, b.store.forward_extremities(room_id))

            await wait_until(
                lambda: a.store.current_state(room_id) == b.store.current_state(room_id),
                timeout=300,
            )
            assert a.fed.sync.merger.merges == 0
            assert b.fed.sync.merger.merges == 1
            (head,) = a.store.forward_extremities(room_id)
            merge = a.store.load_event(head)
            assert merge is not None and merge.type == MERGE_EVENT_TYPE
            assert set(merge.prev_event_ids) == {kick, second}
            nursery.cancel_scope.cancel()

    run(main)
