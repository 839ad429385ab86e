"""Joining over federation: send_join state, history stripped while invited, EDUs."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import trio

from p2pserver.clientapi.edus import queue_receipt, queue_typing
from p2pserver.federation import protocol as p

from .conftest import Node, cluster, run, shared_room, start_all, wait_until


def _content(node: Node, event_id: str) -> dict[str, Any] | None:
    event = node.store.load_event(event_id)
    return dict(event.content) if event is not None else None


def test_a_remote_join_takes_the_send_join_state_and_pulls_nothing():
    async def main():
        _, (a, b) = cluster(2)
        asked: list[str] = []
        request = b.fed.client.request

        async def counting(destination: str, method: str, body: dict[str, Any]) -> Any:
            asked.append(method)
            return await request(destination, method, body)

        b.fed.client.request = counting  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("alice"), {"preset": "public_chat"})
            for i in range(60):  # more than /get_missing_events would fetch at once
                await a.engine.send_message(room_id, a.user("alice"), {"body": str(i)})
            join = await b.fed.join(room_id, b.user("bob"), via=[a.server_name])
            assert asked == [p.MAKE_JOIN, p.SEND_JOIN]
            assert b.has(join) and b.store.forward_extremities(room_id) == [join]
            assert b.engine.room_state(room_id) == a.engine.room_state(room_id)
            await wait_until(lambda: a.has(join))
            msg = await b.engine.send_message(room_id, b.user("bob"), {"body": "hi"})
            await wait_until(lambda: a.has(msg))
            reply = await a.engine.send_message(room_id, a.user("alice"), {"body": "hello"})
            await wait_until(lambda: b.has(reply))
            nursery.cancel_scope.cancel()

    run(main)


def test_history_stripped_while_invited_is_restored_after_the_join():
    async def main():
        _, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b], preset="private_chat")  # history "shared"
            alice, carol = a.user("u0"), c.user("carol")
            hello = await a.engine.send_message(room_id, alice, {"body": "hello"})
            hi = await b.engine.send_message(room_id, b.user("u1"), {"body": "hi"})
            await wait_until(lambda: a.has(hi) and b.has(hello))
            invite = await a.fed.invite(room_id, alice, carol)
            await wait_until(functools.partial(c.has, invite))
            # c's users are only invited: the history reached c stripped.
            assert c.has(hello) and _content(c, hello) == {}
            join = await c.fed.join(room_id, carol)
            await wait_until(lambda: a.has(join) and b.has(join))
            await wait_until(lambda: _content(c, hello) == {"body": "hello"})
            await wait_until(lambda: _content(c, hi) == {"body": "hi"})
            assert c.store.stripped_event_ids(room_id, limit=100) == []
            assert c.store.check_consistency() == []
            nursery.cancel_scope.cancel()

    run(main)


def test_typing_and_receipt_edus_wake_the_sender():
    async def main():
        _, (a, b) = cluster(2)
        got: list[tuple[str, float]] = []

        async def on_edu(edu_type: str, origin: str, content: dict[str, Any]) -> None:
            got.append((edu_type, trio.current_time()))

        for edu_type in ("m.typing", "m.receipt"):
            b.fed.on_edu(edu_type, functools.partial(on_edu, edu_type))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            last = a.store.forward_extremities(room_id)[0]
            await trio.sleep(5)  # every queue is empty and the sender waits
            api = SimpleNamespace(store=a.store, server_name=a.server_name)  # what edus.py uses
            start = trio.current_time()
            queue_typing(api, room_id, a.user("u0"), True)  # type: ignore[arg-type]
            await wait_until(lambda: len(got) == 1)
            queue_receipt(api, room_id, a.user("u0"), last, 1, None)  # type: ignore[arg-type]
            await wait_until(lambda: len(got) == 2)
            assert [t for t, _ in got] == ["m.typing", "m.receipt"]
            # Within a second or so (the rescan backstop is a minute).
            assert got[-1][1] - start < 2.0, got
            nursery.cancel_scope.cancel()

    run(main)


def test_stripped_history_is_restored_after_a_restart(tmp_path):
    async def main():
        hub, (a, b) = cluster(2)
        c = Node(hub, store_path=tmp_path / "c.db")
        for node, other in ((a, c), (b, c), (c, a), (c, b)):
            node.net.add_peer_address(other.server_name, [f"/memory/{other.server_name}"])
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b], preset="private_chat")
            hello = await a.engine.send_message(room_id, a.user("u0"), {"body": "hello"})
            invite = await a.fed.invite(room_id, a.user("u0"), c.user("carol"))
            await wait_until(functools.partial(c.has, invite))
            assert _content(c, hello) == {}
            join = await c.fed.join(room_id, c.user("carol"))
            c.stop()  # before anything was fetched again, or even the join sent
            assert _content(c, hello) == {}
            await trio.sleep(1)  # let it wind down
            c.restart_objects()
            await c.start(nursery)
            await wait_until(lambda: a.has(join) and b.has(join))
            await wait_until(lambda: _content(c, hello) == {"body": "hello"})
            nursery.cancel_scope.cancel()

    run(main)
