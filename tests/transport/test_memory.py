import functools

import pytest
import trio
import trio.testing
from trio._core import _run as trio_run

from p2pserver.rooms.errors import AuthError
from p2pserver.transport import (
    FrameTooLarge,
    MemoryHub,
    PeerEvent,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
)
from p2pserver.transport.framing import (
    MAX_REQUEST_FRAME,
    Request,
    Response,
    encode_request,
    encode_response,
)


def run(fn, *args):
    """Run under a MockClock that jumps as soon as every task sleeps."""
    return trio.run(
        functools.partial(fn, *args), clock=trio.testing.MockClock(autojump_threshold=0)
    )


async def echo(origin, method, body):
    if method == "sleep":
        await trio.sleep(body["seconds"])
    if method == "forbidden":
        raise AuthError("not allowed")
    if method == "crash":
        raise RuntimeError("handler bug")
    if method == "not_a_dict":
        return ["oops"]
    return {"origin": origin, "method": method, "body": body}


def make(hub, *names):
    nodes = [hub.network(name) for name in names]
    for node in nodes:
        node.set_request_handler(echo)
        for other in nodes:
            if other is not node:
                node.add_peer_address(other.server_name, other.listen_addresses())
    return nodes


def test_request_response_both_ways_with_authenticated_origin():
    async def main():
        hub = MemoryHub()
        a, b = make(hub, "a", "b")
        async with a.running(), b.running():
            body = {"x": [1, 2, {"y": None}]}
            result = await a.request("b", "ping", body)
            assert result == {"origin": "a", "method": "ping", "body": body}
            assert result["body"] is not body  # decoded afresh, nothing shared
            assert (await b.request("a", "pong", {}))["origin"] == "b"
            assert a.connected_peers() == {"b"} and b.connected_peers() == {"a"}

    run(main)


def test_handler_errors_become_remote_errors_and_node_keeps_serving():
    async def main():
        hub = MemoryHub()
        a, b = make(hub, "a", "b")
        async with a.running(), b.running():
            with pytest.raises(RemoteError) as e:
                await a.request("b", "forbidden", {})
            assert (e.value.errcode, e.value.message) == ("M_FORBIDDEN", "not allowed")
            for method in ("crash", "not_a_dict"):
                with pytest.raises(RemoteError) as e:
                    await a.request("b", method, {})
                assert e.value.errcode == "M_UNKNOWN"
            assert (await a.request("b", "ping", {}))["method"] == "ping"
            b.set_request_handler(None)
            with pytest.raises(RemoteError) as e:
                await a.request("b", "ping", {})
            assert e.value.errcode == "M_UNRECOGNIZED"

    run(main)


def test_latency_and_timeouts_follow_the_mock_clock():
    async def main():
        hub = MemoryHub(latency=0.010)
        hub.set_latency("a", "c", 0.100)
        a, b, c = make(hub, "a", "b", "c")
        async with a.running(), b.running(), c.running():
            t0 = trio.current_time()
            await a.request("b", "ping", {})  # dial (1 RTT) + request (1 RTT)
            assert trio.current_time() - t0 == pytest.approx(0.040)
            t0 = trio.current_time()
            await a.request("b", "ping", {})
            assert trio.current_time() - t0 == pytest.approx(0.020)
            t0 = trio.current_time()
            await a.request("c", "ping", {})
            assert trio.current_time() - t0 == pytest.approx(0.400)
            t0 = trio.current_time()
            with pytest.raises(RequestTimeout):
                await a.request("b", "sleep", {"seconds": 10}, timeout=1.5)
            assert trio.current_time() - t0 == pytest.approx(1.5)
            # the late response is dropped; the connection still works
            assert (await a.request("b", "ping", {}, timeout=1))["method"] == "ping"

    run(main)


def test_unknown_offline_and_partitioned_peers_are_unreachable():
    async def main():
        hub = MemoryHub(latency=0.005)
        a, b, c = make(hub, "a", "b", "c")
        stranger = hub.network("stranger")
        async with a.running(), b.running():
            with pytest.raises(PeerUnreachable):
                await a.request("stranger", "ping", {})  # no address known
            async with stranger.running():
                with pytest.raises(PeerUnreachable):
                    await a.request("stranger", "ping", {})
            with pytest.raises(PeerUnreachable):
                await a.request("c", "ping", {})  # known, not running
            await a.request("b", "ping", {})
            hub.partition(["a"], ["b", "c"])
            assert a.connected_peers() == set()
            with pytest.raises(PeerUnreachable):
                await a.request("b", "ping", {})
            hub.heal()
            assert (await a.request("b", "ping", {}))["origin"] == "a"

    run(main)


def test_partition_fails_requests_in_flight_and_emits_peer_events():
    async def main():
        hub = MemoryHub(latency=0.005)
        a, b = make(hub, "a", "b")
        events_a = a.subscribe_peer_events()
        events_b = b.subscribe_peer_events()
        async with a.running(), b.running():
            outcome = []

            async def slow():
                try:
                    await a.request("b", "sleep", {"seconds": 5})
                except PeerUnreachable as e:
                    outcome.append((trio.current_time(), str(e)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await trio.sleep(1)
                t_cut = trio.current_time()
                hub.set_link("a", "b", up=False)
            assert outcome == [(t_cut, "link down")]
            hub.set_link("a", "b", up=True)
            await a.request("b", "ping", {})
            hub.disconnect("a", "b")
        assert [e async for e in events_a] == [
            PeerEvent("b", True),
            PeerEvent("b", False),
            PeerEvent("b", True),
            PeerEvent("b", False),
        ]
        assert [e async for e in events_b] == [
            PeerEvent("a", True),
            PeerEvent("a", False),
            PeerEvent("a", True),
            PeerEvent("a", False),
        ]

    run(main)


def test_stopping_a_node_disconnects_it_and_fails_requests_to_it():
    async def main():
        hub = MemoryHub(latency=0.005)
        a, b = make(hub, "a", "b")
        events = a.subscribe_peer_events()
        async with a.running():
            errors = []
            async with trio.open_nursery() as nursery:

                async def serve_b_briefly():
                    async with b.running():
                        await trio.sleep(1)

                nursery.start_soon(serve_b_briefly)
                await trio.sleep(0.1)

                async def slow():
                    try:
                        await a.request("b", "sleep", {"seconds": 60})
                    except PeerUnreachable as e:
                        errors.append(str(e))

                nursery.start_soon(slow)
            assert errors == ["b stopped"]
            assert a.connected_peers() == set()
            assert events.receive_nowait() == PeerEvent("b", True)
            assert events.receive_nowait() == PeerEvent("b", False)
            async with b.running():  # restart: reachable again
                await a.request("b", "ping", {})

    run(main)


def test_bytes_are_counted_as_on_the_wire():
    async def main():
        hub = MemoryHub(latency=0.001)
        a, b = make(hub, "a", "b")
        async with a.running(), b.running():
            body = {"pdus": [{"type": "m.room.message", "content": {"body": "hi"}}]}
            result = await a.request("b", "send", body)
        request_size = len(encode_request(Request(1, "send", body)))
        response_size = len(encode_response(Response(1, ok=result)))
        assert a.traffic.messages_sent == 1 and a.traffic.bytes_sent == request_size
        assert b.traffic.messages_received == 1 and b.traffic.bytes_received == request_size
        assert b.traffic.bytes_sent == response_size == a.traffic.bytes_received
        assert hub.traffic.bytes_sent == hub.traffic.bytes_received == request_size + response_size
        assert hub.link_traffic[("a", "b")].bytes_sent == request_size
        assert hub.link_traffic[("b", "a")].bytes_received == response_size
        assert hub.traffic.bytes_by_method == {"send": request_size + response_size}

    run(main)


def test_frames_lost_to_a_partition_are_sent_but_not_received():
    async def main():
        hub = MemoryHub(latency=1.0)
        a, b = make(hub, "a", "b")
        async with a.running(), b.running():
            await a.connect("b")
            async with trio.open_nursery() as nursery:

                async def lost():
                    with pytest.raises(PeerUnreachable):
                        await a.request("b", "ping", {})

                nursery.start_soon(lost)
                await trio.sleep(0.5)  # the request is half way
                hub.set_link("a", "b", up=False)
        assert hub.traffic.messages_sent == 1 and hub.traffic.messages_received == 0

    run(main)


def test_bad_input_is_refused_clearly():
    async def main():
        hub = MemoryHub()
        (a,) = make(hub, "a")
        with pytest.raises(RuntimeError):
            await a.request("b", "ping", {})  # not running
        async with a.running():
            with pytest.raises(ValueError):
                await a.request("a", "ping", {})
            with pytest.raises(ValueError):
                await a.request("b", "ping", {}, timeout=0)
            with pytest.raises(FrameTooLarge):
                await a.request("b", "ping", {"blob": "x" * MAX_REQUEST_FRAME})
            with pytest.raises(ValueError):
                await a.request("b", "bad method", {})
        with pytest.raises(ValueError):
            hub.network("a")
        with pytest.raises(ValueError):
            hub.set_latency("a", "b", -1)

    run(main)


def test_slow_subscriber_is_dropped_not_blocking():
    async def main():
        hub = MemoryHub()
        nodes = make(hub, "a", *[f"n{i}" for i in range(5)])
        a = nodes[0]
        slow = a.subscribe_peer_events(buffer=2)
        fine = a.subscribe_peer_events(buffer=100)
        async with _all_running(nodes):
            for node in nodes[1:]:
                await a.connect(node.server_name)
            assert [e async for e in slow] == [PeerEvent("n0", True), PeerEvent("n1", True)]
        assert len([e async for e in fine]) == 10  # 5 connects, 5 disconnects at stop

    run(main)


def _all_running(nodes):
    from contextlib import AsyncExitStack, asynccontextmanager

    @asynccontextmanager
    async def cm():
        async with AsyncExitStack() as stack:
            for node in nodes:
                await stack.enter_async_context(node.running())
            yield

    return cm()


def _scenario_trace(seed):
    """A busy scenario: 6 nodes, concurrent requests, a partition and a restart."""
    trio_run._r.seed(seed)  # trio's private scheduling RNG (what pytest-trio seeds)
    trace = []

    async def main():
        hub = MemoryHub(latency=0.003)
        names = [f"n{i}" for i in range(6)]
        nodes = make(hub, *names)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i < j:
                    hub.set_latency(a, b, 0.001 * (1 + (i * 7 + j * 3) % 11))

        async def handler(origin, method, body):
            trace.append((trio.current_time(), "handle", origin, body["k"]))
            await trio.sleep(0.0005 * (body["k"] % 4))
            return {"k": body["k"]}

        for node in nodes:
            node.set_request_handler(handler)

        async def client(node, k):
            dest = names[(k * 5 + 1) % 6]
            if dest == node.server_name:
                dest = names[(k + 1) % 6]
            try:
                await node.request(dest, "work", {"k": k}, timeout=0.05)
                trace.append((trio.current_time(), "ok", node.server_name, k))
            except Exception as e:
                trace.append((trio.current_time(), type(e).__name__, node.server_name, k))

        async with _all_running(nodes), trio.open_nursery() as nursery:
            for k in range(60):
                nursery.start_soon(client, nodes[k % 6], k)
                if k == 30:
                    hub.partition(names[:3], names[3:])
                if k == 45:
                    hub.heal()
                await trio.sleep(0.0007)
        trace.append(
            (trio.current_time(), "end", hub.traffic.bytes_sent, hub.traffic.bytes_received)
        )

    run(main)
    return trace


def test_deterministic_under_mock_clock():
    first = _scenario_trace(1)
    assert len(first) > 100
    assert any(entry[1] == "PeerUnreachable" for entry in first)
    assert _scenario_trace(1) == first
    # the hub adds no nondeterminism of its own: another scheduling seed gives
    # the same events at the same virtual times
    assert sorted(_scenario_trace(2)) == sorted(first)
