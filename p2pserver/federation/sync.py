"""Pull catch-up: servers that share a room compare forward extremities and fetch what they lack.

Pushes (:mod:`p2pserver.federation.fanout`) miss servers: a parent in an
event's tree is offline, two members cannot reach each other, a node was
off while the room moved on. Pulling repairs all of these, because events
are self-authenticating: any member holding an event may serve it, and the
receiver checks it like any PDU.

The ``room_heads`` exchange (a p2p method; request and response are both
``{"rooms": {room_id: [event_id, ...]}}``, at most 20 forward extremities,
deepest first, per room):

- The requester lists its forward extremities for rooms it believes the
  responder is joined to. The responder answers with its own, only for
  rooms where the requester has a user joined or invited in its current
  state (heads of other rooms are not revealed), or was joined after one
  of the heads it sent: a server removed in a branch it never received
  still sees itself joined, and must be able to catch up to learn
  otherwise (see :mod:`.server` for what it may then fetch).
- Each side then fetches the heads it does not hold from the other (below).
  So one request lets both catch up.
- Holding the same events is not always enough to resolve the same state
  (a soft-failed event is never a forward extremity): the requester then
  reconciles the two (:mod:`.merging`).

When exchanges happen:

1. When a peer connects (a :class:`~p2pserver.transport.network.PeerEvent`):
   with that peer, for every room we share with it.
2. After our forward extremities change (debounced by ``announce_delay``):
   with up to ``fanout`` connected servers of the room that may lack our
   heads (:class:`~p2pserver.federation.knowledge.PeerKnowledge` says who
   has them already; pushes that succeeded count). This carries an event to
   a member its origin cannot reach: whoever accepts it announces it to
   the members it is connected to, and they pull it.
3. Every ``sync_interval`` seconds: per room, with up to ``fanout``
   servers of the room, connected ones first, others dialled (skipping
   those the sender is backing off from), chosen anew each round. This
   heals partitions with no other trigger (and restores the room's
   current state we hold stripped but may see whole, should anything have
   missed it: ``restore_stripped``). The first round comes between
   one and two intervals after start, at a phase fixed by the server's
   name, so servers started together do not pull in step.

Catching up from a peer (``catch_up``) follows the spec's
``/get_missing_events`` walk: fetch each missing head (``event``), then ask
for the events before the oldest ones whose prev events we still lack,
with our forward extremities as ``earliest_events``, 100 at a time, until
no prev event is missing or ``max_catchup_events`` are held. Then the room
engine receives them oldest first (by depth), so each one's prev events are
present and it is checked as any received PDU, in full. A gap larger than
the limit is left to the engine, which takes the state at the gap from the
peer as the spec allows. One catch-up per room runs at a time.

Pushed PDUs are not preceded by a catch-up: the engine fetches what comes
before them itself, as the spec says (``/get_missing_events``, then the
state at a gap), and the exchanges above fill what pushes miss.

Filling gaps (``fill_gaps``): an event the engine accepted on the state at
a gap leaves the events before it missing from our timeline. Whenever a
room has such gaps (after a transaction, a catch-up, and at each periodic
round), they are collected from a peer as in a catch-up and handed to the
engine as history (:meth:`~p2pserver.engine.engine.RoomEngine.receive_history`),
one fill per room at a time.

Paging back (``backfill``): history older than anything we hold (from
before we joined, or beyond a fill) is fetched only when a client pages
back to it: the spec's ``/backfill`` from the room's backward extremities,
asking servers of the room, connected ones first, until one gives events
we accept (at most :data:`BACKFILL_SERVERS` of them, each under
:data:`BACKFILL_TIMEOUT` seconds and all under :data:`BACKFILL_PATIENCE`,
so the client's request stays bounded). One backfill or fill per room runs
at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own is hidden by these stubs

from p2pserver.engine.engine import RoomEngine
from p2pserver.engine.notifier import RoomUpdate
from p2pserver.federation import protocol as p
from p2pserver.federation.client import FederationClient, FederationError
from p2pserver.federation.fanout import DEFAULT_FANOUT
from p2pserver.federation.knowledge import PeerKnowledge
from p2pserver.federation.merging import ExtremityMerger
from p2pserver.federation.view import (
    has_dag,
    held_in_dag,
    joined_at_any,
    room_servers,
    server_in_room,
    shared_rooms,
)
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import Event
from p2pserver.rooms.validation import parse_pdu
from p2pserver.storage.cache import LruCache
from p2pserver.transport.network import Network

logger = logging.getLogger(__name__)

DEFAULT_SYNC_INTERVAL = 60.0
DEFAULT_ANNOUNCE_DELAY = 0.5
DEFAULT_MAX_CATCHUP_EVENTS = 5000
# restore_stripped: how long a run keeps trying; how many stripped events it
# asks for in a round, reading at most so many pages of that size; how many
# a server must strip before we try another (and how many servers' definitive
# answers make us give an event up); how often a server may answer an event
# stripped, and the waits after its first answers; how many servers a round
# asks; how many events' answers are remembered.
RESTORE_PATIENCE = 600.0
MAX_RESTORED = 1000
RESTORE_SCAN_PAGES = 5
RESTORE_PROBES = 3
RESTORE_ASKS = 3
RESTORE_WAITS = (30.0, 300.0)  # asks of one server at 0, 30 and 330 s
RESTORE_SERVERS = 8
RESTORE_MEMORY = 4096
# After a server connects, how long to let it take our heads before asking
# it for events that wait for another round.
RESTORE_AFTER_CONNECT = 5.0
MAX_CONCURRENT_EXCHANGES = 8
# Too many forward extremities: the wait before merging them, per server
# between REDUCE_DELAY and REDUCE_DELAY + REDUCE_SPREAD seconds.
REDUCE_DELAY = 5.0
REDUCE_SPREAD = 20.0
# backfill: how many servers to ask, how long each may take, and how long in all.
BACKFILL_SERVERS = 3
BACKFILL_TIMEOUT = 10.0
BACKFILL_PATIENCE = 20.0


def _rank(*parts: object) -> bytes:
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


def _fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: a per-server spread that needs no randomness."""
    return int.from_bytes(_rank(*parts)[:4], "big") / 2**32


def _ranker(*prefix: object) -> Callable[[str], bytes]:
    """``lambda s: _rank(*prefix, s)``, hashing the common prefix once.

    Ranking a room's servers is O(N) per announcement; this keeps the
    per-server cost to one SHA-256 update of the name.
    """
    start = hashlib.sha256("".join(f"{part}|" for part in prefix).encode())

    def rank(server: str) -> bytes:
        h = start.copy()
        h.update(server.encode())
        return h.digest()

    return rank


@dataclass
class _RestoreTries:
    """What :meth:`RoomSync.restore_stripped` learnt about one stripped event, per server."""

    room_id: str
    stripped_by: set[str] = field(default_factory=set)  # definitive answers
    answers: dict[str, int] = field(default_factory=dict)  # how often each stripped it
    not_before: dict[str, float] = field(default_factory=dict)  # each not asked again until
    given_up: bool = False

    def may_ask(self, server: str) -> bool:
        """Whether ``server`` may still be asked at all (now or later)."""
        return server not in self.stripped_by and self.answers.get(server, 0) < RESTORE_ASKS

    def next_ask(self, servers: Iterable[str]) -> float | None:
        """When one of ``servers`` may next be asked (None: none may)."""
        times = [self.not_before.get(s, 0.0) for s in servers if self.may_ask(s)]
        return min(times) if times else None


class RoomSync:
    def __init__(
        self,
        engine: RoomEngine,
        client: FederationClient,
        network: Network,
        *,
        knowledge: PeerKnowledge | None = None,
        fanout: int = DEFAULT_FANOUT,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        announce_delay: float = DEFAULT_ANNOUNCE_DELAY,
        max_catchup_events: int = DEFAULT_MAX_CATCHUP_EVENTS,
        backing_off: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.client = client
        self.network = network
        self.knowledge = knowledge or PeerKnowledge()
        self.merger = ExtremityMerger(engine)
        self.fanout = fanout
        self.sync_interval = sync_interval
        self.announce_delay = announce_delay
        self.max_catchup_events = max_catchup_events
        self.server_name = engine.server_name
        self._backing_off = backing_off
        self._dirty: set[str] = set()
        self._announce = trio.Event()
        self._room_locks: dict[str, trio.Lock] = {}
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_EXCHANGES)
        self._nursery: trio.Nursery | None = None
        self._round = 0
        # Rooms with a restore run, and the event that wakes it early.
        self._restoring: dict[str, trio.Event] = {}
        self._restore_tries: LruCache[str, _RestoreTries] = LruCache(RESTORE_MEMORY)
        self._filling: set[str] = set()
        # Counters for tests and benchmarks.
        self.exchanges = 0
        self.events_pulled = 0

    # -- triggers ------------------------------------------------------------------------

    def on_room_update(self, update: RoomUpdate) -> None:
        """Notifier listener: our forward extremities may have moved."""
        if update.event is not None:
            self._dirty.add(update.room_id)
            self._announce.set()
            if self._nursery is not None and self.merger.too_many_extremities(update.room_id):
                # Each server waits its own while (its rank in the room), so
                # that the first merge reaches the others before they merge.
                delay = REDUCE_DELAY + REDUCE_SPREAD * _fraction(update.room_id, self.server_name)
                self._nursery.start_soon(self.merger.reduce, update.room_id, delay)

    def peer_connected(self, server_name: str) -> None:
        rooms = shared_rooms(self.store, server_name)
        if rooms and self._nursery is not None:
            self._nursery.start_soon(self.exchange, server_name, rooms)
            restoring = [r for r in rooms if r in self._restoring or self._restore_waits(r)]
            if restoring:
                self._nursery.start_soon(self._restore_on_connect, server_name, restoring)

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._announcer)
            nursery.start_soon(self._periodic)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _announcer(self) -> None:
        while True:
            await self._announce.wait()
            await trio.sleep(self.announce_delay)  # let pushes land first; batch bursts
            self._announce = trio.Event()
            rooms, self._dirty = self._dirty, set()
            connected = self.network.connected_peers()
            plan: dict[str, list[str]] = {}
            for room_id in rooms:
                heads = self._heads(room_id)
                candidates = [
                    s
                    for s in room_servers(self.store, room_id)
                    if s in connected
                    and s != self.server_name
                    and not self.knowledge.has_all(s, room_id, heads)
                ]
                candidates.sort(key=_ranker(room_id, heads[:1]))
                for server in candidates[: self.fanout]:
                    plan.setdefault(server, []).append(room_id)
            self._start_exchanges(plan)

    async def _periodic(self) -> None:
        # Each server keeps its own phase, fixed by its name: servers started
        # together (a simulation, a field unit powered on at once) would
        # otherwise all pull in the same instant, every interval.
        await trio.sleep(self.sync_interval * _fraction("sync", self.server_name))
        while True:
            await trio.sleep(self.sync_interval)
            self.sync_round()

    def sync_round(self) -> dict[str, list[str]]:
        """Start one periodic round of exchanges; return the plan (peer -> rooms)."""
        self._round += 1
        connected = self.network.connected_peers()
        avoid = set(self._backing_off()) if self._backing_off is not None else set()
        plan: dict[str, list[str]] = {}
        for room_id in self.store.room_ids():
            if not has_dag(self.store, room_id):
                continue
            others = [
                s
                for s in room_servers(self.store, room_id)
                if s != self.server_name and (s in connected or s not in avoid)
            ]
            rank = _ranker(self._round, room_id)
            others.sort(key=lambda s: (s not in connected, rank(s)))
            for server in others[: self.fanout]:
                plan.setdefault(server, []).append(room_id)
            if others:
                self.gaps_found(others[0], room_id)
            if self._nursery is not None and self._state_to_restore(room_id):
                self._nursery.start_soon(self.restore_stripped, room_id)
        self._start_exchanges(plan)
        return plan

    def _state_to_restore(self, room_id: str) -> bool:
        """Whether we hold stripped some of the room's current state that we may see whole.

        What starts a restore (a stripped arrival while joined, our join, a
        server connecting) should cover every case; this backstop covers
        what users would see most, the room's name or topic shown empty,
        should one be missed (one was: an arrival during a run's last round).
        """
        if room_id in self._restoring or self.server_name not in room_servers(self.store, room_id):
            return False
        for event_id in self.store.redacted_current_state(room_id):
            tries = self._restore_tries.get(event_id)
            if (tries is None or not tries.given_up) and self.engine.entitled_to_content(event_id):
                return True
        return False

    def _start_exchanges(self, plan: Mapping[str, list[str]]) -> None:
        if self._nursery is None:
            return
        for server, rooms in plan.items():
            self._nursery.start_soon(self.exchange, server, rooms)

    # -- the exchange ---------------------------------------------------------------------

    def _heads(self, room_id: str) -> list[str]:
        return self.store.forward_extremities(room_id)[: p.MAX_HEADS_PER_ROOM]

    async def exchange(self, peer: str, room_ids: Iterable[str]) -> int:
        """Send ``peer`` our heads for ``room_ids``; fetch theirs we lack. Returns events pulled."""
        rooms = {r: self._heads(r) for r in list(room_ids)[: p.MAX_HEADS_ROOMS]}
        rooms = {r: h for r, h in rooms.items() if h}
        if not rooms:
            return 0
        async with self._limiter:
            try:
                theirs = await self.client.room_heads(peer, rooms)
            except FederationError as exc:
                logger.debug("room_heads with %s failed: %s", peer[:8], exc)
                return 0
        self.exchanges += 1
        pulled = 0
        for room_id, heads in theirs.items():
            if room_id not in rooms:
                continue
            self.knowledge.record(peer, room_id, heads)
            pulled += await self.catch_up(peer, room_id, heads)
            await self.merger.reconcile(peer, room_id, heads)
        return pulled

    async def handle_room_heads(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The server side of ``room_heads``."""
        rooms = p.Params(body).mapping("rooms")
        if len(rooms) > p.MAX_HEADS_ROOMS:
            raise p.TooLarge(f"more than {p.MAX_HEADS_ROOMS} rooms")
        checked: dict[str, list[str]] = {}
        for room_id, heads in rooms.items():
            checked[room_id] = p.Params({"heads": heads}).event_ids(
                "heads", limit=p.MAX_HEADS_PER_ROOM
            )
        answer: dict[str, list[str]] = {}
        for room_id, heads in checked.items():
            if not has_dag(self.store, room_id):
                continue
            if not server_in_room(self.store, room_id, origin) and not joined_at_any(
                self.engine, room_id, origin, heads, before=False
            ):
                continue
            answer[room_id] = self._heads(room_id)
            self.knowledge.record(origin, room_id, heads)
            if self._nursery is not None and any(not held_in_dag(self.store, h) for h in heads):
                self._nursery.start_soon(self.catch_up, origin, room_id, heads)
        return {"rooms": answer}

    # -- catching up ----------------------------------------------------------------------

    async def catch_up(self, peer: str, room_id: str, heads: Iterable[str]) -> int:
        """Fetch the events before ``heads`` that we lack from ``peer``; return how many we accepted."""
        lock = self._room_locks.setdefault(room_id, trio.Lock())
        async with lock, self._limiter:
            wanted = [h for h in heads if not held_in_dag(self.store, h)]
            version = self.store.room_version(room_id)
            if not wanted or version is None:
                return 0
            collected = await self._collect(peer, room_id, wanted)
            accepted = 0
            for event in sorted(collected.values(), key=lambda e: (e.depth, e.event_id)):
                result = await self.engine.receive_pdu(peer, event.get_pdu_json())
                if result.accepted:
                    accepted += 1
            self.events_pulled += accepted
            self.knowledge.record(peer, room_id, wanted)
            if collected:
                logger.info(
                    "pulled %d events of %s from %s (%d accepted)",
                    len(collected),
                    room_id,
                    peer[:8],
                    accepted,
                )
        self.gaps_found(peer, room_id)  # beyond max_catchup_events
        return accepted

    def gaps_found(self, peer: str, room_id: str) -> None:
        """If the room has gaps, fill them from ``peer`` in the background."""
        if self._nursery is not None and room_id not in self._filling and self.engine.gaps(room_id):
            self._filling.add(room_id)
            self._nursery.start_soon(self.fill_gaps, peer, room_id)

    async def fill_gaps(self, peer: str, room_id: str) -> int:
        """Fetch the events of the room's gaps from ``peer``; return how many we accepted.

        A gap is what an event accepted on the state at a gap lacked before
        it (:meth:`RoomEngine.receive_history`). Its events are collected
        as :meth:`catch_up` does, up to ``max_catchup_events``, and the
        engine takes those that are before the gap, oldest first.
        """
        self._filling.add(room_id)
        lock = self._room_locks.setdefault(room_id, trio.Lock())
        try:
            async with lock, self._limiter:
                gaps = self.engine.gaps(room_id)
                if not gaps:
                    return 0
                collected = await self._collect(peer, room_id, gaps)
                results = await self.engine.receive_history(
                    peer, room_id, [e.get_pdu_json() for e in collected.values()]
                )
        finally:
            self._filling.discard(room_id)
        accepted = sum(r.accepted for r in results)
        self.events_pulled += accepted
        logger.info(
            "filled %d of %d gaps of %s from %s: %d events accepted",
            len(gaps) - len(self.engine.gaps(room_id)),
            len(gaps),
            room_id,
            peer[:8],
            accepted,
        )
        return accepted

    async def backfill(self, room_id: str, limit: int) -> int:
        """Fetch up to ``limit`` events older than any we hold; return how many we accepted.

        Bounded by :data:`BACKFILL_PATIENCE` seconds in all (a client waits).
        """
        accepted = 0
        with trio.move_on_after(BACKFILL_PATIENCE):
            lock = self._room_locks.setdefault(room_id, trio.Lock())
            async with lock:
                # Read under the lock: a backfill that just ran moved them.
                extremities = self.engine.backward_extremities(room_id)[: p.MAX_EVENT_IDS]
                if extremities:
                    try:
                        accepted = await self._backfill_from_servers(room_id, extremities, limit)
                    finally:
                        with self.store.transaction():
                            self.store.history_tried(room_id, extremities)
        self.events_pulled += accepted
        return accepted

    async def _backfill_from_servers(self, room_id: str, extremities: list[str], limit: int) -> int:
        connected = self.network.connected_peers()
        servers = sorted(
            (s for s in room_servers(self.store, room_id) if s != self.server_name),
            key=lambda s: (s not in connected, _rank(room_id, s)),
        )
        for server in servers[:BACKFILL_SERVERS]:
            pdus: list[Any] = []
            with trio.move_on_after(BACKFILL_TIMEOUT):
                try:
                    pdus = await self.client.backfill(server, room_id, extremities, limit)
                except FederationError as exc:
                    logger.info("backfill of %s from %s failed: %s", room_id, server[:8], exc)
            if not pdus:
                continue
            results = await self.engine.receive_history(server, room_id, pdus, historic=True)
            accepted = sum(r.accepted for r in results)
            logger.info(
                "backfilled %d of %d events of %s from %s", accepted, len(pdus), room_id, server[:8]
            )
            if accepted:
                return accepted
        return 0

    async def restore_stripped(self, room_id: str, *, afresh: bool = False) -> int:
        """Fetch whole copies of the room's events we hold stripped; return how many we got.

        Servers strip the history they serve a server whose users are only
        invited, and serve it whole once one of them has joined (see
        :mod:`p2pserver.engine.visibility`); the engine replaces a stripped
        copy by a full one whose content hash verifies. So while a user of
        ours is joined, the servers of the room are asked (connected ones
        first, at most :data:`RESTORE_SERVERS` a round) for the events our
        own view of the room lets us see
        (:meth:`~p2pserver.engine.engine.RoomEngine.entitled_to_content`):
        the rest stays stripped, e.g. what was sent while we were away from
        a room whose history is for joined members only. The rules:

        - Filter, then limit: the stripped events are read deepest first a
          page at a time, at most :data:`RESTORE_SCAN_PAGES` pages a round
          (the next round goes on from there, then from the top again), and
          up to :data:`MAX_RESTORED` that qualify are asked for. However
          many we may not see, they cannot hide one we may.
        - A server that strips the first :data:`RESTORE_PROBES` it is asked
          for and serves none whole does not serve us yet (our join may not
          have reached it): the next one is asked. Its answers say nothing
          about the events. Once a server serves one event whole it knows
          our membership, so what it strips it holds only stripped (or
          judges otherwise than we do): such answers are definitive, the
          events it stripped before are asked again, and the others go on to
          the next server.
        - Some events no one holds whole: their content hash did not match
          at the origin, so everyone stores them redacted. Every event is
          given up once :data:`RESTORE_PROBES` servers (or every server we
          ask, if fewer) answered it definitively, or no server may be
          asked any more.
        - The schedule is per server: one that answered an event stripped
          is asked for it again after :data:`RESTORE_WAITS` (30 s, then
          300 s: time to learn of our join, which after a heal usually
          takes seconds and after an outage may take minutes, or to be
          served it whole itself), at most :data:`RESTORE_ASKS` times in
          all. Others, and those we could not reach, are asked meanwhile,
          so one server's wait holds up no other (a partition heals: the
          servers beyond it are asked at once). Events asked least go first, so those behind
          cannot be crowded out.
        - A server that connects (say, as a partition heals) wakes a run
          waiting out its backoff, or starts one if events wait
          (:meth:`_restore_on_connect`).
        - What was asked is remembered (in memory, for the last
          :data:`RESTORE_MEMORY` events) across runs, which each stripped
          arrival may start: however often runs start, a server is asked
          for an event in at most :data:`RESTORE_ASKS` rounds (twice in one
          if it stripped the event before serving another whole), and not
          after a definitive answer. A join of ours (``afresh``) forgets the
          room's events: servers judge us anew.

        A run repeats rounds with backoff for up to :data:`RESTORE_PATIENCE`
        seconds, until nothing is left to ask; one runs per room at a time.
        A call while it runs (a stripped arrival) makes it go again at
        once, past its deadline if need be, so that no arrival is missed.
        """
        if afresh:
            for event_id, tries in self._restore_tries.items():
                if tries.room_id == room_id:
                    self._restore_tries.pop(event_id)
        if room_id in self._restoring:
            # A run is on: it goes again now (it may be past its last round).
            self._restoring[room_id].set()
            return 0
        kick = self._restoring[room_id] = trio.Event()
        restored = 0
        try:
            delay = 1.0
            deadline = trio.current_time() + RESTORE_PATIENCE
            cursor: str | None = None
            while self.server_name in room_servers(self.store, room_id):
                ready, later, cursor = await self._restore_candidates(room_id, cursor)
                if ready:
                    restored += await self._restore_round(room_id, ready)
                elif later is None and cursor is None and not kick.is_set():
                    break  # nothing left to ask, now or later
                wake = trio.current_time() + delay
                if later is not None:
                    wake = min(wake, later)
                if wake > deadline and not kick.is_set():
                    break
                with trio.move_on_at(wake):
                    await kick.wait()
                if kick.is_set():  # news: a stripped arrival, a server of the room connected
                    kick = self._restoring[room_id] = trio.Event()
                    delay = 1.0
                else:
                    delay = min(delay * 2, 60.0)
        finally:
            del self._restoring[room_id]
        if restored:
            logger.info("restored %d stripped events of %s", restored, room_id)
        return restored

    def _restore_servers(self, room_id: str) -> list[str]:
        """The servers a round asks, connected ones first."""
        connected = self.network.connected_peers()
        return sorted(
            (s for s in room_servers(self.store, room_id) if s != self.server_name),
            key=lambda s: (s not in connected, _rank(room_id, s)),
        )[:RESTORE_SERVERS]

    async def _restore_candidates(
        self, room_id: str, cursor: str | None
    ) -> tuple[list[str], float | None, str | None]:
        """Events to ask for now, least asked first; when the next deferred
        one is due; where the next round goes on reading (None: the top)."""
        now = trio.current_time()
        servers = self._restore_servers(room_id)
        ready: list[str] = []
        later: float | None = None
        for _ in range(RESTORE_SCAN_PAGES):
            page = self.store.stripped_event_ids(room_id, limit=MAX_RESTORED, after=cursor)
            for event_id in page:
                tries = self._restore_tries.get(event_id)
                if tries is not None and tries.given_up:
                    continue
                if not self.engine.entitled_to_content(event_id):
                    continue
                if tries is None:
                    ready.append(event_id)
                    continue
                when = tries.next_ask(servers)
                if when is None:
                    tries.given_up = True  # every server we would ask has answered enough
                elif when > now:
                    later = when if later is None else min(later, when)
                else:
                    ready.append(event_id)
            cursor = page[-1] if len(page) == MAX_RESTORED else None
            if cursor is None or len(ready) >= MAX_RESTORED:
                break
            await trio.lowlevel.checkpoint()  # judging a page takes a while in a large room
        asked = {
            e: sum(t.answers.values())
            for e in ready
            if (t := self._restore_tries.get(e)) is not None
        }
        ready.sort(key=lambda e: asked.get(e, 0))  # stable: deepest first otherwise
        return ready[:MAX_RESTORED], later, cursor

    async def _restore_round(self, room_id: str, event_ids: list[str]) -> int:
        """Ask the servers of the room for ``event_ids`` once; return how many came whole."""
        servers = self._restore_servers(room_id)
        needed = min(RESTORE_PROBES, len(servers))
        restored: set[str] = set()
        pending = list(event_ids)
        for server in servers:
            now = trio.current_time()
            asking = [e for e in pending if self._may_ask_now(e, server, now)]
            if not asking:
                continue
            whole, stripped, serves = await self._restore_from(server, room_id, asking)
            restored.update(whole)
            for event_id in whole:
                self._restore_tries.pop(event_id)
            answered_at = trio.current_time()
            for event_id in stripped:
                tries = self._restore_tries.pop(event_id) or _RestoreTries(room_id)
                count = tries.answers[server] = tries.answers.get(server, 0) + 1
                if count <= len(RESTORE_WAITS):
                    tries.not_before[server] = answered_at + RESTORE_WAITS[count - 1]
                if serves:
                    tries.stripped_by.add(server)
                tries.given_up = len(tries.stripped_by) >= needed
                self._restore_tries.set(event_id, tries)
            pending = [e for e in pending if e not in restored and not self._given_up(e)]
            if not pending:
                break
        return len(restored)

    def _may_ask_now(self, event_id: str, server: str, now: float) -> bool:
        tries = self._restore_tries.get(event_id)
        if tries is None:
            return True
        return (
            not tries.given_up
            and tries.may_ask(server)
            and tries.not_before.get(server, 0.0) <= now
        )

    def _given_up(self, event_id: str) -> bool:
        tries = self._restore_tries.get(event_id)
        return tries is not None and tries.given_up

    def _restore_waits(self, room_id: str) -> bool:
        """Whether some stripped event of the room waits to be asked for again."""
        return any(
            tries.room_id == room_id and not tries.given_up
            for _, tries in self._restore_tries.items()
        )

    async def _restore_on_connect(self, server: str, room_ids: list[str]) -> None:
        """A server of rooms we restore connected: it may serve what we hold stripped.

        A partition healing is the typical case. A run waiting out its
        backoff goes again at once; if none runs but events wait, one
        starts. Either way only once the server has had time to take our
        heads (our join among them) from the exchange its connection starts.
        """
        await trio.sleep(RESTORE_AFTER_CONNECT)
        for room_id in room_ids:
            kick = self._restoring.get(room_id)
            if kick is not None:
                kick.set()
            elif self._nursery is not None and self._restore_waits(room_id):
                self._nursery.start_soon(self.restore_stripped, room_id)

    async def _restore_from(
        self, server: str, room_id: str, event_ids: list[str]
    ) -> tuple[list[str], list[str], bool]:
        """Ask ``server`` for ``event_ids``: those that came whole, those it
        stripped, and whether it serves us whole (which makes its stripped
        answers definitive)."""
        whole: list[str] = []
        stripped: list[str] = []
        # Stripped before the first whole one: our join may have reached the
        # server meanwhile, so they are asked for once more.
        early: list[str] = []
        for event_id in event_ids:
            if not whole and len(early) == RESTORE_PROBES:
                break  # it strips them all: it does not know our join yet
            got = await self._fetch_whole(server, room_id, event_id)
            if got is None:
                break  # unreachable
            if got:
                whole.append(event_id)
            elif whole:
                stripped.append(event_id)
            else:
                early.append(event_id)
        if not whole:
            return [], early, False
        for event_id in early:
            got = await self._fetch_whole(server, room_id, event_id)
            if got:
                whole.append(event_id)
            elif got is not None:
                stripped.append(event_id)
        return whole, stripped, True

    async def _fetch_whole(self, server: str, room_id: str, event_id: str) -> bool | None:
        """Fetch one event for the engine; whether we now hold it whole (None: unreachable)."""
        try:
            async with self._limiter:
                pdu = await self.client.get_event(server, event_id)
        except FederationError as exc:
            logger.debug("cannot fetch %s from %s: %s", event_id, server[:8], exc)
            return None if exc.unreachable else False
        if isinstance(pdu, Mapping) and pdu.get("room_id", room_id) == room_id:
            await self.engine.receive_pdu(server, pdu)
        meta = self.store.event_meta(event_id)
        return meta is not None and not meta.redacted

    async def _collect(self, peer: str, room_id: str, wanted: list[str]) -> dict[str, Event]:
        """The missing heads and the events before them that we lack, from ``peer``."""
        collected: dict[str, Event] = {}

        def take(pdu: object, expected_id: str | None = None) -> str | None:
            version = self.store.room_version(room_id)
            if version is None:
                return None
            try:
                event = parse_pdu(pdu, version)
            except MatrixError:
                return None
            if event.room_id != room_id or (expected_id and event.event_id != expected_id):
                return None
            if event.event_id in collected or held_in_dag(self.store, event.event_id):
                return None
            collected[event.event_id] = event
            return event.event_id

        for head in wanted:
            try:
                take(await self.client.get_event(peer, head), head)
            except FederationError as exc:
                logger.debug("cannot fetch %s from %s: %s", head, peer[:8], exc)
        frontier = list(collected)
        while frontier and len(collected) < self.max_catchup_events:
            gaps = [
                e
                for e in frontier
                if any(
                    prev not in collected and not held_in_dag(self.store, prev)
                    for prev in collected[e].prev_event_ids
                )
            ]
            if not gaps:
                break
            try:
                pdus = await self.client.get_missing_events(
                    peer,
                    room_id,
                    earliest_events=self.store.forward_extremities(room_id)[: p.MAX_EVENT_IDS],
                    latest_events=gaps[: p.MAX_EVENT_IDS],
                    limit=p.MAX_EVENTS_PER_ANSWER,
                    # No deeper into the past than our DAG goes: older events
                    # are history, which only gaps bring (fill_gaps).
                    min_depth=self.store.min_depth(room_id),
                )
            except FederationError as exc:
                logger.debug("get_missing_events from %s failed: %s", peer[:8], exc)
                break
            frontier = [i for i in (take(pdu) for pdu in pdus[: p.MAX_EVENTS_PER_ANSWER]) if i]
        return collected
