"""An in-memory `Network` for tests and simulations: many nodes, one process.

Nodes join a :class:`MemoryHub` (``hub.network(server_name)``) and run with
``async with node.running():``. Nothing here reads the wall clock or draws
random numbers: delays are ``trio.sleep`` calls, so under
``trio.testing.MockClock`` a run is as deterministic as trio's scheduler
(fully, once trio's scheduling RNG is seeded).

Model, chosen to match what libp2p gives protocol code:

- Connections. A request (or ``connect``) to a peer without a connection
  dials first: the peer must be known (``add_peer_address``, or it connected
  to us before), running, and the link between the two up. Dialling costs one
  round trip (2 x latency). One connection per pair of nodes, shared by both
  directions; both ends get a ``PeerEvent`` when it opens and closes.
- Delivery. A request travels as the same CBOR frame libp2p would send
  (:mod:`~p2pserver.transport.framing`, same size limits, decoded again on
  arrival so no objects are shared between nodes). After the link's one-way
  latency the destination runs its handler in a task of *its own* nursery;
  the response frame travels back after the latency again.
- Partitions. ``set_link(a, b, up=False)`` or ``partition(...)`` takes links
  down: the connection closes, requests in flight on it fail with
  PeerUnreachable, and new dials fail at once (a refused connection, not
  silent loss). A node that stops closes all its connections the same way.
- Counters. ``hub.traffic``, ``hub.link_traffic[(src, dst)]`` and each node's
  ``traffic`` count frames and their bytes as they would be on the wire
  (length header included, no transport overhead). A frame counts as sent
  when it leaves and as received when it arrives; frames lost to a closed
  connection are sent but never received.
- No defences: no rate limits, handler timeouts or bans (that is libp2p's
  job); the hub models the medium, not misbehaving peers.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from p2pserver.transport.framing import (
    HEADER_SIZE,
    FrameError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
)
from p2pserver.transport.network import (
    DEFAULT_TIMEOUT,
    Network,
    PeerUnreachable,
    PendingRequest,
    RequestTimeout,
    TrafficCounters,
    check_timeout,
    response_result,
)


class _Connection:
    def __init__(self, a: str, b: str) -> None:
        self.ends = (a, b)
        self.closed = False
        self.pending: set[PendingRequest[Response]] = set()


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


class MemoryHub:
    """The medium MemoryNetworks talk through: links, latency, partitions, counters."""

    def __init__(self, *, latency: float = 0.0) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self.default_latency = latency
        self.traffic = TrafficCounters()
        self.link_traffic: dict[tuple[str, str], TrafficCounters] = {}
        self._nodes: dict[str, MemoryNetwork] = {}
        self._latency: dict[frozenset[str], float] = {}
        self._down: set[frozenset[str]] = set()
        self._connections: dict[frozenset[str], _Connection] = {}
        self._dialling: dict[frozenset[str], trio.Event] = {}

    def network(self, server_name: str) -> MemoryNetwork:
        """Create the node ``server_name`` on this hub."""
        if not isinstance(server_name, str) or not server_name:
            raise ValueError("server_name must be a non-empty string")
        if server_name in self._nodes:
            raise ValueError(f"{server_name} is already on this hub")
        node = MemoryNetwork(self, server_name)
        self._nodes[server_name] = node
        return node

    # --- link control -------------------------------------------------------

    def latency(self, a: str, b: str) -> float:
        return self._latency.get(_pair(a, b), self.default_latency)

    def set_latency(self, a: str, b: str, seconds: float) -> None:
        """One-way latency between ``a`` and ``b`` (both directions)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency[_pair(a, b)] = seconds

    def link_up(self, a: str, b: str) -> bool:
        return _pair(a, b) not in self._down

    def set_link(self, a: str, b: str, *, up: bool) -> None:
        key = _pair(a, b)
        if up:
            self._down.discard(key)
        else:
            self._down.add(key)
            self._drop(key, "link down")

    def partition(self, *groups: Iterable[str]) -> None:
        """Heal, then take down every link between nodes of different groups."""
        self.heal()
        sets = [set(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1 :]:
                for a in g:
                    for b in h:
                        self.set_link(a, b, up=False)

    def heal(self) -> None:
        """All links up (connections reopen on the next request)."""
        self._down.clear()

    def disconnect(self, a: str, b: str) -> None:
        """Close the connection between ``a`` and ``b`` (the link stays up)."""
        self._drop(_pair(a, b), "connection closed")

    def is_connected(self, a: str, b: str) -> bool:
        return _pair(a, b) in self._connections

    # --- internals ---------------------------------------------------------------

    def _link_counters(self, src: str, dst: str) -> TrafficCounters:
        counters = self.link_traffic.get((src, dst))
        if counters is None:
            counters = self.link_traffic[(src, dst)] = TrafficCounters()
        return counters

    def _count_sent(self, src: MemoryNetwork, dst: str, size: int, method: str) -> None:
        src.traffic.count_sent(size, method)
        self.traffic.count_sent(size, method)
        self._link_counters(src.server_name, dst).count_sent(size, method)

    def _count_received(self, dst: MemoryNetwork, src: str, size: int) -> None:
        dst.traffic.count_received(size)
        self.traffic.count_received(size)
        self._link_counters(src, dst.server_name).count_received(size)

    def _reachable(self, src: str, dst: str) -> bool:
        node = self._nodes.get(dst)
        return (
            node is not None
            and node.is_running
            and self._nodes[src].is_running
            and _pair(src, dst) not in self._down
        )

    async def _connect(self, src: MemoryNetwork, dst: str) -> _Connection:
        key = _pair(src.server_name, dst)
        while True:
            conn = self._connections.get(key)
            if conn is not None:
                return conn
            dialling = self._dialling.get(key)
            if dialling is None:
                break
            await dialling.wait()  # someone else is dialling this pair
        if dst not in src._known:
            raise PeerUnreachable(f"no known address for {dst}")
        if not self._reachable(src.server_name, dst):
            raise PeerUnreachable(f"cannot connect to {dst}")
        done = self._dialling[key] = trio.Event()
        try:
            await trio.sleep(2 * self.latency(src.server_name, dst))
            if not self._reachable(src.server_name, dst):
                raise PeerUnreachable(f"cannot connect to {dst}")
            conn = self._connections[key] = _Connection(src.server_name, dst)
            peer = self._nodes[dst]
            src._known.add(dst)
            peer._known.add(src.server_name)
            src._set_connected(dst, True)
            peer._set_connected(src.server_name, True)
            return conn
        finally:
            del self._dialling[key]
            done.set()

    def _drop(self, key: frozenset[str], reason: str) -> None:
        conn = self._connections.pop(key, None)
        if conn is None:
            return
        conn.closed = True
        for pending in conn.pending:
            pending.fail(PeerUnreachable(reason))
        a, b = conn.ends
        self._nodes[a]._set_connected(b, False)
        self._nodes[b]._set_connected(a, False)

    def _node_stopped(self, name: str) -> None:
        for key in [k for k in self._connections if name in k]:
            self._drop(key, f"{name} stopped")


class InProcessNetwork(Network):
    """What every in-process network shares: its lifecycle and address book.

    Subclasses (this module's :class:`MemoryNetwork`, the simulator's
    ``SimNetwork``) add how frames travel; ``_on_start``/``_on_stop`` tell
    their hub the node came and went. ``scheme`` names the listen address.
    """

    scheme = "memory"

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name)
        self._nursery: trio.Nursery | None = None
        self._known: set[str] = set()
        self._ids = itertools.count(1)

    @property
    def is_running(self) -> bool:
        return self._nursery is not None

    def _on_start(self) -> None:
        """The node is up (its nursery is open)."""

    def _on_stop(self) -> None:
        """The node is going down (before its subscribers are closed)."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self._nursery is not None:
            raise RuntimeError(f"{self.server_name} is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._on_start()
            try:
                yield
            finally:
                self._nursery = None
                self._on_stop()
                self._close_subscribers()
                nursery.cancel_scope.cancel()

    def listen_addresses(self) -> list[str]:
        return [f"/{self.scheme}/{self.server_name}"] if self.is_running else []

    def add_peer_address(self, server_name: str, addrs: Iterable[str]) -> None:
        addrs = list(addrs)
        if not all(isinstance(a, str) for a in addrs):
            raise ValueError("addresses must be strings")
        if server_name != self.server_name:
            self._known.add(server_name)

    def known_peers(self) -> set[str]:
        return set(self._known)

    def _require_running(self) -> None:
        if self._nursery is None:
            raise RuntimeError(f"{self.server_name} is not running")

    async def connect(self, destination: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        check_timeout(timeout)
        self._check_destination(destination)
        self._require_running()
        with trio.move_on_after(timeout):
            await self._open_connection(destination)
            return
        raise RequestTimeout(f"connecting to {destination} timed out after {timeout}s")

    async def _open_connection(self, destination: str) -> object:
        """The hub's connection to ``destination``, opened if need be."""
        raise NotImplementedError


class MemoryNetwork(InProcessNetwork):
    """One node on a MemoryHub. Create it with ``hub.network(server_name)``."""

    def __init__(self, hub: MemoryHub, server_name: str) -> None:
        super().__init__(server_name)
        self._hub = hub

    def _on_stop(self) -> None:
        self._hub._node_stopped(self.server_name)

    async def _open_connection(self, destination: str) -> _Connection:
        return await self._hub._connect(self, destination)

    async def request(
        self,
        destination: str,
        method: str,
        body: dict[str, Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        check_timeout(timeout)
        self._check_destination(destination)
        frame = encode_request(Request(next(self._ids), method, body))
        self._require_running()
        hub = self._hub
        with trio.move_on_after(timeout):
            conn = await self._open_connection(destination)
            pending = PendingRequest[Response]()
            conn.pending.add(pending)
            try:
                hub._count_sent(self, destination, len(frame), method)
                peer = hub._nodes[destination]
                assert peer._nursery is not None  # a connection implies both ends run
                peer._nursery.start_soon(peer._deliver, conn, self, frame, pending, method)
                await pending.done.wait()
            finally:
                conn.pending.discard(pending)
            if pending.error is not None:
                raise pending.error
            assert pending.response is not None
            return response_result(pending.response)
        raise RequestTimeout(f"{method} to {destination} timed out after {timeout}s")

    async def _deliver(
        self,
        conn: _Connection,
        caller: MemoryNetwork,
        frame: bytes,
        pending: PendingRequest[Response],
        method: str,
    ) -> None:
        """Runs in this (the destination) node's nursery."""
        hub = self._hub
        latency = hub.latency(caller.server_name, self.server_name)
        await trio.sleep(latency)
        if conn.closed:
            return
        hub._count_received(self, caller.server_name, len(frame))
        try:
            request = decode_request(frame[HEADER_SIZE:])
        except FrameError as e:  # pragma: no cover - encode_request checks the same rules
            pending.fail(PeerUnreachable(f"malformed request: {e}"))
            return
        response_frame = await self._serve_request(caller.server_name, request)
        if conn.closed:
            return
        hub._count_sent(self, caller.server_name, len(response_frame), method)
        await trio.sleep(latency)
        if conn.closed:
            return
        hub._count_received(caller, self.server_name, len(response_frame))
        pending.resolve(decode_response(response_frame[HEADER_SIZE:]))
