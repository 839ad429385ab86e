"""Discovery figures: mDNS on a LAN, and DHT lookups with 50 nodes.

Usage: .venv/bin/python benchmarks/discovery.py [--rounds 5] [--nodes 50] [--skip-lan]

1. LAN (needs root: network namespaces on a private bridge, see
   p2pserver/discovery/lanlab.py). Per round, node A runs; then node B
   starts. From the moment B's network listens: when B sees A (mDNS),
   when A sees B, and when each has a request answered by the other over
   the discovered address (``probe.ping``). Each node is its own process,
   as on two devices.
2. DHT, ``--nodes`` nodes in this process over the in-memory libp2p
   transport, bootstrapped as a chain (each node told only of the next),
   after every node's join lookup. Per lookup: wall time and CPU time of
   the whole process (both ends of every RPC, since all nodes share it):
   - find_peer for a peer the asker has forgotten (removed from its
     routing table and peerstore first), so it goes over the network;
   - find_room_servers for rooms published by 3 nodes each;
   - publish_room (lookup + store at the k closest).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_READ_QUORUM = 4


def summary(name: str, values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    if not values:
        return f"{name}: no samples"
    xs = sorted(v * scale for v in values)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return (
        f"{name}: n={len(xs)} median={statistics.median(xs):.1f} {unit} "
        f"p90={p90:.1f} {unit} max={xs[-1]:.1f} {unit}"
    )


# --- 1. the LAN ----------------------------------------------------------------------------


class Events:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()

    def wait(self, timeout: float, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for e in self.events:
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            return None

        with self.changed:
            if not self.changed.wait_for(lambda: find() is not None, timeout):
                raise TimeoutError(f"no {match} within {timeout}s")
            found = find()
            assert found is not None
            return found


def lan_rounds(rounds: int) -> None:
    from p2pserver.discovery.lanlab import LanLab

    why = LanLab.unavailable()
    if why is not None:
        print(f"LAN: skipped ({why})")
        return
    b_sees_a, a_sees_b, b_pong, a_pong, lags = [], [], [], [], []
    for _ in range(rounds):
        with LanLab(2) as lab:

            def start(i: int) -> Events:
                argv = [sys.executable, "-m", "p2pserver.discovery.probe", "--listen-ip"]
                argv += [lab.ips[i], "--seconds", "40", "--exit-after-pongs", "1"]
                return Events(
                    lab.popen(
                        i,
                        argv,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                        cwd=REPO,
                    )
                )

            a = start(0)
            name_a = a.wait(30, event="listening")["server_name"]
            a.wait(30, event="started")
            b = start(1)
            listening = b.wait(30, event="listening")
            name_b, t0 = listening["server_name"], listening["t"]
            b_sees_a.append(b.wait(30, event="nearby", peer=name_a)["t"] - t0)
            a_sees_b.append(a.wait(30, event="nearby", peer=name_b)["t"] - t0)
            b_pong.append(b.wait(30, event="pong", peer=name_a)["t"] - t0)
            a_pong.append(a.wait(30, event="pong", peer=name_b)["t"] - t0)
            lags.append(b.wait(30, event="stopped")["max_loop_lag_s"])
    print(f"LAN (mDNS, 2 processes in network namespaces, {rounds} rounds), from B listening:")
    print("  " + summary("B sees A (A already running)", b_sees_a))
    print("  " + summary("A sees B (B announces itself)", a_sees_b))
    print("  " + summary("B's request answered by A", b_pong))
    print("  " + summary("A's request answered by B", a_pong))
    print("  " + summary("worst trio loop stall in B", lags))


# --- 2. the DHT ----------------------------------------------------------------------------


async def dht_figures(count: int, read_quorum: int) -> None:
    import multiaddr
    import trio
    from libp2p.peer.peerinfo import PeerInfo

    from p2pserver.dht.memory_transport import MemoryTransportHub, close_hosts, new_memory_host
    from p2pserver.dht.service import DhtConfig, DhtService
    from p2pserver.rooms.signing import SigningKey

    rng = random.Random(7)
    hub = MemoryTransportHub()
    keys = [SigningKey.generate() for _ in range(count)]
    hosts = [new_memory_host(k, hub) for k in keys]
    try:
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            for host in hosts:
                await stack.enter_async_context(host.run([multiaddr.Multiaddr("/memory/0")]))
            # the full refresh is run below, by hand, between the two phases
            config = DhtConfig(read_quorum=read_quorum, settle_interval=1e9)
            dhts = [DhtService(h, k, config=config) for h, k in zip(hosts, keys, strict=True)]
            for dht in dhts:
                await nursery.start(dht.run)
            t, cpu = time.perf_counter(), time.process_time()
            for i in range(count - 1):
                a, b = hosts[i], hosts[i + 1]
                await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
                await dhts[i].add_peer(keys[i + 1].server_name, [str(x) for x in b.get_addrs()])
                await dhts[i + 1].add_peer(keys[i].server_name, [str(x) for x in a.get_addrs()])
            with trio.fail_after(600):
                while any(d.refreshes == 0 for d in dhts):
                    await trio.sleep(0.1)
            join_wall, join_cpu = time.perf_counter() - t, time.process_time() - cpu
            sizes = [d.routing_table_size() for d in dhts]
            print(f"DHT: {count} nodes (in-memory libp2p transport, one process), chain bootstrap")
            print(
                f"  join (chain + one self-lookup per node): {join_wall:.1f} s wall, "
                f"{join_cpu:.1f} s CPU ({1000 * join_cpu / count:.0f} ms CPU per node); "
                f"routing tables {min(sizes)}-{max(sizes)} peers (median {statistics.median(sizes):.0f})"
            )

            async def measure(label: str, calls: list[Any]) -> None:
                walls, cpus, ok = [], [], 0
                for call in calls:
                    t, cpu = time.perf_counter(), time.process_time()
                    ok += bool(await call())
                    walls.append(time.perf_counter() - t)
                    cpus.append(time.process_time() - cpu)
                print("    " + summary(f"{label} latency", walls))
                print("    " + summary(f"{label} CPU", cpus) + f"; succeeded {ok}/{len(calls)}")

            def forgetful_find(i: int, j: int) -> Any:
                async def call() -> bool:
                    peer_id = hosts[j].get_id()
                    dhts[i].kad.routing_table.remove_peer(peer_id)
                    hosts[i].get_peerstore().clear_addrs(peer_id)
                    addrs = await dhts[i].find_peer(keys[j].server_name)
                    return addrs == [str(a) for a in hosts[j].get_transport_addrs()]

                return call

            def publish(i: int, room: str) -> Any:
                async def call() -> bool:
                    return await dhts[i].publish_room(room) > 0

                return call

            def find_room(i: int, room: str, members: list[int]) -> Any:
                async def call() -> bool:
                    found = {e.server_name for e in await dhts[i].find_room_servers(room)}
                    return found == {keys[m].server_name for m in members}

                return call

            async def lookups(phase: str, tag: str) -> None:
                print(f"  {phase}:")
                pairs = [tuple(rng.sample(range(count), 2)) for _ in range(30)]
                await measure(
                    "find_peer (forgotten peer)", [forgetful_find(i, j) for i, j in pairs]
                )
                rooms = [f"!{tag}{r}:{keys[r].server_name}" for r in range(10)]
                members = {room: rng.sample(range(count), 3) for room in rooms}
                await measure(
                    "publish_room", [publish(i, room) for room in rooms for i in members[room]]
                )
                asks = [(rng.randrange(count), room) for room in rooms for _ in range(3)]
                await measure(
                    "find_room_servers", [find_room(i, room, members[room]) for i, room in asks]
                )

            await lookups("after the join lookups", "joined")
            t, cpu = time.perf_counter(), time.process_time()
            for dht in dhts:
                await dht.refresh()
            sizes = [d.routing_table_size() for d in dhts]
            print(
                f"  one full refresh per node (DhtService does one settle_interval after "
                f"joining): {(time.process_time() - cpu) / count * 1000:.0f} ms CPU per node; "
                f"routing tables {min(sizes)}-{max(sizes)} peers"
            )
            await lookups("after the full refresh", "refreshed")
            nursery.cancel_scope.cancel()
    finally:
        await close_hosts(hosts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--skip-lan", action="store_true")
    parser.add_argument("--skip-dht", action="store_true")
    parser.add_argument("--read-quorum", type=int, default=DEFAULT_READ_QUORUM)
    args = parser.parse_args()
    if not args.skip_lan:
        lan_rounds(args.rounds)
    if not args.skip_dht:
        import trio

        trio.run(dht_figures, args.nodes, args.read_quorum)


if __name__ == "__main__":
    main()
