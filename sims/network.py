"""The simulated network: a :class:`SimHub` medium and one :class:`SimNetwork` per node.

:class:`SimNetwork` implements :class:`p2pserver.transport.network.Network`,
so the node code (engine, federation) runs on it unchanged, as it runs on
libp2p. The model works at the level of that interface -- requests and
responses as CBOR frames on per-pair connections -- not at the level of
packets, which is what lets a thousand nodes share one process.

Theory of operation:

- One scheduler. The hub owns a heap of timed actions keyed by (virtual
  time, sequence number); :meth:`SimHub.run` fires them in that order. Frame
  transit, arrival and connection resets are heap entries, not tasks, so the
  delivery order is explicit and the cost per frame is a heap push. Handlers
  run as tasks in the destination node's nursery, as on a real node.
- Links. Every pair of nodes has a :class:`LinkProfile`: a latency
  distribution (one draw per frame), a bandwidth in bits/s (frames on one
  direction of a connection are serialised: a frame starts when the one
  before it has left) and a loss probability. The profile is the pair's own
  if set, else its LAN segment's when both nodes are on one, else the
  hub's default (the internet).
- Streams, not datagrams. A connection behaves like TCP under libp2p:
  frames arrive in order (a later frame waits for an earlier one that is
  late: head-of-line blocking). A lost frame is sent again after a
  retransmission timeout that doubles each time (from four times the
  link's mean latency clamped to its ``max``, at least ``min_rto``);
  after ``max_retransmits`` losses in a row the connection resets and the
  requests waiting on it fail with PeerUnreachable.
- Connections. Made on demand, one per pair, shared by both directions.
  Dialling costs ``dial_round_trips`` round trips (TCP, then Noise and
  Yamux negotiation). A destination we have no address for is looked up in
  the DHT model first (if the scenario has one), else PeerUnreachable.
- Partitions. ``partition``/``cut``/``set_link(up=False)`` take links
  down; ``heal`` brings them all up. Two modes, per hub:
  ``refuse`` -- connections on a downed link close at once, requests in
  flight fail with PeerUnreachable, dials are refused after a round trip;
  ``blackhole`` -- frames vanish (so the sender's retransmissions run out
  and the connection resets), idle connections die after
  ``keepalive_timeout``, and dials go unanswered (SYN retries 1 s, 2 s,
  4 s, ... until ``connect_timeout``). A node that is not running is
  unreachable the same way.
- Crash and restart. A node's SimNetwork is one *incarnation*:
  :meth:`SimHub.network` makes a new one for the same server name, with no
  known peers (they were in memory). Traffic counters belong to the server
  name and survive incarnations.
- LAN segments and mDNS. A segment lists its nodes. When a node starts, and
  every ``mdns_interval`` while it runs, it announces itself and asks; after
  one segment latency every running segment member with an up link learns
  its address and it learns theirs, and it dials the ones it did not know
  (as the node's discovery does). Each announcement and answer counts as
  one ``mdns`` packet of :data:`MDNS_PACKET_BYTES`.
- The DHT model (:class:`DhtModel`). A running node publishes its record
  when it starts. A lookup from node Q walks ``ceil(log2 n)`` hops, where
  n is the number of DHT members Q can reach (running, link up); each hop
  costs one round trip to a random reachable member. It finds the target's
  record only if one of the record's ``k`` holders (the members closest to
  the target by XOR of SHA-256 ids) is reachable from Q. Each hop counts one
  ``dht`` request and response of modelled size.
- Counting. Frames count as sent when they first leave and as received
  when delivered, at their CBOR size with the 4-byte header
  (:mod:`p2pserver.transport.framing`), per node and in total;
  retransmissions are counted apart (``retransmitted_frames``/``_bytes``).
  Per-link counters are kept only when asked for (they cost memory at
  scale).

Everything random draws from the hub's seeded streams; nothing reads the
wall clock. See :mod:`sims.determinism`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus

from p2pserver.transport.framing import (
    HEADER_SIZE,
    FrameError,
    Request,
    decode_request,
    decode_response,
    encode_request,
)
from p2pserver.transport.memory import InProcessNetwork
from p2pserver.transport.network import (
    DEFAULT_TIMEOUT,
    NetworkError,
    PeerUnreachable,
    PendingRequest,
    RequestTimeout,
    TrafficCounters,
    check_timeout,
    response_result,
)
from sims.determinism import Seeds
from sims.distributions import Distribution, constant

PARTITION_MODES = ("refuse", "blackhole")
MDNS_PACKET_BYTES = 180  # a PTR + SRV + TXT + A answer for one libp2p peer
DHT_REQUEST_BYTES = 60  # FIND_NODE: a 32-byte key and the envelope
DHT_RESPONSE_BYTES = 20 * 50  # k = 20 peers, id and one address each
DHT_K = 20


@dataclass(frozen=True)
class LinkProfile:
    """How a link behaves: per-frame latency, bandwidth (bits/s, None: unlimited), loss."""

    latency: Distribution = field(default_factory=lambda: constant(0.0))
    bandwidth: float | None = None
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError("bandwidth must be > 0 bits/s")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")


@dataclass
class Segment:
    """A LAN: its members share a link profile and find each other by mDNS."""

    name: str
    members: set[str]
    profile: LinkProfile
    mdns: bool = True
    mdns_interval: float = 60.0


class _Frame:
    __slots__ = ("src", "dst", "size", "deliver", "args", "arrived")

    def __init__(
        self, src: str, dst: str, size: int, deliver: Callable[..., None], args: tuple[Any, ...]
    ) -> None:
        self.src = src
        self.dst = dst
        self.size = size
        self.deliver = deliver
        self.args = args
        self.arrived = False


class _Connection:
    __slots__ = ("key", "ends", "closed", "pending", "busy_until", "queues")

    def __init__(self, key: frozenset[str], a: str, b: str) -> None:
        self.key = key
        self.ends = (a, b)
        self.closed = False
        self.pending: dict[int, PendingRequest[bytes]] = {}  # insertion-ordered: failures in send order
        self.busy_until = [0.0, 0.0]  # per direction: when its last frame has left
        # Per direction: frames sent, not yet delivered in order. None when
        # empty: at scale most of the N^2 / 2 connections are idle, and two
        # empty deques per connection would cost more than the rest of it.
        self.queues: list[deque[_Frame] | None] = [None, None]

    def direction(self, src: str) -> int:
        return 0 if src == self.ends[0] else 1


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


class SimHub:
    """The medium: links, segments, partitions, the DHT, the scheduler and the counters."""

    def __init__(
        self,
        seeds: Seeds,
        *,
        default: LinkProfile | None = None,
        partition_mode: str = "refuse",
        dial_round_trips: int = 2,
        max_retransmits: int = 6,
        min_rto: float = 0.2,
        keepalive_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        dht: bool = False,
        dht_k: int = DHT_K,
        track_links: bool = False,
    ) -> None:
        if partition_mode not in PARTITION_MODES:
            raise ValueError(f"partition_mode must be one of {', '.join(PARTITION_MODES)}")
        self.default = default or LinkProfile()
        self.partition_mode = partition_mode
        self.dial_round_trips = dial_round_trips
        self.max_retransmits = max_retransmits
        self.min_rto = min_rto
        self.keepalive_timeout = keepalive_timeout
        self.connect_timeout = connect_timeout
        self.traffic = TrafficCounters()
        self.node_traffic: dict[str, TrafficCounters] = {}
        self.track_links = track_links
        self.link_traffic: dict[tuple[str, str], TrafficCounters] = {}
        self.retransmitted_frames = 0
        self.retransmitted_bytes = 0
        self.connection_resets = 0
        self.dht: DhtModel | None = DhtModel(self, seeds, k=dht_k) if dht else None
        self.segments: dict[str, Segment] = {}
        self._segment_of: dict[str, Segment] = {}
        self._latency_rng = seeds.rng("latency")
        self._loss_rng = seeds.rng("loss")
        self._nodes: dict[str, SimNetwork] = {}
        self._links: dict[frozenset[str], LinkProfile] = {}
        self._down: set[frozenset[str]] = set()
        self._connections: dict[frozenset[str], _Connection] = {}
        self._dialling: dict[frozenset[str], trio.Event] = {}
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._wait: trio.CancelScope | None = None
        self._running = False

    # --- nodes ------------------------------------------------------------------------

    def network(self, server_name: str) -> SimNetwork:
        """A new incarnation of ``server_name`` (the previous one must have stopped)."""
        if not isinstance(server_name, str) or not server_name:
            raise ValueError("server_name must be a non-empty string")
        old = self._nodes.get(server_name)
        if old is not None and old.is_running:
            raise RuntimeError(f"{server_name} is running; stop it before a new incarnation")
        node = SimNetwork(self, server_name)
        self._nodes[server_name] = node
        return node

    def node(self, server_name: str) -> SimNetwork | None:
        return self._nodes.get(server_name)

    def is_running(self, server_name: str) -> bool:
        node = self._nodes.get(server_name)
        return node is not None and node.is_running

    def node_names(self) -> list[str]:
        return list(self._nodes)

    # --- link control -----------------------------------------------------------------

    def add_segment(
        self,
        name: str,
        members: Iterable[str],
        profile: LinkProfile,
        *,
        mdns: bool = True,
        mdns_interval: float = 60.0,
    ) -> Segment:
        if name in self.segments:
            raise ValueError(f"segment {name} exists")
        segment = Segment(name, set(members), profile, mdns, mdns_interval)
        for member in segment.members:
            if member in self._segment_of:
                raise ValueError(f"{member} is already on segment {self._segment_of[member].name}")
            self._segment_of[member] = segment
        self.segments[name] = segment
        return segment

    def segment_of(self, server_name: str) -> Segment | None:
        return self._segment_of.get(server_name)

    def set_profile(self, a: str, b: str, profile: LinkProfile) -> None:
        """Give the pair its own link profile (both directions)."""
        self._links[_pair(a, b)] = profile

    def profile(self, a: str, b: str) -> LinkProfile:
        own = self._links.get(_pair(a, b))
        if own is not None:
            return own
        segment = self._segment_of.get(a)
        if segment is not None and segment is self._segment_of.get(b):
            return segment.profile
        return self.default

    def link_up(self, a: str, b: str) -> bool:
        return _pair(a, b) not in self._down

    def set_link(self, a: str, b: str, *, up: bool) -> None:
        key = _pair(a, b)
        if up:
            self._down.discard(key)
            return
        if key in self._down:
            return
        self._down.add(key)
        if key in self._connections:
            if self.partition_mode == "refuse":
                self._drop(key, "link down")
            else:
                self.schedule(self.keepalive_timeout, self._keepalive_check, key)

    def cut(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Take down every link between a node of ``group_a`` and one of ``group_b``."""
        b_nodes = list(group_b)
        for a in group_a:
            for b in b_nodes:
                if a != b:
                    self.set_link(a, b, up=False)

    def partition(self, *groups: Iterable[str]) -> None:
        """Heal, then cut every link between nodes of different groups."""
        self.heal()
        sets = [list(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1 :]:
                self.cut(g, h)

    def heal(self) -> None:
        """All links up (connections reopen on the next request)."""
        self._down.clear()

    def down_links(self) -> int:
        return len(self._down)

    def disconnect(self, a: str, b: str) -> None:
        """Close the connection between ``a`` and ``b`` (the link stays up)."""
        self._drop(_pair(a, b), "connection closed")

    def is_connected(self, a: str, b: str) -> bool:
        return _pair(a, b) in self._connections

    def reachable(self, src: str, dst: str) -> bool:
        """Whether ``src`` could reach ``dst`` now: both running and the link up."""
        return self.is_running(src) and self.is_running(dst) and self.link_up(src, dst)

    # --- the scheduler ----------------------------------------------------------------

    def schedule(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` after ``delay`` virtual seconds, in (time, order of scheduling)."""
        at = trio.current_time() + delay
        heapq.heappush(self._heap, (at, next(self._seq), fn, args))
        wait = self._wait
        if wait is not None and at < wait.deadline:
            wait.deadline = at

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire scheduled actions until cancelled. Start it before any node."""
        heap = self._heap
        self._running = True
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, fn, args = heapq.heappop(heap)
                    fn(*args)
                deadline = heap[0][0] if heap else math.inf
                with trio.CancelScope(deadline=deadline) as self._wait:
                    await trio.sleep_forever()
                self._wait = None
        finally:
            self._running = False
            self._wait = None

    # --- counting ---------------------------------------------------------------------

    def _counters(self, name: str) -> TrafficCounters:
        counters = self.node_traffic.get(name)
        if counters is None:
            counters = self.node_traffic[name] = TrafficCounters()
        return counters

    def _link_counters(self, src: str, dst: str) -> TrafficCounters:
        counters = self.link_traffic.get((src, dst))
        if counters is None:
            counters = self.link_traffic[(src, dst)] = TrafficCounters()
        return counters

    def count_sent(self, src: str, dst: str | None, size: int, method: str) -> None:
        self._counters(src).count_sent(size, method)
        self.traffic.count_sent(size, method)
        if self.track_links and dst is not None:
            self._link_counters(src, dst).count_sent(size, method)

    def count_received(self, dst: str, src: str | None, size: int) -> None:
        self._counters(dst).count_received(size)
        self.traffic.count_received(size)
        if self.track_links and src is not None:
            self._link_counters(src, dst).count_received(size)

    # --- frames -----------------------------------------------------------------------

    def _rto(self, profile: LinkProfile, attempt: int) -> float:
        return max(self.min_rto, 4 * profile.latency.clamped_mean()) * (2**attempt)

    def send_frame(
        self,
        conn: _Connection,
        src: str,
        dst: str,
        size: int,
        method: str,
        deliver: Callable[..., None],
        args: tuple[Any, ...],
    ) -> None:
        """Put a frame on ``conn``; ``deliver(*args)`` runs when it arrives, in order."""
        self.count_sent(src, dst, size, method)
        frame = _Frame(src, dst, size, deliver, args)
        direction = conn.direction(src)
        queue = conn.queues[direction]
        if queue is None:
            queue = conn.queues[direction] = deque()
        queue.append(frame)
        self._transmit(conn, direction, frame, 0)

    def _transmit(self, conn: _Connection, direction: int, frame: _Frame, attempt: int) -> None:
        if conn.closed:
            return
        if attempt:
            self.retransmitted_frames += 1
            self.retransmitted_bytes += frame.size
        profile = self.profile(frame.src, frame.dst)
        now = trio.current_time()
        leaves = max(now, conn.busy_until[direction])  # after the frames before it
        if profile.bandwidth is not None:
            leaves += frame.size * 8 / profile.bandwidth
        conn.busy_until[direction] = leaves
        lost = conn.key in self._down or (
            profile.loss > 0 and self._loss_rng.random() < profile.loss
        )
        if lost:
            if attempt >= self.max_retransmits:
                self.schedule(leaves - now + self._rto(profile, attempt), self._give_up, conn)
            else:
                rto = self._rto(profile, attempt)
                self.schedule(
                    leaves - now + rto, self._transmit, conn, direction, frame, attempt + 1
                )
            return
        latency = profile.latency.sample(self._latency_rng)
        self.schedule(leaves - now + latency, self._arrive, conn, direction, frame)

    def _give_up(self, conn: _Connection) -> None:
        if not conn.closed:
            self.connection_resets += 1
            self._drop(conn.key, "connection reset: retransmissions exhausted")

    def _arrive(self, conn: _Connection, direction: int, frame: _Frame) -> None:
        frame.arrived = True
        queue = conn.queues[direction]
        while queue and queue[0].arrived and not conn.closed:
            head = queue.popleft()
            self.count_received(head.dst, head.src, head.size)
            head.deliver(*head.args)
        if queue is not None and not queue and conn.queues[direction] is queue:
            conn.queues[direction] = None

    def _keepalive_check(self, key: frozenset[str]) -> None:
        if key in self._down:
            self._drop(key, "keep-alive timed out")

    # --- connections ------------------------------------------------------------------

    def _round_trip(self, a: str, b: str) -> float:
        latency = self.profile(a, b).latency
        return latency.sample(self._latency_rng) + latency.sample(self._latency_rng)

    async def connect(self, src: SimNetwork, dst: str) -> _Connection:
        key = _pair(src.server_name, dst)
        while True:
            conn = self._connections.get(key)
            if conn is not None:
                return conn
            dialling = self._dialling.get(key)
            if dialling is not None:
                await dialling.wait()  # the other end, or another task, is dialling this pair
                continue
            if dst in src._known:
                break
            if self.dht is None or not await self.dht.lookup(src, dst):
                raise PeerUnreachable(f"no known address for {dst}")
            # The lookup took time: look again for a connection or a dial.
        done = self._dialling[key] = trio.Event()
        try:
            return await self._dial(src, dst, key)
        finally:
            del self._dialling[key]
            done.set()

    async def _dial(self, src: SimNetwork, dst: str, key: frozenset[str]) -> _Connection:
        name = src.server_name
        waited = 0.0
        syn_retry = 1.0
        while True:
            profile = self.profile(name, dst)
            answered = self.reachable(name, dst)
            lost = profile.loss > 0 and self._loss_rng.random() < profile.loss
            if answered and not lost:
                await trio.sleep(self.dial_round_trips * self._round_trip(name, dst))
                if not src.is_running:
                    raise PeerUnreachable("stopped while dialling")
                if self.reachable(name, dst):
                    break
            elif not lost and self.partition_mode == "refuse":
                await trio.sleep(self._round_trip(name, dst))
                raise PeerUnreachable(f"cannot connect to {dst}")
            # Unanswered: the SYN is sent again, 1 s, 2 s, 4 s, ... later.
            if waited + syn_retry > self.connect_timeout:
                await trio.sleep(max(0.0, self.connect_timeout - waited))
                raise PeerUnreachable(f"connecting to {dst} timed out")
            await trio.sleep(syn_retry)
            waited += syn_retry
            syn_retry *= 2
        conn = self._connections[key] = _Connection(key, name, dst)
        peer = self._nodes[dst]
        src._known.add(dst)
        peer._known.add(name)
        src._set_connected(dst, True)
        peer._set_connected(name, True)
        return conn

    def _drop(self, key: frozenset[str], reason: str) -> None:
        conn = self._connections.pop(key, None)
        if conn is None:
            return
        conn.closed = True
        for pending in conn.pending.values():
            pending.fail(PeerUnreachable(reason))
        conn.pending.clear()
        a, b = conn.ends
        for me, other in ((a, b), (b, a)):
            node = self._nodes.get(me)
            if node is not None and node.is_running:
                node._set_connected(other, False)

    def node_stopped(self, name: str) -> None:
        for key in [k for k in self._connections if name in k]:
            self._drop(key, f"{name} stopped")

    # --- discovery --------------------------------------------------------------------

    def node_started(self, node: SimNetwork) -> None:
        name = node.server_name
        if self.dht is not None:
            self.dht.publish(name)
        segment = self._segment_of.get(name)
        if segment is not None and segment.mdns:
            delay = segment.profile.latency.sample(self._latency_rng)
            self.schedule(delay, self._mdns_round, node, segment)

    def _mdns_round(self, node: SimNetwork, segment: Segment) -> None:
        """``node`` multicasts a query and its announcement; running members answer."""
        if not node.is_running or self._nodes.get(node.server_name) is not node:
            return
        name = node.server_name
        self.count_sent(name, None, MDNS_PACKET_BYTES, "mdns")
        for other in sorted(segment.members):
            if other == name or not self.reachable(name, other):
                continue
            peer = self._nodes[other]
            self.count_received(other, None, MDNS_PACKET_BYTES)
            self.count_sent(other, None, MDNS_PACKET_BYTES, "mdns")
            self.count_received(name, None, MDNS_PACKET_BYTES)
            new = other not in node._known
            peer.add_peer_address(name, node.listen_addresses())
            node.add_peer_address(other, peer.listen_addresses())
            if new and node._nursery is not None:
                # As the node's discovery does: a new LAN neighbour is dialled at once.
                node._nursery.start_soon(node.connect_quietly, other)
        self.schedule(segment.mdns_interval, self._mdns_round, node, segment)


class DhtModel:
    """A Kademlia-like peer lookup that sees only what the querier's partition can reach."""

    def __init__(self, hub: SimHub, seeds: Seeds, *, k: int = DHT_K) -> None:
        self.hub = hub
        self.k = k
        self.members: dict[str, bytes] = {}  # server name -> its DHT id
        self.lookups = 0
        self.found = 0
        self._rng = seeds.rng("dht")
        self._holders: dict[str, list[str]] = {}

    def publish(self, name: str) -> None:
        if name not in self.members:
            self.members[name] = hashlib.sha256(name.encode()).digest()
            self._holders.clear()

    def holders(self, target: str) -> list[str]:
        """The ``k`` members closest to ``target``'s id: where its record lives."""
        held = self._holders.get(target)
        if held is None:
            tid = int.from_bytes(hashlib.sha256(target.encode()).digest(), "big")
            ranked = sorted(
                self.members, key=lambda m: (int.from_bytes(self.members[m], "big") ^ tid, m)
            )
            held = self._holders[target] = ranked[: self.k]
        return held

    def hops(self, reachable: int) -> int:
        return max(1, math.ceil(math.log2(reachable + 1)))

    async def lookup(self, src: SimNetwork, target: str) -> bool:
        """Find ``target``'s address for ``src``; True (and the address added) if found."""
        hub = self.hub
        name = src.server_name
        self.lookups += 1
        reachable = [m for m in self.members if m != name and hub.reachable(name, m)]
        hops = self.hops(len(reachable))
        delay = 0.0
        for _ in range(hops):
            hub.count_sent(name, None, DHT_REQUEST_BYTES, "dht")
            hub.count_received(name, None, DHT_RESPONSE_BYTES)
            if reachable:
                delay += hub._round_trip(name, self._rng.choice(reachable))
        await trio.sleep(delay)
        if target not in self.members or not src.is_running:
            return False
        if not any(h == name or hub.reachable(name, h) for h in self.holders(target)):
            return False
        self.found += 1
        src.add_peer_address(target, [f"/sim/{target}"])
        return True


class SimNetwork(InProcessNetwork):
    """One incarnation of a node on a SimHub. Create it with ``hub.network(server_name)``."""

    scheme = "sim"

    def __init__(self, hub: SimHub, server_name: str) -> None:
        super().__init__(server_name)
        self._hub = hub
        self.traffic = hub._counters(server_name)  # survives incarnations

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self._hub._nodes.get(self.server_name) is not self:
            raise RuntimeError(f"{self.server_name}: this incarnation was replaced")
        async with super().running():
            yield

    def _on_start(self) -> None:
        self._hub.node_started(self)

    def _on_stop(self) -> None:
        self._hub.node_stopped(self.server_name)

    async def connect_quietly(self, destination: str) -> None:
        with suppress(NetworkError):
            await self.connect(destination)

    async def _open_connection(self, destination: str) -> _Connection:
        return await self._hub.connect(self, destination)

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
        request_id = next(self._ids)
        frame = encode_request(Request(request_id, method, body))
        self._require_running()
        hub = self._hub
        with trio.move_on_after(timeout):
            conn = await self._open_connection(destination)
            pending = PendingRequest[bytes]()
            tag = request_id if conn.ends[0] == self.server_name else -request_id
            conn.pending[tag] = pending
            try:
                hub.send_frame(
                    conn,
                    self.server_name,
                    destination,
                    len(frame),
                    method,
                    hub_deliver_request,
                    (hub, conn, self.server_name, destination, frame, pending, method),
                )
                await pending.done.wait()
            finally:
                conn.pending.pop(tag, None)
            if pending.error is not None:
                raise pending.error
            assert pending.response is not None
            return response_result(decode_response(pending.response[HEADER_SIZE:]))
        raise RequestTimeout(f"{method} to {destination} timed out after {timeout}s")

    async def _serve(
        self, conn: _Connection, caller: str, frame: bytes, pending: PendingRequest[bytes], method: str
    ) -> None:
        """Runs in this (the destination) node's nursery."""
        try:
            request = decode_request(frame[HEADER_SIZE:])
        except FrameError as e:  # pragma: no cover - encode_request checks the same rules
            pending.fail(PeerUnreachable(f"malformed request: {e}"))
            return
        response = await self._serve_request(caller, request)
        if conn.closed:
            return
        self._hub.send_frame(
            conn, self.server_name, caller, len(response), method, _resolve, (pending, response)
        )


def hub_deliver_request(
    hub: SimHub,
    conn: _Connection,
    caller: str,
    destination: str,
    frame: bytes,
    pending: PendingRequest[bytes],
    method: str,
) -> None:
    peer = hub._nodes.get(destination)
    if peer is None or peer._nursery is None:  # a closed connection delivers nothing
        return
    peer._nursery.start_soon(peer._serve, conn, caller, frame, pending, method)


def _resolve(pending: PendingRequest[bytes], response: bytes) -> None:
    pending.resolve(response)
