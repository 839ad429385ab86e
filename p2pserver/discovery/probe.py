"""A discovery-only node that reports what it finds, as JSON lines.

``python -m p2pserver.discovery.probe --listen-ip 10.231.0.1 --seconds 20``

It runs a :class:`~p2pserver.transport.libp2p_network.Libp2pNetwork` (fresh
key, the given IPs, any port) with :class:`~p2pserver.discovery.Discovery`,
answers the request ``probe.ping`` with its server name, and prints one JSON
object per line on stdout:

- ``listening``: the network is up: ``server_name``, ``addrs``;
- ``started``: discovery is running (mDNS registered, the DHT serving);
- ``nearby`` / ``lost``: a peer appeared on / left the LAN (mDNS);
  ``lan_addrs``: a nearby peer's advertised addresses changed;
- ``connected``: the network connected to a peer;
- ``pong``: a ``probe.ping`` request to a connected peer was answered,
  proving the discovered address works end to end;
- ``stopped``: with ``max_loop_lag_s``, the longest the trio loop was kept
  from running (mDNS must never block it).

Every event has ``t`` (wall clock, seconds); later ones also ``after_s``,
seconds since ``listening``. Peers are watched (every 20 ms) from
``listening`` on. It stops after
``--seconds``, or ``--linger`` seconds after ``--exit-after-pongs`` peers
have answered. Used by tests/discovery and benchmarks/discovery.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import trio

from p2pserver.discovery.discovery import Discovery, DiscoveryConfig
from p2pserver.rooms.signing import SigningKey
from p2pserver.transport.network import NetworkError

POLL_INTERVAL = 0.02


def _emit(**fields: Any) -> None:
    fields.setdefault("t", time.time())
    print(json.dumps(fields, sort_keys=True), flush=True)


async def _loop_lag(out: list[float]) -> None:
    """Record the worst delay of a short sleep: how long the loop was blocked."""
    while True:
        start = time.perf_counter()
        await trio.sleep(0.01)
        out[0] = max(out[0], time.perf_counter() - start - 0.01)


async def probe(args: argparse.Namespace) -> None:
    from p2pserver.transport.libp2p_network import Libp2pNetwork

    key = SigningKey.generate()
    network = Libp2pNetwork(key, listen_ips=args.listen_ip, port=0)

    async def handler(origin: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"server_name": key.server_name}

    network.set_request_handler(handler)
    config = DiscoveryConfig(
        mdns=True,
        dht=not args.no_dht,
        mdns_ttl=args.mdns_ttl,
        mdns_recheck_interval=args.mdns_recheck,
    )
    lag = [0.0]
    async with network.running(), trio.open_nursery() as nursery:
        nursery.start_soon(_loop_lag, lag)
        t0 = time.time()
        _emit(
            event="listening", server_name=key.server_name, addrs=network.listen_addresses(), t=t0
        )
        discovery = Discovery(network, key, config)

        async def start() -> None:
            await nursery.start(discovery.run)
            _emit(event="started", after_s=round(time.time() - t0, 3))

        nursery.start_soon(start)  # watch while it starts: peers may show up first
        nearby: dict[str, tuple[str, ...]] = {}
        connected: set[str] = set()
        pinged: set[str] = set()
        pongs: set[str] = set()
        done_at: float | None = None

        async def ping(peer: str) -> None:
            try:
                reply = await network.request(peer, "probe.ping", {}, timeout=10)
            except NetworkError as e:
                _emit(event="ping_failed", peer=peer, error=str(e))
                pinged.discard(peer)
                return
            if reply.get("server_name") == peer:
                pongs.add(peer)
                _emit(event="pong", peer=peer, after_s=round(time.time() - t0, 3))

        with trio.move_on_after(args.seconds):
            while done_at is None or time.time() < done_at:
                for known in discovery.peers():
                    name = known.server_name
                    after = round(time.time() - t0, 3)
                    if known.nearby and name not in nearby:
                        _emit(event="nearby", peer=name, addrs=known.lan_addrs, after_s=after)
                    elif known.nearby and nearby[name] != known.lan_addrs:
                        _emit(event="lan_addrs", peer=name, addrs=known.lan_addrs, after_s=after)
                    elif not known.nearby and name in nearby:
                        del nearby[name]
                        _emit(event="lost", peer=name, after_s=after)
                    if known.nearby:
                        nearby[name] = known.lan_addrs
                    if known.connected and name not in connected:
                        connected.add(name)
                        _emit(event="connected", peer=name, after_s=after)
                    if not known.connected:
                        connected.discard(name)
                    if known.connected and name not in pinged:
                        pinged.add(name)
                        nursery.start_soon(ping, name)
                if (
                    done_at is None
                    and args.exit_after_pongs
                    and len(pongs) >= args.exit_after_pongs
                ):
                    done_at = time.time() + args.linger
                await trio.sleep(POLL_INTERVAL)
        nursery.cancel_scope.cancel()
    _emit(event="stopped", max_loop_lag_s=round(lag[0], 3), pongs=sorted(pongs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pserver.discovery.probe")
    parser.add_argument("--listen-ip", action="append", required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--exit-after-pongs", type=int, default=0)
    parser.add_argument("--linger", type=float, default=3.0)
    parser.add_argument("--no-dht", action="store_true")
    parser.add_argument("--mdns-ttl", type=int, default=120)
    parser.add_argument("--mdns-recheck", type=float, default=5.0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger("p2pserver.discovery").setLevel(logging.DEBUG)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    trio.run(probe, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
