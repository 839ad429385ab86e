"""Faults a review of the reconciling changes found (merging.py, judging soft-failed
events again, pulls by servers no longer in the room): bounded work, whole chains."""

from __future__ import annotations

import trio

from p2pserver.storage.store import EventStatus

from .conftest import cluster, run, set_power, shared_room, start_all, wait_until


def test_judging_a_soft_failed_head_again_is_not_repeated_for_every_message():
    """A peer that keeps reporting a head we soft failed for good (its sender is
    banned) costs one state resolution per change of our *state*, not one per
    message: the judgement depends only on the state groups of our extremities
    and the state before the event, and a message changes neither. Keyed by the
    extremity IDs (engine.py reconsider_soft_failed), every message in an active
    room makes each exchange with that peer resolve again, up to 20 heads each."""

    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.partition([c.server_name], [a.server_name, b.server_name])
            ban = await a.engine.ban(room_id, a.user("u0"), c.user("u2"))
            spam = await c.engine.send_message(room_id, c.user("u2"), {"body": "spam"})
            hub.set_link(a.server_name, c.server_name, up=True)
            await wait_until(lambda: a.status(spam) == EventStatus.SOFT_FAILED, timeout=60)
            hub.partition([c.server_name], [a.server_name, b.server_name])
            assert a.store.current_membership(room_id, c.user("u2")) == "ban"
            assert a.has(ban)

            resolved: list[str] = []
            resolve = a.engine._resolve

            def counting(event, state_sets):
                resolved.append(event.event_id)
                return resolve(event, state_sets)

            a.engine._resolve = counting  # type: ignore[method-assign]
            state = a.store.room(room_id).current_state_group  # type: ignore[union-attr]
            for i in range(5):
                await a.engine.send_message(room_id, a.user("u0"), {"body": f"m{i}"})
                # The exchange with c (sync.py exchange -> merger.reconcile).
                await a.fed.sync.merger.reconcile(c.server_name, room_id, [spam])
            assert a.store.room(room_id).current_state_group == state  # type: ignore[union-attr]
            assert a.status(spam) == EventStatus.SOFT_FAILED
            assert resolved.count(spam) <= 1, f"{resolved.count(spam)} resolutions for 5 messages"
            nursery.cancel_scope.cancel()

    run(main)


def test_room_heads_from_a_server_never_in_the_room_costs_no_state_lookups():
    """handle_room_heads (sync.py) now evaluates, for an origin not in the room,
    server_joined_at on every head it names: each an uncached state map load
    plus all member events of the room (engine.py joined_servers_at), for up to
    20 rooms x 20 heads per request, and the cache is dropped at 4096 groups.
    A server that never had a member in the room can have no head it was joined
    after: it must cost nothing (as before 8d5e0c5)."""

    async def main():
        hub, (a, b, c, stranger) = cluster(4)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c, stranger])
            room_id = await shared_room([a, b, c])
            for i in range(8):  # events with distinct state groups
                await a.engine.send_event(
                    room_id, a.user("u0"), "org.test", {"i": i}, state_key=str(i)
                )
            heads = [
                e
                for e in a.store.current_state(room_id).values()
                if a.store.event_meta(e) is not None
            ][:20]
            assert len(heads) >= 10
            loads: list[int] = []
            state_map = a.store.state_map

            def counting(group):
                loads.append(group)
                return state_map(group)

            a.store.state_map = counting  # type: ignore[method-assign]
            answer = await a.fed.sync.handle_room_heads(
                stranger.server_name, {"rooms": {room_id: heads}}
            )
            a.store.state_map = state_map  # type: ignore[method-assign]
            assert answer == {"rooms": {}}
            assert loads == [], f"{len(loads)} state loads for a stranger's request"
            nursery.cancel_scope.cancel()

    run(main)


def test_every_soft_failed_event_of_a_head_judged_again_is_accepted_with_it():
    """As test_merging's seed-17 case, but c sends two messages. b soft fails
    both on one-sided knowledge; when a's branch undoes the kick, b judges a's
    head (the second message) again and accepts it, but the first one, which
    passes the very same judgement, stays soft failed for good (_followed now
    holds for it): b's users never see it while a's do."""

    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            levels = await set_power(a, room_id, {b.user("u1"): 50})
            await wait_until(lambda: b.has(levels) and c.has(levels))
            hub.partition([a.server_name], [b.server_name], [c.server_name])
            await b.engine.kick(room_id, b.user("u1"), c.user("u2"))
            demote = await set_power(a, room_id, {b.user("u1"): 0})
            first = await c.engine.send_message(room_id, c.user("u2"), {"body": "one"})
            second = await c.engine.send_message(room_id, c.user("u2"), {"body": "two"})
            hub.set_link(b.server_name, c.server_name, up=True)
            await wait_until(
                lambda: b.status(first) == b.status(second) == EventStatus.SOFT_FAILED,
                timeout=60,
            )
            hub.heal()
            await wait_until(lambda: b.has(demote) and a.has(second), timeout=60)
            await wait_until(lambda: b.has(second), timeout=120)
            assert b.store.current_membership(room_id, c.user("u2")) == "join"
            assert a.has(first)
            await trio.sleep(120)
            assert b.has(first), f"first message is {b.status(first)} at b, accepted at a"
            nursery.cancel_scope.cancel()

    run(main)
