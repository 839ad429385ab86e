"""Federation over libp2p on 127.0.0.1: push throughput, one event's latency, catch-up.

Usage: .venv/bin/python benchmarks/federation.py [events] [catch_up_events]

Two nodes (file-backed stores in a temporary directory, Libp2pNetwork on
loopback) in this one process, so both ends share one core: the figures
are what one core does for sender and receiver together. Node 1 creates a
room, node 2 joins by invite, then:

- push: node 1 sends ``events`` messages back to back; the rate is events
  over the time until node 2 has the last one (accepted into its DAG);
- latency: one message at a time, from ``send_message`` until node 2's
  engine announces it (p50/p90 of 30);
- catch-up: node 2 stops, node 1 sends ``catch_up_events`` messages, node 2
  starts again; the time until node 2 holds node 1's last event. Measured
  twice: as a node does it (node 1's queue pushes while node 2 pulls), and
  by pulling alone (node 1's queue for node 2 emptied first).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from p2pserver.engine.notifier import RoomUpdate
from p2pserver.federation import Federation, FederationConfig, build_federation
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import Store
from p2pserver.transport.libp2p_network import Libp2pConfig, Libp2pNetwork

CONFIG = FederationConfig(fanout=4, sync_interval=60.0)
LIBP2P = Libp2pConfig(requests_per_second=1e6, request_burst=10**6)


class BenchNode:
    def __init__(self, root: Path, name: str) -> None:
        self.key = SigningKey.generate()
        self.path = root / f"{name}.db"
        self.store = Store.open(self.path)
        self.federation: Federation | None = None
        self.scope: trio.CancelScope | None = None

    @property
    def fed(self) -> Federation:
        assert self.federation is not None
        return self.federation

    async def start(self, nursery: trio.Nursery) -> None:
        network = Libp2pNetwork(self.key, listen_ips=["127.0.0.1"], port=0, config=LIBP2P)
        self.federation = build_federation(self.store, self.key, network, CONFIG)
        self.scope = await nursery.start(self._run, network)

    async def _run(self, network: Libp2pNetwork, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with network.running(), trio.open_nursery() as nursery:
                await nursery.start(self.fed.run)
                task_status.started(scope)
                await trio.sleep_forever()

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    def addresses(self) -> list[str]:
        return self.fed.network.listen_addresses()

    def has(self, event_id: str) -> bool:
        meta = self.store.event_meta(event_id)
        return meta is not None and meta.status == "accepted"

    async def wait_for(self, event_id: str) -> None:
        arrived = trio.Event()

        def listener(update: RoomUpdate) -> None:
            if update.event is not None and update.event.event_id == event_id:
                arrived.set()

        remove = self.fed.engine.notifier.add_listener(listener)
        try:
            if not self.has(event_id):
                with trio.fail_after(600):
                    await arrived.wait()
        finally:
            remove()


def introduce(a: BenchNode, b: BenchNode) -> None:
    a.fed.network.add_peer_address(b.key.server_name, b.addresses())
    b.fed.network.add_peer_address(a.key.server_name, a.addresses())


async def main(events: int, catch_up_events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        n1, n2 = BenchNode(Path(tmp), "n1"), BenchNode(Path(tmp), "n2")
        async with trio.open_nursery() as nursery:
            await n1.start(nursery)
            await n2.start(nursery)
            introduce(n1, n2)
            alice, bob = f"@alice:{n1.key.server_name}", f"@bob:{n2.key.server_name}"
            room = await n1.fed.engine.create_room(alice, {"preset": "private_chat"})
            await n2.wait_for(await n1.fed.invite(room, alice, bob))
            await n1.wait_for(await n2.fed.join(room, bob))

            # Push throughput.
            start = time.perf_counter()
            last = ""
            for i in range(events):
                last = await n1.fed.engine.send_message(room, alice, {"body": f"m{i}"})
            sent = time.perf_counter() - start
            await n2.wait_for(last)
            elapsed = time.perf_counter() - start
            print(
                f"push        {events} events in {elapsed:.2f} s: {events / elapsed:7.1f} events/s "
                f"(sending alone took {sent:.2f} s; "
                f"{n1.fed.sender.transactions_sent} transactions)"
            )

            # One event's latency.
            samples = []
            for i in range(30):
                t0 = time.perf_counter()
                event_id = await n1.fed.engine.send_message(room, alice, {"body": f"l{i}"})
                await n2.wait_for(event_id)
                samples.append((time.perf_counter() - t0) * 1000)
            samples.sort()
            print(
                f"latency     one event, n=30: p50 {statistics.median(samples):6.2f} ms, "
                f"p90 {samples[26]:6.2f} ms, max {samples[-1]:6.2f} ms"
            )

            # Catch-up after being offline, with and without the sender's queue.
            for pull_only in (False, True):
                n2.stop()
                await trio.sleep(0.5)
                for i in range(catch_up_events):
                    last = await n1.fed.engine.send_message(room, alice, {"body": f"c{i}"})
                if pull_only:
                    queue = n1.store.outbound
                    batch = queue.peek(n2.key.server_name, max_pdus=10**6, max_edus=10**6)
                    if batch is not None:
                        queue.ack(n2.key.server_name, batch.last_position)
                start = time.perf_counter()
                await n2.start(nursery)
                introduce(n1, n2)
                await n2.fed.network.connect(n1.key.server_name)
                await n2.wait_for(last)
                elapsed = time.perf_counter() - start
                how = "pull only     " if pull_only else "push and pull "
                print(
                    f"catch-up    {how}{catch_up_events} events in {elapsed:.2f} s "
                    f"({catch_up_events / elapsed:7.1f} events/s; "
                    f"{n2.fed.sync.events_pulled} pulled)"
                )
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    catch_up = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    trio.run(main, events, catch_up)
