"""Delivery without a full mesh, over a MemoryHub: pushes, relays, pulls, queues, backoff."""

from __future__ import annotations

import itertools

import trio

from p2pserver.federation import FederationConfig
from p2pserver.federation.fanout import push_targets

from .conftest import cluster, run, same_heads, shared_room, start_all, wait_until


def test_events_flow_both_ways_between_two_nodes():
    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            hello = await a.engine.send_message(room_id, a.user("u0"), {"body": "hello"})
            hi = await b.engine.send_message(room_id, b.user("u1"), {"body": "hi"})
            await wait_until(lambda: b.has(hello) and a.has(hi))
            await wait_until(lambda: same_heads([a, b], room_id))
            nursery.cancel_scope.cancel()

    run(main)


def test_an_event_reaches_a_member_never_connected_to_its_origin():
    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.set_link(a.server_name, c.server_name, up=False)
            from_a = await a.engine.send_message(room_id, a.user("u0"), {"body": "via b"})
            from_c = await c.engine.send_message(room_id, c.user("u2"), {"body": "back via b"})
            await wait_until(lambda: c.has(from_a) and a.has(from_c), timeout=10)
            assert not hub.is_connected(a.server_name, c.server_name)
            nursery.cancel_scope.cancel()

    run(main)


def test_invite_reaches_a_server_only_another_member_can_reach():
    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            hub.set_link(a.server_name, c.server_name, up=False)
            await c.start(nursery)
            invite = await a.fed.invite(room_id, a.user("u0"), c.user("carol"))
            await wait_until(lambda: c.has(invite), timeout=20)
            join = await c.fed.join(room_id, c.user("carol"))
            await wait_until(lambda: a.has(join), timeout=20)
            everyone = {a.server_name, b.server_name, c.server_name}
            assert a.store.joined_servers(room_id) == everyone
            nursery.cancel_scope.cancel()

    run(main)


def test_fan_out_per_event_per_node_is_bounded_and_every_server_gets_it():
    fanout = 3
    config = FederationConfig(fanout=fanout, sync_interval=3600, announce_delay=5.0)

    async def main():
        _, nodes = cluster(12, config=config)
        sent: dict[str, dict[str, set[str]]] = {}  # event -> sender -> destinations
        for node in nodes:
            original = node.fed.client.send_transaction

            async def counting(destination, txn_id, *, pdus, _node=node, _orig=original, **kw):
                answer = await _orig(destination, txn_id, pdus=pdus, **kw)
                for event_id in answer:
                    sent.setdefault(event_id, {}).setdefault(_node.server_name, set()).add(
                        destination
                    )
                return answer

            node.fed.client.send_transaction = counting
        async with trio.open_nursery() as nursery:
            await start_all(nursery, nodes)
            room_id = await shared_room(nodes)
            event_id = await nodes[5].engine.send_message(
                room_id, nodes[5].user("u5"), {"body": "x"}
            )
            await wait_until(lambda: all(n.has(event_id) for n in nodes), timeout=4)
            pushes = sent[event_id]
            assert all(len(d) <= fanout for d in pushes.values()), pushes
            # A tree: every other server got it exactly once, by push alone.
            receivers = [d for dests in pushes.values() for d in dests]
            assert sorted(receivers) == sorted(n.server_name for n in nodes if n is not nodes[5])
            assert len(pushes) < len(nodes)  # leaves do not push
            nursery.cancel_scope.cancel()

    run(main)


def test_push_targets_form_a_tree_over_the_room():
    _, nodes = cluster(20)
    servers = {n.server_name for n in nodes}

    class E:  # the fields push_targets reads
        event_id = "$abc"
        type = "m.room.message"
        state_key = None
        origin = nodes[0].server_name

    reached = {E.origin}
    frontier = [E.origin]
    while frontier:
        server = frontier.pop()
        targets = push_targets(E, server, servers, 3, received_from=None)  # type: ignore[arg-type]
        assert len(targets) <= 3 and not reached & set(targets)
        reached |= set(targets)
        frontier += targets
    assert reached == servers


def test_catch_up_after_a_partition_heals():
    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            hub.partition([a.server_name], [b.server_name, c.server_name])
            left = [await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(5)]
            right = [await b.engine.send_message(room_id, b.user("u1"), {"n": i}) for i in range(5)]
            await trio.sleep(1)
            assert not any(b.has(e) for e in left) and not any(a.has(e) for e in right)
            hub.heal()
            await wait_until(
                lambda: all(n.has(e) for n in (a, b, c) for e in left + right), timeout=40
            )
            await a.engine.send_message(room_id, a.user("u0"), {"body": "merge"})
            await wait_until(lambda: same_heads([a, b, c], room_id), timeout=40)
            assert a.engine.room_state(room_id) == c.engine.room_state(room_id)
            nursery.cancel_scope.cancel()

    run(main)


def test_periodic_pull_heals_without_any_new_connection_or_event():
    # Pushes disabled in effect (fan-out 1, relays to one server), links up: the
    # periodic round must still bring every server every event.
    config = FederationConfig(fanout=1, sync_interval=10.0, announce_delay=3600.0)

    async def main():
        hub, nodes = cluster(4, config=config)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, nodes)
            room_id = await shared_room(nodes)
            # Drop every push: nodes 1-3 can only learn by pulling from each other.
            for node in nodes:

                async def refuse(*args, **kwargs):
                    from p2pserver.federation.client import FederationError

                    raise FederationError("dropped by the test", unreachable=True)

                node.fed.client.send_transaction = refuse
            event_id = await nodes[0].engine.send_message(room_id, nodes[0].user("u0"), {"b": 1})
            await wait_until(lambda: all(n.has(event_id) for n in nodes), timeout=60)
            nursery.cancel_scope.cancel()

    run(main)


def test_periodic_rounds_keep_each_servers_own_phase():
    # Servers started together must not pull in the same instant: each
    # server's rounds keep a phase of its own, the first one between one and
    # two intervals after start, then one every interval.
    interval = 100.0

    async def main():
        _, nodes = cluster(6, config=FederationConfig(sync_interval=interval))
        rounds: dict[str, list[float]] = {n.server_name: [] for n in nodes}
        for node in nodes:
            original = node.fed.sync.sync_round

            def counting(_name=node.server_name, _orig=original):
                rounds[_name].append(trio.current_time())
                return _orig()

            node.fed.sync.sync_round = counting
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            await start_all(nursery, nodes)
            await trio.sleep(4.5 * interval)
            nursery.cancel_scope.cancel()
        firsts = []
        for times in rounds.values():
            assert len(times) >= 3, times
            assert interval <= times[0] - start < 2 * interval + 1, times
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(abs(g - interval) < 1e-6 for g in gaps), gaps
            firsts.append(times[0])
        assert len({round(t, 3) for t in firsts}) == len(nodes), firsts

    run(main)


def test_node_that_was_offline_catches_up_through_another_member():
    async def main():
        hub, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b, c])
            c.stop()
            sent = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(120)
            ]
            await wait_until(lambda: b.has(sent[-1]))
            a.stop()  # the origin is gone; c must get everything from b
            c.restart_objects()
            await c.start(nursery)
            await wait_until(lambda: all(c.has(e) for e in sent), timeout=60)
            assert c.engine.room_state(room_id) == b.engine.room_state(room_id)
            nursery.cancel_scope.cancel()

    run(main)


def test_queued_events_survive_a_restart_and_are_delivered(tmp_path):
    async def main():
        _, (a, b) = cluster(2, store_path=None)
        # a keeps its store in a file, as a node does
        a.store.close()
        a.store_path = tmp_path / "a.db"
        a.restart_objects()
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            b.stop()
            queued = [
                await a.engine.send_message(room_id, a.user("u0"), {"n": i}) for i in range(7)
            ]
            await trio.sleep(5)
            assert a.store.outbound.pending(b.server_name) == 7
            a.stop()  # a "crash": nothing but the committed queue survives
            a.restart_objects()
            assert a.store.outbound.pending(b.server_name) == 7
            # b comes back with no pull to help: only a's queue can deliver.
            b.restart_objects()
            b.fed.sync.exchange = _no_exchange  # type: ignore[method-assign]
            b.fed.sync.catch_up = _no_catch_up  # type: ignore[method-assign]
            await b.start(nursery)
            await a.start(nursery)
            await wait_until(lambda: all(b.has(e) for e in queued), timeout=30)
            await wait_until(lambda: a.store.outbound.pending(b.server_name) == 0)
            nursery.cancel_scope.cancel()

    run(main)


async def _no_exchange(*args, **kwargs):
    return 0


async def _no_catch_up(*args, **kwargs):
    return 0


def test_backoff_grows_while_unreachable_and_resets_when_the_peer_reappears():
    config = FederationConfig(
        fanout=4, sync_interval=3600, announce_delay=0.2, backoff_initial=1.0, backoff_max=1000.0
    )

    async def main():
        hub, (a, b) = cluster(2, config=config)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await shared_room([a, b])
            hub.set_link(a.server_name, b.server_name, up=False)
            event_id = await a.engine.send_message(room_id, a.user("u0"), {"body": "later"})
            await trio.sleep(200)  # failures at ~1, 2, 4, ... 128 s: the next try is far off
            backoff = a.fed.sender.backing_off()
            assert b.server_name in backoff and backoff[b.server_name] - trio.current_time() > 30
            assert not b.has(event_id)
            hub.set_link(a.server_name, b.server_name, up=True)
            start = trio.current_time()
            await b.net.connect(a.server_name)  # b reappears: a peer event at a
            await wait_until(lambda: b.has(event_id), step=0.01)
            assert trio.current_time() - start < 2
            assert b.server_name not in a.fed.sender.backing_off()
            nursery.cancel_scope.cancel()

    run(main)


def test_remote_join_through_a_resident_server():
    async def main():
        _, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b])
            # c has never seen the room: it joins the public room through b.
            assert not c.store.forward_extremities(room_id)
            join = await c.fed.join(room_id, c.user("carol"), via=[b.server_name])
            await wait_until(lambda: a.has(join) and b.has(join), timeout=20)
            msg = await c.engine.send_message(room_id, c.user("carol"), {"body": "hi all"})
            await wait_until(lambda: a.has(msg) and b.has(msg), timeout=20)
            nursery.cancel_scope.cancel()

    run(main)


def test_a_transaction_too_big_for_one_frame_goes_as_smaller_ones():
    async def main():
        _, (a, b) = cluster(2)
        got: list[int] = []

        async def on_blob(origin, content):
            got.append(content["i"])

        b.fed.on_edu("org.example.blob", on_blob)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            for i in range(40):  # 40 x 120 kB: more than one 4 MiB frame
                a.fed.send_edu(b.server_name, "org.example.blob", {"i": i, "blob": "x" * 120_000})
            await wait_until(lambda: len(got) == 40)
            assert sorted(got) == list(range(40))
            assert a.store.outbound.pending(b.server_name) == 0
            nursery.cancel_scope.cancel()

    run(main)
