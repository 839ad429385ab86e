"""Pushing PDUs and EDUs to other servers from the persistent outbound queue.

Rules:

- What we owe each destination lives in the store's outbound queue
  (:mod:`p2pserver.storage.outbound`), so it survives restarts and crashes:
  the engine queues each local event in the transaction that stores it,
  :meth:`FederationSender.relay` queues events we pass on, and the client
  API its EDUs. An item leaves the queue only once the destination
  answered the transaction (at-least-once delivery; receivers drop
  duplicates by event ID).
- The queue wakes the sender after every commit that queued something,
  whoever queued it (:meth:`OutboundQueue.add_listener`); a rescan every
  :data:`RESCAN_INTERVAL` seconds is only a backstop.
- One worker task per destination with something queued sends its items
  in queue order, at most 50 PDUs and 100 EDUs per transaction, one
  transaction at a time, each with a fresh transaction ID.
- Bounded fan-out (:mod:`p2pserver.federation.fanout`): the engine queues
  our events only for those joined servers that are our push targets for
  them (:meth:`FederationSender.own_targets`, installed as the engine's
  ``push_filter``; the others get them by relay or pull). The worker
  checks again before sending one of our events, and drops an item whose
  destination is not a push target (one queued by an engine without the
  filter). Relayed items were chosen when queued and are always sent. Targets come
  from the servers joined in the state before the event (a membership
  event adds its target's), never the current ones: every server joined
  when an event was sent is owed it, even if it has left or been kicked
  since. A server that has left cannot pull (``room_heads`` answers only
  members), so an event that reached us by a pull is still passed on to
  our children in its tree that have left since
  (:meth:`FederationSender.relay_to_departed`); members among them pull it.
  Nobody can pull an event that we (and perhaps others) soft failed: it is
  never a forward extremity. So one is passed on to all our children in its
  tree, however it reached us; they may accept it. (Not one whose sender
  is banned in our current state: see ``Federation._on_room_update``.)
- Failures: an unreachable or silent destination, or a transient refusal
  (``M_UNKNOWN``, ``M_LIMIT_EXCEEDED``), keeps its items and backs off:
  ``backoff_initial`` seconds doubling up to ``backoff_max`` (after a
  ``retry_after_ms`` if given). A destination that reconnects
  (:meth:`peer_connected`, fed from the Network's peer events) is retried
  at once with its backoff reset. A permanent refusal of a whole
  transaction (any other errcode) drops that batch, logged, rather than
  blocking the queue forever; the destination can still pull the events.
  A transaction too large for a frame (``M_TOO_LARGE``, ours or theirs) is
  retried at once as smaller ones, down to one item, which is dropped if
  it alone is too large.
- Every delivered event is recorded in :class:`PeerKnowledge`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own is hidden by these stubs

from p2pserver.engine.engine import RoomEngine
from p2pserver.federation.client import FederationClient, FederationError
from p2pserver.federation.fanout import DEFAULT_FANOUT, push_targets
from p2pserver.federation.knowledge import PeerKnowledge
from p2pserver.federation.view import pdu_room_version, room_servers
from p2pserver.rooms.events import Event

logger = logging.getLogger(__name__)

# Wake every destination this often even without news (belt and braces).
RESCAN_INTERVAL = 60.0


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    reset: trio.Event = field(default_factory=trio.Event)


def _now_ms() -> int:
    return int(time.time() * 1000)


class FederationSender:
    def __init__(
        self,
        engine: RoomEngine,
        client: FederationClient,
        *,
        fanout: int = DEFAULT_FANOUT,
        knowledge: PeerKnowledge | None = None,
        backoff_initial: float = 2.0,
        backoff_max: float = 600.0,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        self.engine = engine
        self.store = engine.store
        self.client = client
        self.fanout = fanout
        self.knowledge = knowledge or PeerKnowledge()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self.server_name = engine.server_name
        # Unique across restarts: the start time, then a counter.
        self._txn_ids = (f"{clock()}.{n}" for n in itertools.count(1))
        self._workers: set[str] = set()
        self._txn_of: dict[str, tuple[int, str]] = {}
        # Destinations whose transactions had to shrink to fit a frame.
        self._limit: dict[str, int] = {}  # destination -> (batch position, txn ID)
        self._backoff: dict[str, _Backoff] = {}
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Counters for tests and benchmarks.
        self.transactions_sent = 0
        self.pdus_sent = 0
        self.pdus_skipped = 0

    # -- what others call --------------------------------------------------------------

    def wake(self) -> None:
        """There may be new items in the queue."""
        self._wakeup.set()

    def relay(
        self, event: Event, *, received_from: str | None, for_origin: bool = False
    ) -> list[str]:
        """Queue a stored event for our push targets; return them.

        For our own events not queued by the engine (a join made through
        send_join) pass ``received_from=None``.
        """
        targets = push_targets(
            event,
            self.server_name,
            self._servers_at(event),
            self.fanout,
            received_from=received_from,
            for_origin=for_origin,
        )
        return self._queue(event, targets)

    def relay_to_departed(self, event: Event) -> list[str]:
        """Queue an event that entered our timeline for our children in its tree
        that are no longer in the room (see the module docstring); return them.

        Called for every event of another server that enters our timeline:
        one that came by push was queued for them by :meth:`relay` already,
        and is then queued twice (receivers drop duplicates; such children
        are rare).
        """
        targets = push_targets(event, self.server_name, self._servers_at(event), self.fanout)
        return self._queue(
            event, [t for t in targets if not self.store.server_joined(event.room_id, t)]
        )

    def _queue(self, event: Event, targets: Iterable[str]) -> list[str]:
        """Queue a stored event for those of ``targets`` not known to hold it; return them."""
        room_id = event.room_id
        wanted = [t for t in targets if not self.knowledge.has_all(t, room_id, [event.event_id])]
        meta = self.store.event_meta(event.event_id)
        if wanted and meta is not None:
            with self.store.transaction():
                self.store.outbound.enqueue_pdu(wanted, meta.nid)
        return wanted

    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> None:
        """Queue an EDU (they go to the one destination; they are never relayed)."""
        self.store.outbound.enqueue_edu(
            destination, {"edu_type": edu_type, "content": dict(content)}
        )

    def peer_connected(self, server_name: str) -> None:
        """The peer is back: retry it now, with its backoff reset."""
        backoff = self._backoff.pop(server_name, None)
        if backoff is not None:
            backoff.reset.set()
        self.wake()

    def backing_off(self) -> dict[str, float]:
        """Destinations in backoff, and until when (trio time)."""
        return {d: b.until for d, b in self._backoff.items() if b.failures}

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            stop_listening = self.store.outbound.add_listener(self.wake)
            task_status.started()
            try:
                while True:
                    self._wakeup = trio.Event()
                    for destination in self.store.outbound.destinations():
                        if destination not in self._workers:
                            self._workers.add(destination)
                            nursery.start_soon(self._worker, destination)
                    with trio.move_on_after(RESCAN_INTERVAL):
                        await self._wakeup.wait()
            finally:
                stop_listening()
                self._nursery = None

    async def _worker(self, destination: str) -> None:
        try:
            while True:
                await self._wait_out_backoff(destination)
                limit = self._limit.get(destination)
                batch = (
                    self.store.outbound.peek(destination)
                    if limit is None
                    else self.store.outbound.peek(destination, max_pdus=limit, max_edus=limit)
                )
                if batch is None:
                    return  # no await since peek: a later enqueue wakes a new worker
                wanted = self._wanted(destination, batch.pdus, batch.event_ids)
                self.pdus_skipped += len(batch.pdus) - len(wanted)
                if (wanted or batch.edus) and not await self._send(
                    destination, batch.last_position, wanted, batch.edus
                ):
                    continue  # backing off; the batch stays queued
                self.store.outbound.ack(destination, batch.last_position)
        finally:
            self._workers.discard(destination)

    async def _wait_out_backoff(self, destination: str) -> None:
        backoff = self._backoff.get(destination)
        if backoff is not None and backoff.until > trio.current_time():
            with trio.move_on_at(backoff.until):
                await backoff.reset.wait()

    async def _send(
        self,
        destination: str,
        position: int,
        wanted: list[tuple[dict[str, Any], Event]],
        edus: list[dict[str, Any]],
    ) -> bool:
        """One transaction; True when the batch is done with (delivered or dropped)."""
        pdus = [pdu for pdu, _ in wanted]
        # A retry of the same batch keeps its transaction ID (the spec's
        # idempotency); a changed batch gets a new one.
        pending = self._txn_of.get(destination)
        if pending is None or pending[0] != position:
            pending = self._txn_of[destination] = (position, next(self._txn_ids))
        try:
            await self.client.send_transaction(
                destination,
                pending[1],
                origin=self.server_name,
                origin_server_ts=self.clock(),
                pdus=pdus,
                edus=edus,
            )
        except FederationError as exc:
            if exc.errcode == "M_TOO_LARGE" and len(pdus) + len(edus) > 1:
                # Too big for one frame: the same items in smaller transactions.
                self._limit[destination] = max(1, max(len(pdus), len(edus)) // 2)
                self._txn_of.pop(destination, None)
                await trio.lowlevel.checkpoint()
                return False
            if not exc.transient:
                logger.warning(
                    "%s refused a transaction of %d PDUs, %d EDUs for good; dropping it: %s",
                    destination[:8],
                    len(pdus),
                    len(edus),
                    exc,
                )
                return True
            self._failed(destination, exc)
            return False
        self._txn_of.pop(destination, None)
        self._limit.pop(destination, None)
        self._succeeded(destination)
        self.transactions_sent += 1
        self.pdus_sent += len(pdus)
        by_room: dict[str, list[str]] = {}
        for _, event in wanted:
            by_room.setdefault(event.room_id, []).append(event.event_id)
        for room_id, event_ids in by_room.items():
            self.knowledge.record(destination, room_id, event_ids)
        logger.debug("sent %d PDUs, %d EDUs to %s", len(pdus), len(edus), destination[:8])
        return True

    def _failed(self, destination: str, exc: FederationError) -> None:
        backoff = self._backoff.setdefault(destination, _Backoff())
        if exc.retry_after_ms is not None:
            delay = exc.retry_after_ms / 1000
        else:
            backoff.failures += 1
            delay = min(self.backoff_initial * 2 ** (backoff.failures - 1), self.backoff_max)
        backoff.until = trio.current_time() + delay
        level = logging.INFO if backoff.failures <= 1 else logging.DEBUG
        logger.log(
            level, "cannot deliver to %s (%s); retrying in %.0fs", destination[:8], exc, delay
        )

    def _succeeded(self, destination: str) -> None:
        backoff = self._backoff.pop(destination, None)
        if backoff is not None and backoff.failures:
            logger.info("delivering to %s again", destination[:8])

    # -- choosing what to send ------------------------------------------------------------

    def _event(self, pdu: Mapping[str, Any], event_id: str) -> Event | None:
        # Our own store's PDUs, with the IDs it stores them by: the format
        # and the ID were checked when they were stored.
        version = pdu_room_version(self.store, pdu)
        return Event(pdu, version, event_id=event_id) if version is not None else None

    def _servers_at(self, event: Event) -> Collection[str]:
        """The servers joined when the event was sent (its tree's members).

        Not the current ones: a server joined at the event is owed it even if
        it left or was kicked before the event reached it. Our current view
        only for events whose state we do not know (outliers).
        """
        servers = self.engine.joined_servers_at(event.event_id)
        return servers if servers is not None else room_servers(self.store, event.room_id)

    def _wanted(
        self, destination: str, pdus: Iterable[dict[str, Any]], event_ids: Iterable[str]
    ) -> list[tuple[dict[str, Any], Event]]:
        """The PDUs of a batch (and their events) that ``destination`` should get from us."""
        wanted = []
        for pdu, event_id in zip(pdus, event_ids, strict=True):
            event = self._event(pdu, event_id)
            if event is None:
                continue
            if event.origin != self.server_name:
                wanted.append((pdu, event))  # a relay: its targets were chosen when queued
                continue
            if destination in self.own_targets(event):
                wanted.append((pdu, event))
        return wanted

    def own_targets(self, event: Event) -> list[str]:
        """The servers we push one of our own stored events to (its tree's children of ours).

        The engine queues our events only for these (see :attr:`RoomEngine.push_filter`),
        so an event costs its origin O(fanout) queue items, not one per joined server.
        """
        return push_targets(event, self.server_name, self._servers_at(event), self.fanout)
