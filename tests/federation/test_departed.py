"""Every event reaches every server joined when it was sent, even one that left or was kicked since."""

from __future__ import annotations

import trio

from p2pserver.engine.engine import Forbidden
from p2pserver.rooms.events import Event

from .conftest import cluster, run, shared_room, start_all, wait_until


def test_the_origin_pushes_a_message_to_a_server_kicked_before_it_arrived():
    async def main():
        hub, (a, b, c) = cluster(3)
        pushed_to_c: list[str] = []
        receive = c.engine.receive_transaction

        async def record(origin, pdus):
            pdus = list(pdus)
            version = c.store.room_version(room_id)
            assert version is not None
            pushed_to_c.extend(Event(p, version).event_id for p in pdus if origin == a.server_name)
            return await receive(origin, pdus)

        c.engine.receive_transaction = record  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.partition([c.server_name], [a.server_name, b.server_name])
            message = await a.engine.send_message(room_id, a.user("u0"), {"body": "for c too"})
            assert c.server_name in (a.engine.joined_servers_at(message) or ())
            await a.engine.kick(room_id, a.user("u0"), c.user("u2"))
            await trio.sleep(1)
            assert c.server_name not in a.store.joined_servers(room_id)
            assert not c.has(message)
            hub.heal()
            await wait_until(lambda: message in pushed_to_c, timeout=60)
            await wait_until(lambda: c.has(message), timeout=60)
            nursery.cancel_scope.cancel()

    run(main)


def test_a_kicked_server_may_walk_back_over_what_it_was_joined_for():
    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.partition([c.server_name], [a.server_name, b.server_name])
            before = a.store.forward_extremities(room_id)
            message = await a.engine.send_message(room_id, a.user("u0"), {"body": "for c too"})
            kick = await a.engine.kick(room_id, a.user("u0"), c.user("u2"))
            after = await a.engine.send_message(room_id, a.user("u0"), {"body": "not for c"})
            body = {"room_id": room_id, "earliest_events": before, "limit": 10}
            answer = await a.fed.server.on_get_missing_events(
                c.server_name, {**body, "latest_events": [kick]}
            )
            version = a.store.room_version(room_id)
            assert version is not None
            assert [Event(p, version).event_id for p in answer["events"]] == [message]
            # Nothing from after it left, and no walk from an event it was not joined at.
            try:
                await a.fed.server.on_get_missing_events(
                    c.server_name, {**body, "latest_events": [after]}
                )
            except Forbidden:
                pass
            else:
                raise AssertionError("a departed server walked back from after its kick")
            nursery.cancel_scope.cancel()

    run(main)
