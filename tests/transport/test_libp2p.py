"""Libp2pNetwork over real TCP on 127.0.0.1 only, several nodes in one process."""

import os
import socket
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as Noise
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pserver.identity import peer_id_from_public_key
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.signing import SigningKey
from p2pserver.transport import (
    FrameTooLarge,
    PeerEvent,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
)
from p2pserver.transport.framing import (
    MAX_REQUEST_FRAME,
    Request,
    decode_response,
    encode_request,
)
from p2pserver.transport.libp2p_network import (
    PORT_FILE_NAME,
    PROTOCOL_ID,
    Libp2pConfig,
    Libp2pNetwork,
    keypair_from_signing_key,
    peer_id_for_server_name,
    server_name_for_peer_id,
)

LOOPBACK = ["127.0.0.1"]


async def handler(origin, method, body):
    if method == "sleep":
        await trio.sleep(body["seconds"])
    if method == "forbidden":
        raise AuthError("not allowed")
    if method == "crash":
        raise RuntimeError("handler bug")
    return {"origin": origin, "method": method, "body": body}


def node(key=None, **config):
    net = Libp2pNetwork(
        key or SigningKey.generate(), listen_ips=LOOPBACK, port=0, config=Libp2pConfig(**config)
    )
    net.set_request_handler(handler)
    return net


@asynccontextmanager
async def running(*nets):
    """Run the networks and tell each where the others listen."""
    async with AsyncExitStack() as stack:
        for net in nets:
            await stack.enter_async_context(net.running())
        for net in nets:
            for other in nets:
                if other is not net:
                    net.add_peer_address(other.server_name, other.listen_addresses())
        yield


def count_tasks():
    root = trio.lowlevel.current_root_task()
    count, todo = 0, [root]
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


@asynccontextmanager
async def raw_host(key):
    """A bare libp2p host that can speak our protocol badly."""
    keypair = keypair_from_signing_key(key)
    host = new_host(
        key_pair=keypair,
        sec_opt={NOISE_ID: Noise(keypair, noise_privkey=create_new_key_pair().private_key)},
        muxer_opt=cast(Any, {YAMUX_ID: Yamux}),
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    try:
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            yield host
    finally:
        with trio.CancelScope(shield=True):
            await host.close()


async def raw_stream(host, net):
    peer_id = peer_id_for_server_name(net.server_name)
    addrs = [multiaddr.Multiaddr(a) for a in net.listen_addresses()]
    await host.connect(PeerInfo(peer_id, addrs))
    return await host.new_stream(peer_id, [PROTOCOL_ID])


async def assert_reset(stream):
    """The other side dropped the stream without answering.

    py-libp2p's Yamux reports a received RST as a reset or as end-of-stream
    depending on timing, so check what is certain: no response arrives, the
    stream ends, and it can no longer be written to.
    """
    received = b""
    with trio.fail_after(5), pytest.raises(StreamError):
        while True:
            received += await stream.read(65536)
    assert received == b""
    with trio.fail_after(5), pytest.raises(StreamError):
        await stream.write(b"\x00\x00\x00\x01\xa0")


async def test_requests_both_ways_with_authenticated_origin():
    a, b = node(), node()
    async with running(a, b):
        body = {"pdu": {"type": "m.room.message", "content": {"body": "héllo"}}, "n": [1, 2.5]}
        result = await a.request(b.server_name, "send", body, timeout=5)
        assert result == {"origin": a.server_name, "method": "send", "body": body}
        assert a.traffic.messages_sent == 1 and a.traffic.messages_received == 1
        assert a.traffic.bytes_sent == b.traffic.bytes_received
        assert (await b.request(a.server_name, "send", {}, timeout=5))["origin"] == b.server_name
        assert a.connected_peers() == {b.server_name} and b.connected_peers() == {a.server_name}


def test_identity_maps_between_server_names_and_peer_ids():
    key = SigningKey.generate()
    peer_id = peer_id_for_server_name(key.server_name)
    assert str(peer_id) == peer_id_from_public_key(bytes(key.verify_key))
    assert server_name_for_peer_id(peer_id) == key.server_name
    assert keypair_from_signing_key(key).public_key.to_bytes() == bytes(key.verify_key)
    for bad in ("", "ab", key.server_name.upper(), "@alice:" + key.server_name):
        with pytest.raises(ValueError):
            peer_id_for_server_name(bad)


async def test_handler_errors_return_errors_and_the_host_keeps_serving():
    a, b = node(), node()
    async with running(a, b):
        with pytest.raises(RemoteError) as e:
            await a.request(b.server_name, "forbidden", {}, timeout=5)
        assert (e.value.errcode, e.value.message) == ("M_FORBIDDEN", "not allowed")
        with pytest.raises(RemoteError) as e:
            await a.request(b.server_name, "crash", {}, timeout=5)
        assert e.value.errcode == "M_UNKNOWN"
        assert (await a.request(b.server_name, "ping", {}, timeout=5))["method"] == "ping"


async def test_many_concurrent_requests_from_three_nodes_match_their_responses():
    a, b, c = node(), node(), node()
    async with running(a, b, c):
        results = {}

        async def one(client, k):
            # responses come back out of order on the shared stream
            body = {"seconds": 0.002 * (k % 5), "k": k}
            results[(client.server_name, k)] = await client.request(
                c.server_name, "sleep", body, timeout=10
            )

        async with trio.open_nursery() as nursery:
            for k in range(40):
                nursery.start_soon(one, a, k)
                nursery.start_soon(one, b, k)
        for (origin, k), result in results.items():
            assert result["origin"] == origin and result["body"]["k"] == k
        assert len(results) == 80


async def test_simultaneous_first_contact_both_ways():
    a, b = node(), node()
    async with running(a, b):
        results = []
        async with trio.open_nursery() as nursery:
            for client, server in ((a, b), (b, a)) * 3:

                async def go(client=client, server=server):
                    results.append(await client.request(server.server_name, "x", {}, timeout=5))

                nursery.start_soon(go)
        assert len(results) == 6


async def test_timeout_then_the_stream_is_still_usable():
    a, b = node(), node()
    async with running(a, b):
        t0 = time.monotonic()
        with pytest.raises(RequestTimeout):
            await a.request(b.server_name, "sleep", {"seconds": 1}, timeout=0.2)
        assert time.monotonic() - t0 < 0.5
        assert (await a.request(b.server_name, "ping", {}, timeout=5))["method"] == "ping"


async def test_handler_timeout_answers_with_an_error():
    a, b = node(), node(handler_timeout=0.1)
    async with running(a, b):
        with pytest.raises(RemoteError) as e:
            await a.request(b.server_name, "sleep", {"seconds": 5}, timeout=5)
        assert e.value.errcode == "M_UNKNOWN"


async def test_unreachable_peers_fail_fast():
    a = node()
    nobody = SigningKey.generate().server_name
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    async with running(a):
        with pytest.raises(PeerUnreachable):
            await a.request(nobody, "ping", {}, timeout=5)  # no address known
        a.add_peer_address(nobody, [f"/ip4/127.0.0.1/tcp/{closed_port}"])
        t0 = time.monotonic()
        with pytest.raises(PeerUnreachable):
            await a.request(nobody, "ping", {}, timeout=5)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(ValueError):
            await a.request("not-a-server-name", "ping", {}, timeout=5)


async def test_wrong_identity_at_an_address_is_unreachable():
    a, b = node(), node()
    impostor = SigningKey.generate().server_name
    async with running(a, b):
        a.add_peer_address(impostor, b.listen_addresses())  # b answers, but is not impostor
        with pytest.raises(PeerUnreachable):
            await a.request(impostor, "ping", {}, timeout=5)


async def test_oversized_request_is_refused_locally():
    a, b = node(), node()
    async with running(a, b):
        with pytest.raises(FrameTooLarge):
            await a.request(b.server_name, "ping", {"x": "y" * MAX_REQUEST_FRAME}, timeout=5)
        assert (await a.request(b.server_name, "ping", {}, timeout=5))["method"] == "ping"


@pytest.mark.parametrize(
    "garbage",
    [
        (9).to_bytes(4, "big") + b"\xff" * 9,  # not CBOR
        (3).to_bytes(4, "big") + b"\x83\x01\x02\x03",  # an array, and trailing bytes
        (MAX_REQUEST_FRAME + 1).to_bytes(4, "big"),  # oversized: refused on the header
        (0).to_bytes(4, "big"),  # empty frame
    ],
)
async def test_garbage_frames_reset_the_stream_and_others_are_still_served(garbage):
    server, honest = node(), node()
    async with running(server, honest), raw_host(SigningKey.generate()) as bad:
        stream = await raw_stream(bad, server)
        await stream.write(garbage)
        await assert_reset(stream)
        assert (await honest.request(server.server_name, "ping", {}, timeout=5))["origin"] == (
            honest.server_name
        )


async def test_half_sent_frame_stalls_out_and_repeat_offenders_are_banned():
    server, honest = node(stall_timeout=0.2, strikes_to_ban=2), node()
    bad_key = SigningKey.generate()
    async with running(server, honest), raw_host(bad_key) as bad:
        stream = await raw_stream(bad, server)
        frame = encode_request(Request(1, "ping", {"x": 1}))
        await stream.write(frame[:-3])  # and never the rest
        await assert_reset(stream)
        assert bad_key.server_name in server.connected_peers()
        stream = await raw_stream(bad, server)
        await stream.write(b"\x00\x00\x00\x01\xff")  # second strike: banned
        await assert_reset(stream)
        with trio.fail_after(5):
            while bad_key.server_name in server.connected_peers():
                await trio.sleep(0.02)
        with pytest.raises(PeerUnreachable):
            await server.request(bad_key.server_name, "ping", {}, timeout=5)
        assert (await honest.request(server.server_name, "ping", {}, timeout=5))["method"] == "ping"


async def test_a_well_formed_raw_request_is_answered():
    server = node()
    key = SigningKey.generate()
    async with running(server), raw_host(key) as raw:
        stream = await raw_stream(raw, server)
        await stream.write(encode_request(Request(7, "ping", {"a": 1})))
        data = b""
        with trio.fail_after(5):
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                data += await stream.read(65536)
        response = decode_response(data[4:])
        assert response.id == 7 and response.ok is not None
        assert response.ok["origin"] == key.server_name


async def test_a_garbage_response_fails_the_request_not_the_node():
    client, honest = node(), node()
    bad_key = SigningKey.generate()

    async def garbage_responder(stream):
        await stream.read(65536)
        await stream.write((4).to_bytes(4, "big") + b"\xf7\xf7\xf7\xf7")

    async with running(client, honest), raw_host(bad_key) as bad:
        bad.set_stream_handler(PROTOCOL_ID, garbage_responder)
        client.add_peer_address(bad_key.server_name, [str(bad.get_transport_addrs()[0])])
        with pytest.raises(PeerUnreachable):
            await client.request(bad_key.server_name, "ping", {}, timeout=5)
        assert (await client.request(honest.server_name, "ping", {}, timeout=5))["method"] == "ping"


async def test_rate_limit_and_in_flight_cap_answer_limit_exceeded():
    a, b = node(), node(requests_per_second=1, request_burst=3, max_inflight_per_peer=2)
    async with running(a, b):
        outcomes = []

        async def one():
            try:
                await a.request(b.server_name, "sleep", {"seconds": 0.3}, timeout=5)
                outcomes.append("ok")
            except RemoteError as e:
                assert e.errcode == "M_LIMIT_EXCEEDED"
                assert e.retry_after_ms is not None and e.retry_after_ms > 0
                outcomes.append("limited")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert sorted(outcomes) == ["limited", "ok", "ok"]  # in-flight cap of 2
        with pytest.raises(RemoteError) as e:  # the bucket (3) is empty now
            await a.request(b.server_name, "ping", {}, timeout=5)
        assert e.value.errcode == "M_LIMIT_EXCEEDED"
        assert e.value.retry_after_ms is not None and 0 < e.value.retry_after_ms <= 1001


async def test_least_recently_used_idle_connection_is_pruned():
    hub = node(max_connections=2)
    a, b, c = node(), node(), node()
    async with running(hub, a, b, c):
        async with trio.open_nursery() as nursery:
            # a keeps a request in flight: it must survive even though oldest
            nursery.start_soon(
                lambda: a.request(hub.server_name, "sleep", {"seconds": 1.0}, timeout=5)
            )
            await trio.sleep(0.2)
            await b.request(hub.server_name, "ping", {}, timeout=5)
            await trio.sleep(0.05)
            await c.request(hub.server_name, "ping", {}, timeout=5)
            with trio.fail_after(5):
                while b.server_name in hub.connected_peers():
                    await trio.sleep(0.02)
            assert hub.connected_peers() == {a.server_name, c.server_name}
        # b comes back on demand
        assert (await b.request(hub.server_name, "ping", {}, timeout=5))["method"] == "ping"


async def test_idle_connections_are_closed_and_peer_events_reported():
    a, b = node(idle_timeout=0.3, maintenance_interval=0.1), node()
    events = a.subscribe_peer_events()
    async with running(a, b):
        await a.connect(b.server_name)
        with trio.fail_after(5):
            assert await events.receive() == PeerEvent(b.server_name, True)
            assert await events.receive() == PeerEvent(b.server_name, False)
        assert a.connected_peers() == set()
        assert b.server_name in a.known_peers()
    with trio.fail_after(1):
        assert [e async for e in events] == []  # the channel ends with the network


async def test_shutdown_leaves_no_tasks_or_sockets_behind():
    before_tasks = count_tasks()
    before_fds = len(os.listdir("/proc/self/fd"))
    a, b, c = node(), node(), node()
    for _ in range(2):
        async with running(a, b), trio.open_nursery() as nursery:
            c_ready, stop_c = trio.Event(), trio.Event()

            async def run_c(c_ready, stop_c):
                async with c.running():
                    a.add_peer_address(c.server_name, c.listen_addresses())
                    c.add_peer_address(b.server_name, b.listen_addresses())
                    c_ready.set()
                    await stop_c.wait()

            nursery.start_soon(run_c, c_ready, stop_c)
            await c_ready.wait()
            async with trio.open_nursery() as requests:
                requests.start_soon(lambda: a.request(b.server_name, "x", {}, timeout=5))
                requests.start_soon(lambda: c.request(b.server_name, "x", {}, timeout=5))
                requests.start_soon(lambda: b.request(a.server_name, "x", {}, timeout=5))

            async def stuck():
                with pytest.raises(PeerUnreachable):
                    await a.request(c.server_name, "sleep", {"seconds": 30}, timeout=60)

            async with trio.open_nursery() as requests:
                requests.start_soon(stuck)
                await trio.sleep(0.2)
                stop_c.set()  # c stops with a's request in flight: it fails
    await trio.sleep(0.3)
    assert count_tasks() == before_tasks
    assert len(os.listdir("/proc/self/fd")) <= before_fds


async def test_port_is_chosen_once_and_remembered(tmp_path):
    key = SigningKey.generate()
    first = Libp2pNetwork(key, data_dir=tmp_path, listen_ips=LOOPBACK)
    async with first.running():
        (addr,) = first.listen_addresses()
    port = int(addr.rsplit("/", 1)[1])
    assert (tmp_path / PORT_FILE_NAME).read_text().strip() == str(port)
    second = Libp2pNetwork(key, data_dir=tmp_path, listen_ips=LOOPBACK)
    async with second.running():
        assert second.listen_addresses() == [f"/ip4/127.0.0.1/tcp/{port}"]
        # while it holds the port, a third instance must choose (and remember) another
        third = Libp2pNetwork(key, data_dir=tmp_path / "other", listen_ips=LOOPBACK)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / PORT_FILE_NAME).write_text(f"{port}\n")
        async with third.running():
            (other,) = third.listen_addresses()
        assert other != addr
        assert (tmp_path / "other" / PORT_FILE_NAME).read_text().strip() == other.rsplit("/")[-1]


def test_addresses_are_checked():
    a = node()
    b = SigningKey.generate().server_name
    peer_id = peer_id_for_server_name(b)
    a.add_peer_address(b, [f"/ip4/127.0.0.1/tcp/5/p2p/{peer_id}", "/ip4/10.0.0.1/tcp/6"])
    assert b in a.known_peers()
    other = peer_id_for_server_name(SigningKey.generate().server_name)
    for bad in (f"/ip4/127.0.0.1/tcp/5/p2p/{other}", "/ip4/127.0.0.1/udp/5", "nonsense"):
        with pytest.raises(ValueError):
            a.add_peer_address(b, [bad])


async def test_a_peer_that_dialled_us_can_be_dialled_back():
    a, b = node(), node(idle_timeout=0.2, maintenance_interval=0.05)
    async with a.running(), b.running():
        a.add_peer_address(b.server_name, b.listen_addresses())  # b is not told where a is
        await a.request(b.server_name, "ping", {}, timeout=5)
        assert a.server_name in b.known_peers()
        with trio.fail_after(5):
            while b.connected_peers():
                await trio.sleep(0.02)
        # addresses learnt from libp2p's identify exchange
        assert (await b.request(a.server_name, "ping", {}, timeout=5))["origin"] == b.server_name
