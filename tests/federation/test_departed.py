"""Every event reaches every server joined when it was sent, even one that left or was kicked since."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from p2pserver.engine.engine import Forbidden
from p2pserver.federation.fanout import EventTree
from p2pserver.rooms.events import Event
from p2pserver.storage.store import EventStatus

from .conftest import (
    CONFIG,
    cluster,
    is_whole,
    run,
    shared_room,
    start_all,
    stripped_copy,
    wait_until,
)


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
            # Walking back to where it was last joined (its view of the room):
            # what it may not see comes redacted.
            answer = await a.fed.server.on_get_missing_events(
                c.server_name, {**body, "latest_events": [after]}
            )
            events = {Event(p, version).event_id: p for p in answer["events"]}
            assert events.keys() == {kick, message}
            assert events[kick]["content"]["membership"] == "leave"
            # No walk from, or to, only events it was not joined at.
            try:
                await a.fed.server.on_get_missing_events(
                    c.server_name, {**body, "earliest_events": [after], "latest_events": [after]}
                )
            except Forbidden:
                pass
            else:
                raise AssertionError("a departed server walked back from after its kick")
            nursery.cancel_scope.cancel()

    run(main)


def test_a_removed_server_that_never_heard_of_its_removal_learns_it():
    """c is kicked, and both pushes of the kick to it are lost: its own view
    still has it joined. Its pull must be answered so it learns the kick, and
    what came after comes redacted (found by the converge fuzzer, seed 13,
    where the removal followed from merging branches, so no push targeted c)."""

    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.partition([c.server_name], [a.server_name, b.server_name])
            kick = await a.engine.kick(room_id, a.user("u0"), c.user("u2"))
            secret = await a.engine.send_message(room_id, a.user("u0"), {"body": "not for c"})
            await wait_until(lambda: b.has(secret))
            for node in (a, b):  # every push to c is lost
                node.store.outbound.ack(c.server_name, 2**62)
            hub.heal()
            await trio.sleep(1)
            assert c.store.current_membership(room_id, c.user("u2")) == "join"
            c.fed.sync.sync_round()
            await wait_until(lambda: c.has(kick), timeout=60)
            await wait_until(lambda: c.store.current_membership(room_id, c.user("u2")) == "leave")
            copy = c.store.load_event(secret)
            assert copy is not None and copy.redacted and "body" not in copy.content
            nursery.cancel_scope.cancel()

    run(main)


def test_a_relay_that_pulled_an_event_passes_it_on_to_a_child_that_left():
    """fanout 1: the event's tree is a chain origin -> first -> second. ``first``
    gets the event by a pull (its push was lost), and ``second`` has left, so it
    cannot pull: ``first`` must still pass it on (found by the converge fuzzer,
    seed 12)."""

    async def main():
        config = dataclasses.replace(CONFIG, fanout=1)
        hub, (a, x, y) = cluster(3, config=config)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, x, y])
            room_id = await shared_room([a, x, y])
            nodes = {n.server_name: n for n in (a, x, y)}
            for other in (x, y):
                hub.set_link(a.server_name, other.server_name, up=False)
            message = await a.engine.send_message(room_id, a.user("u0"), {"body": "owed"})
            order = EventTree(message, a.server_name, a.store.joined_servers(room_id)).order()
            first, second = nodes[order[1]], nodes[order[2]]
            user = second.user("u1" if second is x else "u2")
            await second.engine.leave(room_id, user)
            await wait_until(lambda: second.server_name not in first.store.joined_servers(room_id))
            # The push to ``first`` is lost: it can only pull the message.
            a.store.outbound.ack(first.server_name, 2**62)
            hub.set_link(a.server_name, first.server_name, up=True)
            await wait_until(lambda: first.has(message), timeout=60)
            await wait_until(lambda: second.has(message), timeout=60)
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.parametrize("removal", ["kick", "ban"])
def test_a_relay_passes_on_an_event_it_soft_failed_unless_its_sender_is_banned(removal):
    """fanout 1: c's message goes c -> first -> second. c was kicked, and first
    knows it, so first soft fails the message; second can only get it from
    first, since nobody can pull a soft-failed event (found by the converge
    fuzzer, seed 16). Not if c was banned: a ban is meant to stick, and a
    banned server could have the room carry any number of forked events."""

    async def main():
        config = dataclasses.replace(CONFIG, fanout=1)
        hub, (a, b, c) = cluster(3, config=config)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            nodes = {n.server_name: n for n in (a, b, c)}
            hub.partition([c.server_name], [a.server_name, b.server_name])
            remove = a.engine.kick if removal == "kick" else a.engine.ban
            removed = await remove(room_id, a.user("u0"), c.user("u2"))
            await wait_until(lambda: b.has(removed))
            message = await c.engine.send_message(room_id, c.user("u2"), {"body": "late"})
            order = EventTree(message, c.server_name, c.store.joined_servers(room_id)).order()
            first, second = nodes[order[1]], nodes[order[2]]
            hub.set_link(c.server_name, first.server_name, up=True)

            await wait_until(lambda: first.status(message) == EventStatus.SOFT_FAILED, timeout=60)
            if removal == "kick":
                await wait_until(
                    lambda: second.status(message) == EventStatus.SOFT_FAILED, timeout=60
                )
            else:
                await trio.sleep(120)
                assert second.store.event_meta(message) is None
            nursery.cancel_scope.cancel()

    run(main)


def test_a_message_received_stripped_while_joined_is_fetched_whole():
    """A server that has not learnt of c's join yet serves c a message
    stripped; c is joined, so it must get the whole copy from another server
    (found by the outage scenario: one node kept a message stripped for good)."""

    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.partition([c.server_name], [a.server_name, b.server_name])
            message = await a.engine.send_message(room_id, a.user("u0"), {"body": "whole"})
            await wait_until(lambda: b.has(message))
            for node in (a, b):  # every push to c is lost
                node.store.outbound.ack(c.server_name, 2**62)
            hub.heal()
            await c.engine.receive_pdu(b.server_name, stripped_copy(a, room_id, message))
            copy = c.store.load_event(message)
            assert copy is not None and copy.redacted
            await wait_until(lambda: is_whole(c, message), timeout=120)
            whole = c.store.load_event(message)
            assert whole is not None and whole.content["body"] == "whole"
            nursery.cancel_scope.cancel()

    run(main)
