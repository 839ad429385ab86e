"""The simulated network alone (no node code): each feature of the model, by its timing and counts."""

from __future__ import annotations

import math
from contextlib import asynccontextmanager

import pytest
import trio

from p2pserver.transport.framing import Request, Response, encode_request, encode_response
from p2pserver.transport.network import PeerUnreachable, RequestTimeout
from sims.determinism import Seeds, deterministic_run
from sims.distributions import constant, parse_distribution
from sims.network import MDNS_PACKET_BYTES, LinkProfile, SimHub

LATENCY = 0.01


def run(fn, seed=0):
    return deterministic_run(fn, seed=seed)


async def echo(origin, method, body):
    if method == "sleep":
        await trio.sleep(body["s"])
    return {"echo": body, "from": origin}


def make(count, *, latency=LATENCY, seed=0, know=True, **kwargs):
    profile = kwargs.pop("profile", None) or LinkProfile(constant(latency))
    hub = SimHub(Seeds(seed), default=profile, **kwargs)
    nets = [hub.network(f"n{i}") for i in range(count)]
    for net in nets:
        net.set_request_handler(echo)
        if know:
            for other in nets:
                if other is not net:
                    net.add_peer_address(other.server_name, [f"/sim/{other.server_name}"])
    return hub, nets


@asynccontextmanager
async def running(hub, nets):
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        stops = []
        for net in nets:
            scope = trio.CancelScope()
            stops.append(scope)

            async def serve(net=net, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    async with net.running():
                        task_status.started()
                        await trio.sleep_forever()

            await nursery.start(serve)
        yield stops
        nursery.cancel_scope.cancel()


async def timed(coro):
    start = trio.current_time()
    result = await coro
    return trio.current_time() - start, result


def test_dial_then_round_trips_at_the_link_latency():
    async def main():
        hub, (a, b) = make(2, dial_round_trips=2)
        async with running(hub, [a, b]):
            first, answer = await timed(a.request("n1", "ping", {"x": 1}))
            second, _ = await timed(a.request("n1", "ping", {"x": 2}))
            back, _ = await timed(b.request("n0", "ping", {"x": 3}))  # same connection
        assert answer == {"echo": {"x": 1}, "from": "n0"}
        assert first == pytest.approx(2 * 2 * LATENCY + 2 * LATENCY)
        assert second == pytest.approx(2 * LATENCY)
        assert back == pytest.approx(2 * LATENCY)

    run(main)


def test_frames_count_at_their_cbor_size():
    async def main():
        hub, (a, b) = make(2)
        async with running(hub, [a, b]):
            await a.request("n1", "ping", {"payload": "x" * 500})
        request = encode_request(Request(1, "ping", {"payload": "x" * 500}))
        response = encode_response(Response(1, ok={"echo": {"payload": "x" * 500}, "from": "n0"}))
        assert a.traffic.messages_sent == 1 and a.traffic.bytes_sent == len(request)
        assert b.traffic.bytes_sent == len(response)
        assert a.traffic.bytes_received == len(response)
        assert hub.traffic.bytes_sent == len(request) + len(response)
        assert hub.traffic.bytes_by_method == {"ping": len(request) + len(response)}

    run(main)


def test_bandwidth_serialises_the_frames_of_a_connection():
    bandwidth = 80_000.0  # 10 kB/s

    async def main():
        hub, (a, b) = make(2, profile=LinkProfile(constant(0.0), bandwidth=bandwidth))
        async with running(hub, [a, b]):
            await a.connect("n1")
            body = {"payload": "y" * 2000}
            size = len(encode_request(Request(2, "ping", body)))
            reply = len(encode_response(Response(2, ok={"echo": body, "from": "n0"})))
            one, _ = await timed(a.request("n1", "ping", body))
            start = trio.current_time()
            done = []
            async with trio.open_nursery() as nursery:
                for _ in range(3):

                    async def go():
                        await a.request("n1", "ping", body)
                        done.append(trio.current_time() - start)

                    nursery.start_soon(go)
            return size, reply, one, done

    size, reply, one, done = run(main)
    tx = size * 8 / bandwidth
    assert one == pytest.approx(tx + reply * 8 / bandwidth)  # the request, then the response
    # Three requests share the uplink: they finish one transmission time apart.
    gaps = [b - a for a, b in zip(done, done[1:], strict=False)]
    assert all(g == pytest.approx(tx, rel=0.05) for g in gaps), (tx, done)


def test_jittery_latency_keeps_frames_in_order_and_follows_the_distribution():
    profile = LinkProfile(parse_distribution({"dist": "uniform", "low": 0.01, "high": 0.09}))

    async def main():
        hub, (a, b) = make(2, profile=profile)
        arrivals = []

        async def record(origin, method, body):
            arrivals.append((body["k"], trio.current_time()))
            return {}

        b.set_request_handler(record)
        async with running(hub, [a, b]):
            await a.connect("n1")
            times = []
            for k in range(200):
                times.append((await timed(a.request("n1", "ping", {"k": -1 - k})))[0])
            arrivals.clear()
            async with trio.open_nursery() as nursery:
                for k in range(50):
                    nursery.start_soon(a.request, "n1", "ping", {"k": k})
                    await trio.sleep(0.001)  # sent 1 ms apart, latencies differ by up to 80 ms
        return sorted(arrivals), times

    arrivals, times = run(main)
    # A stream: no frame arrives before one sent earlier (head-of-line blocking).
    assert [k for k, _ in arrivals] == list(range(50))
    assert all(t1 <= t2 for (_, t1), (_, t2) in zip(arrivals, arrivals[1:], strict=False))
    assert len({t for _, t in arrivals}) < 50  # and some did wait behind a slower one
    mean = sum(times) / len(times)
    assert mean == pytest.approx(2 * 0.05, rel=0.1)  # two draws of mean 0.05 per round trip
    assert min(times) >= 0.02 and max(times) <= 0.18


def test_loss_is_repaired_by_retransmission_at_a_cost_in_time():
    async def main(loss):
        hub, (a, b) = make(2, profile=LinkProfile(constant(LATENCY), loss=loss), seed=3)
        async with running(hub, [a, b]):
            await a.connect("n1")
            start = trio.current_time()
            for k in range(100):
                assert (await a.request("n1", "ping", {"k": k}))["echo"] == {"k": k}
            return trio.current_time() - start, hub.retransmitted_frames, hub.connection_resets

    clean, clean_retx, _ = run(lambda: main(0.0))
    lossy, retx, resets = run(lambda: main(0.2))
    assert clean_retx == 0 and clean == pytest.approx(100 * 2 * LATENCY)
    assert retx > 10 and resets == 0
    assert lossy > clean + retx * 0.2 * 0.9  # each loss waits out a retransmission timeout


def test_a_frame_lost_too_often_resets_the_connection():
    async def main():
        hub, (a, b) = make(2, profile=LinkProfile(constant(LATENCY), loss=0.999), max_retransmits=2)
        hub.set_profile("n0", "n1", LinkProfile(constant(LATENCY)))  # dial on a clean link
        async with running(hub, [a, b]):
            await a.connect("n1")
            hub.set_profile("n0", "n1", LinkProfile(constant(LATENCY), loss=0.999))
            with pytest.raises(PeerUnreachable, match="retransmissions"):
                await a.request("n1", "ping", {})
            return hub.connection_resets, a.connected_peers()

    resets, connected = run(main)
    assert resets == 1 and connected == set()


def test_refused_partition_fails_fast_and_heals():
    async def main():
        hub, (a, b, c) = make(3, partition_mode="refuse")
        async with running(hub, [a, b, c]):
            await a.connect("n1")
            async with trio.open_nursery() as nursery:
                failures = []

                async def slow():
                    try:
                        await a.request("n1", "sleep", {"s": 5})
                    except PeerUnreachable as exc:
                        failures.append((trio.current_time(), str(exc)))

                nursery.start_soon(slow)
                await trio.sleep(1)
                cut_at = trio.current_time()
                hub.partition(["n0"], ["n1", "n2"])
            assert failures and failures[0][0] == cut_at  # in flight: fails at the cut
            spent, _ = await timed(_fails(a.request("n2", "ping", {}), PeerUnreachable))
            assert spent == pytest.approx(2 * LATENCY)  # refused after a round trip
            assert await b.request("n2", "ping", {})  # within a side, all is well
            hub.heal()
            assert await a.request("n1", "ping", {})

    run(main)


async def _fails(coro, error):
    with pytest.raises(error):
        await coro


def test_blackhole_partition_times_out_and_idle_connections_die():
    async def main():
        hub, (a, b) = make(2, partition_mode="blackhole", keepalive_timeout=30.0)
        async with running(hub, [a, b]):
            await a.connect("n1")
            hub.set_link("n0", "n1", up=False)
            assert a.connected_peers() == {"n1"}  # silence, not a refusal
            spent, _ = await timed(_fails(a.request("n1", "ping", {}, timeout=5), RequestTimeout))
            assert spent == pytest.approx(5)
            await trio.sleep(30)
            assert a.connected_peers() == set()  # the keep-alive gave up
            spent, _ = await timed(_fails(a.connect("n1", timeout=100), PeerUnreachable))
            assert spent == pytest.approx(hub.connect_timeout)  # SYNs unanswered
            hub.heal()
            assert await a.request("n1", "ping", {})

    run(main)


def test_frames_in_flight_across_a_blackhole_arrive_after_the_heal():
    async def main():
        hub, (a, b) = make(2, partition_mode="blackhole", max_retransmits=10)
        async with running(hub, [a, b]):
            await a.connect("n1")
            hub.set_link("n0", "n1", up=False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.request, "n1", "ping", {"late": True})
                await trio.sleep(3)
                hub.heal()
            return hub.retransmitted_frames, trio.current_time()

    retransmitted, _ = run(main)
    assert retransmitted >= 3  # 0.2 s, 0.4 s, 0.8 s, 1.6 s ... after the first loss


def test_crash_and_restart_make_a_new_incarnation():
    async def main():
        hub, (a, b) = make(2)
        async with running(hub, [a, b]) as stops:
            await a.request("n1", "ping", {})
            counters = b.traffic
            stops[1].cancel()  # b crashes
            await trio.sleep(0)
            assert not hub.is_running("n1") and a.connected_peers() == set()
            await _fails(a.request("n1", "ping", {}), PeerUnreachable)
            b2 = hub.network("n1")
            assert b2.known_peers() == set() and b2.traffic is counters
            b2.set_request_handler(echo)
            async with trio.open_nursery() as nursery:

                async def serve(task_status=trio.TASK_STATUS_IGNORED):
                    async with b2.running():
                        task_status.started()
                        await trio.sleep_forever()

                await nursery.start(serve)
                with pytest.raises(RuntimeError, match="replaced"):
                    async with b.running():
                        pass
                assert (await a.request("n1", "ping", {}))["from"] == "n0"
                assert counters.messages_sent == 2  # both incarnations' responses
                nursery.cancel_scope.cancel()

    run(main)


def test_mdns_finds_running_neighbours_on_the_segment_only():
    async def main():
        hub, nets = make(5, know=False)
        lan = LinkProfile(constant(0.002))
        hub.add_segment("home", ["n0", "n1", "n2", "n3"], lan, mdns_interval=60)
        hub.set_link("n3", "n0", up=False)  # n3 is on the segment but cut from n0
        async with running(hub, nets[:3]):
            await trio.sleep(1)
            known = {n.server_name: n.known_peers() for n in nets}
            connected = nets[0].connected_peers()
            # n3 starts late: the others learn it from its announcement.
            async with running(hub, [nets[3]]):
                await trio.sleep(0.1)
                late = {n.server_name: n.known_peers() for n in nets}
        return known, connected, late

    known, connected, late = run(main)
    assert known["n0"] == {"n1", "n2"} and known["n1"] == {"n0", "n2"}
    assert known["n4"] == set()  # not on the segment
    assert connected == {"n1", "n2"}  # neighbours are dialled at once
    assert late["n3"] == {"n1", "n2"} and "n3" in late["n1"] and "n3" not in late["n0"]


def test_mdns_traffic_is_counted_as_packets():
    async def main():
        hub, nets = make(3, know=False)
        hub.add_segment("home", ["n0", "n1", "n2"], LinkProfile(constant(0.001)), mdns_interval=100)
        async with running(hub, nets):
            await trio.sleep(150)  # one start-up round and one periodic round each
        return hub.traffic.bytes_by_method["mdns"]

    # each round: one announcement and two answers; 3 nodes x 2 rounds
    assert run(main) == 3 * 2 * 3 * MDNS_PACKET_BYTES


def test_dht_finds_addresses_with_latency_from_hop_count():
    async def main():
        hub, nets = make(16, know=False, dht=True)
        async with running(hub, nets):
            spent, _ = await timed(nets[0].request("n9", "ping", {}))
            return spent, hub.dht.lookups, hub.dht.found, nets[0].known_peers()

    spent, lookups, found, known = run(main)
    hops = math.ceil(math.log2(15 + 1))  # 15 reachable members
    assert (lookups, found) == (1, 1) and "n9" in known
    assert spent == pytest.approx(hops * 2 * LATENCY + 2 * 2 * LATENCY + 2 * LATENCY)


def test_dht_answers_only_from_the_queriers_partition():
    async def main():
        hub, nets = make(8, know=False, dht=True, dht_k=1)
        async with running(hub, nets):
            target = "n5"
            holder = hub.dht.holders(target)[0]
            asker = next(n for n in nets if n.server_name not in (target, holder))
            hub.cut([asker.server_name], [holder])
            await _fails(asker.request(target, "ping", {}), PeerUnreachable)
            lost = hub.dht.found
            hub.heal()
            await asker.request(target, "ping", {})
            return lost, hub.dht.found, hub.dht.lookups

    lost, found, lookups = run(main)
    assert (lost, found, lookups) == (0, 1, 2)


def _busy_trace(seed):
    trace = []

    async def main():
        profile = LinkProfile(
            parse_distribution({"dist": "lognormal", "median": 0.02, "sigma": 0.8}), loss=0.05
        )
        hub, nets = make(6, profile=profile, seed=seed)

        async def handler(origin, method, body):
            trace.append((trio.current_time(), "handle", origin, body["k"]))
            return {"k": body["k"]}

        for net in nets:
            net.set_request_handler(handler)
        async with running(hub, nets), trio.open_nursery() as nursery:
            for k in range(60):

                async def client(k=k):
                    src, dst = nets[k % 6], nets[(k * 5 + 1) % 6]
                    if src is dst:
                        dst = nets[(k + 1) % 6]
                    try:
                        await src.request(dst.server_name, "work", {"k": k}, timeout=1.0)
                        trace.append((trio.current_time(), "ok", k))
                    except Exception as exc:
                        trace.append((trio.current_time(), type(exc).__name__, k))

                nursery.start_soon(client)
                if k == 30:
                    hub.partition(["n0", "n1", "n2"], ["n3", "n4", "n5"])
                if k == 45:
                    hub.heal()
                await trio.sleep(0.01)
        trace.append(("end", hub.traffic.bytes_sent, hub.retransmitted_frames))

    run(main, seed=seed)
    return trace


def test_the_hub_is_deterministic_per_seed():
    first = _busy_trace(1)
    outcomes = {e[1] for e in first[:-1]}
    assert len(first) > 100 and {"ok", "PeerUnreachable"} <= outcomes
    assert _busy_trace(1) == first
    assert _busy_trace(2) != first
