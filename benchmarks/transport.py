"""Raw request/response round trips over Libp2pNetwork on 127.0.0.1.

Usage: .venv/bin/python benchmarks/transport.py [samples]

Measures, with both nodes in this one process (so they share a core):

- connect: dial + Noise + Yamux + stream open + first request/response;
- reused: Network.request on the peer's long-lived stream (what the node uses);
- per-stream: a new stream per request (multistream negotiation each time),
  against the same server, for comparison;
- concurrent: 8 callers at once on the shared stream;
- large: a ~1 MiB response.
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

from p2pserver.rooms.signing import SigningKey
from p2pserver.transport.framing import (
    HEADER_SIZE,
    Request,
    decode_response,
    encode_request,
)
from p2pserver.transport.libp2p_network import (
    PROTOCOL_ID,
    Libp2pConfig,
    Libp2pNetwork,
    peer_id_for_server_name,
)

CONFIG = Libp2pConfig(requests_per_second=1e6, request_burst=10**6)


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))]

    return (
        f"{name:<12} n={len(ms):5d}  p50={pct(50):7.2f} ms  p90={pct(90):7.2f} ms  "
        f"p99={pct(99):7.2f} ms  mean={statistics.fmean(ms):7.2f} ms"
    )


async def handler(origin: str, method: str, body: dict) -> dict:
    if method == "large":
        return {"blob": "x" * (1 << 20)}
    return {"echo": body}


async def main(samples: int) -> None:
    client = Libp2pNetwork(SigningKey.generate(), listen_ips=["127.0.0.1"], port=0, config=CONFIG)
    server = Libp2pNetwork(SigningKey.generate(), listen_ips=["127.0.0.1"], port=0, config=CONFIG)
    server.set_request_handler(handler)
    body = {"pdu": "x" * 64}
    async with client.running(), server.running():
        client.add_peer_address(server.server_name, server.listen_addresses())
        host = client._host  # for the raw comparisons only
        assert host is not None

        connect = []
        for _ in range(min(samples // 10, 50) or 1):
            t0 = time.perf_counter()
            await client.request(server.server_name, "echo", body, timeout=10)
            connect.append(time.perf_counter() - t0)
            await host.disconnect(peer_id_for_server_name(server.server_name))
            with trio.fail_after(5):
                while client.connected_peers():
                    await trio.sleep(0.005)
        print(summary("connect", connect))

        await client.request(server.server_name, "echo", body, timeout=10)
        reused = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await client.request(server.server_name, "echo", body, timeout=10)
            reused.append(time.perf_counter() - t0)
        print(summary("reused", reused))

        per_stream = []
        peer_id = peer_id_for_server_name(server.server_name)
        frame = encode_request(Request(1, "echo", body))
        for _ in range(samples):
            t0 = time.perf_counter()
            stream = await host.new_stream(peer_id, [PROTOCOL_ID])
            await stream.write(frame)
            data = b""
            while len(data) < HEADER_SIZE or len(data) < HEADER_SIZE + int.from_bytes(
                data[:HEADER_SIZE], "big"
            ):
                data += await stream.read(65536)
            decode_response(data[HEADER_SIZE:])
            await stream.close()
            per_stream.append(time.perf_counter() - t0)
        print(summary("per-stream", per_stream))

        concurrent: list[float] = []

        async def caller() -> None:
            for _ in range(samples // 8):
                t0 = time.perf_counter()
                await client.request(server.server_name, "echo", body, timeout=10)
                concurrent.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(caller)
        elapsed = time.perf_counter() - t0
        print(summary("concurrent", concurrent) + f"  ({len(concurrent) / elapsed:.0f} req/s)")

        large = []
        for _ in range(20):
            t0 = time.perf_counter()
            await client.request(server.server_name, "large", {}, timeout=30)
            large.append(time.perf_counter() - t0)
        print(summary("large 1 MiB", large))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
