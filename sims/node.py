"""One simulated server: the production store, room engine and federation on a SimNetwork.

A :class:`SimNode` is what a device runs, built the way a node builds it
(:func:`p2pserver.federation.build_federation` over a
:class:`~p2pserver.storage.store.Store`), with three differences that are
the simulator's business, not the node's:

- its signing key comes from the scenario's seed (reproducible server
  names), and its clock is virtual time (:func:`sims.determinism.virtual_clock_ms`);
- its network is an incarnation on a :class:`~sims.network.SimHub`;
- it can crash: :meth:`crash` cancels everything the node runs, as killing
  the process would. Whatever the store committed stays (a database file
  under the run's directory, or an in-memory SQLite database kept across
  the crash); everything else -- engine, federation, network, the store's
  caches -- is rebuilt by the next :meth:`start`, as a restarted process
  would.

Listeners (``on_start``) are called with each new Federation, so the
simulator can follow every incarnation's room updates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own is hidden by these stubs

from p2pserver.federation import Federation, FederationConfig, build_federation
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import EventStatus, Store
from sims.determinism import Seeds
from sims.network import SimHub, SimNetwork

# With ``cache_events`` set: SQLite page cache per node, in KiB per cached event.
SQLITE_CACHE_KIB_PER_EVENT = 4


class SimNode:
    def __init__(
        self,
        index: int,
        seeds: Seeds,
        hub: SimHub,
        *,
        config: FederationConfig,
        clock: Callable[[], int],
        db_path: Path | None = None,
        cache_events: int | None = None,
    ) -> None:
        self.index = index
        self.key = SigningKey.from_seed(seeds.bytes(f"node-key/{index}"))
        self.server_name = self.key.server_name
        self.user_id = f"@u{index}:{self.server_name}"
        self.hub = hub
        self.config = config
        self.clock = clock
        self.db_path = db_path
        self.cache_events = cache_events
        self.bootstrap: set[str] = set()  # addresses from configuration: survive restarts
        self.network: SimNetwork | None = None
        self.federation: Federation | None = None
        self.incarnations = 0
        self.crashes = 0
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.store = self._open_store()

    def __repr__(self) -> str:
        return f"<SimNode {self.index} {self.server_name[:8]}>"

    def reopen_store(self) -> Store:
        """Open the database file again (prefab set-up replaces it before the first start)."""
        return self._open_store()

    def _open_store(self) -> Store:
        store = Store.open(self.db_path)
        if self.cache_events is not None:
            # Store's LRU sizes suit one node per process; a thousand per
            # process need smaller ones (no public knob yet).
            store._events.max_size = self.cache_events
            store._meta.max_size = self.cache_events * 4
            # And SQLite's page cache (2 MB per connection by default; a
            # thousand connections would hold 2 GB). Pages it drops are
            # still in the OS's file cache: slower reads, same answers.
            store.db.execute(
                f"PRAGMA cache_size = -{SQLITE_CACHE_KIB_PER_EVENT * self.cache_events}"
            )
        return store

    @property
    def running(self) -> bool:
        return self._scope is not None

    async def start(
        self, nursery: trio.Nursery, on_start: Iterable[Callable[[SimNode], Any]] = ()
    ) -> None:
        """Start a new incarnation: network, engine and federation over the kept store."""
        if self._scope is not None:
            raise RuntimeError(f"{self} is running")
        if self.incarnations:
            if self.db_path is not None:
                self.store.close()  # closed only now: the old tasks unwound in between
                self.store = self._open_store()
            else:
                self.store.clear_caches()
        self.incarnations += 1
        self.network = network = self.hub.network(self.server_name)
        for peer in sorted(self.bootstrap):
            network.add_peer_address(peer, [f"/sim/{peer}"])
        fed = build_federation(self.store, self.key, network, self.config, clock=self.clock)
        # Federation keeps wall-clock defaults for transaction timestamps;
        # the simulation's are virtual.
        fed.sender.clock = self.clock
        fed.server.clock = self.clock
        self.federation = fed
        for listener in on_start:
            listener(self)
        self._scope = await nursery.start(self._run, network, fed)

    async def _run(
        self,
        network: SimNetwork,
        fed: Federation,
        task_status: TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            async with network.running(), trio.open_nursery() as nursery:
                await nursery.start(fed.run)
                self._nursery = nursery
                task_status.started(scope)
                try:
                    await trio.sleep_forever()
                finally:
                    if self._nursery is nursery:
                        self._nursery = None

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Run ``fn(*args)`` as this node's own task (a crash cancels it); False if down.

        What the node's users do (send, join, leave) runs here, so a crashed
        node never commits anything after its crash.
        """
        if self._nursery is None or self._scope is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    def crash(self) -> None:
        """Stop at once, as a killed process: only committed data survives."""
        if self._scope is None:
            raise RuntimeError(f"{self} is not running")
        self._scope.cancel()
        self._scope = None
        self._nursery = None
        self.crashes += 1

    def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self.store.close()

    # --- questions the simulator asks (read-only) --------------------------------------

    def holds(self, event_id: str) -> bool:
        """Whether the event reached this server: stored with a verdict (not as an
        outlier) and whole (a copy stripped by a server that did not know our
        join yet is not the message)."""
        meta = self.store.event_meta(event_id)
        return meta is not None and meta.status != EventStatus.OUTLIER and not meta.redacted

    def is_joined(self, room_id: str) -> bool:
        return self.store.current_membership(room_id, self.user_id) == "join"
