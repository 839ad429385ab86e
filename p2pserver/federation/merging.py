"""Reconciling servers that hold the same events yet resolve different states.

Each server resolves the room's state over its own forward extremities, and
a soft-failed event is never one (the spec: it is not referenced by new
events). So two servers can hold every event the other holds, no pull
changes anything, and their states differ until someone sends an event
that references both sides. In a quiet room that may never happen. Both
cases below were found by the converge fuzzer. When a ``room_heads``
exchange (:mod:`.sync`) shows us a peer's heads, :meth:`ExtremityMerger.reconcile`
handles both.

1. The peer holds as a head an event we soft failed (seed 17: we had
   seen its sender kicked, but the peer holds a branch that, resolved with
   ours, undoes the kick). We judge it again as one more forward extremity
   (:meth:`~p2pserver.engine.engine.RoomEngine.reconsider_soft_failed`):
   if it passes, we accept it and both sides have the same heads.
2. We accepted an event the peer soft failed, and it still fails there
   (seed 15: its sender is kicked however the branches resolve; seed 13:
   the same, on a branch forked from further back). It is our extremity
   and not the peer's, and only we can reference it, so we send an
   ``org.matrix.dummy_event`` (Synapse's type for merging extremities;
   never shown to clients) whose prev_events are our extremities. The peer
   computes the state before it from those prev events, as we did, and
   accepts it (our user is joined). Then both have that one event as head.

When to merge (2): in two exchanges with the same peer at least
:data:`MERGE_DELAY` apart, the peer reported the same heads and
:func:`unreconciled` held: we have two or more extremities, hold every head
it reported, and one of our extremities is neither among its heads nor a
prev event of one of them. (The peer either soft-failed or rejected that
extremity, or still lacks it; the delay and the second look rule out the
latter, since the first exchange made it pull.) The peer does not merge on
its side of the same situation: what it has and we lack as an extremity is
the soft-failed event's parent, a prev event of our head. (Should both
sides soft-fail a head of the other, both merge, and the two merge events
end as the common heads.)

Bounds. A ``room_heads`` list is cut at :data:`MAX_HEADS_PER_ROOM`, and every
server orders extremities alike (deepest first, then by event ID), so when
the peer's list is full only our extremities up to its last one are
judged. We merge at most once for the same heads of the same peer: a peer
that keeps reporting stale heads (dishonest, or broken) costs one merge
event, not one per exchange. The merge is sent by the first of our joined
users whose power allows it.

Too many extremities (3). A room can also hold more forward extremities
than fit one ``room_heads`` list or one event's prev events: a burst of
joins through one resident server (each references only the state before
it) left 49 extremities at the resident in the outage scenario, and the
others, seeing only its first 20 heads, disagreed on the membership for
minutes until someone spoke. So, as Synapse does, a server with more than
:data:`MAX_EXTREMITIES` sends merge events (each references
:data:`~p2pserver.engine.engine.MAX_PREV_EVENTS`) until it has no more. It
waits before each, a delay that differs per server and room
(:meth:`RoomSync.on_room_update <p2pserver.federation.sync.RoomSync.on_room_update>`),
and sends only if the count is still too high: servers rarely all merge
at once, and what one merges the others pull.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from p2pserver.engine.engine import MAX_PREV_EVENTS, RoomEngine
from p2pserver.federation.protocol import MAX_HEADS_PER_ROOM
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import DUMMY_EVENT_TYPE, sender_server
from p2pserver.storage.cache import LruCache
from p2pserver.storage.store import IN_DAG, EventStatus, Store

logger = logging.getLogger(__name__)

MERGE_DELAY = 10.0
# Soft-failed heads of one peer judged again per exchange and room.
MAX_REJUDGED_HEADS = 4
# (peer, room) pairs remembered, least recently seen forgotten first.
MAX_REMEMBERED = 4096
# More forward extremities than one event references (the engine's
# MAX_PREV_EVENTS; Synapse's threshold for dummy events is the same 10).
MAX_EXTREMITIES = MAX_PREV_EVENTS


def unreconciled(store: Store, room_id: str, their_heads: Sequence[str]) -> bool:
    """Whether a peer's heads differ from ours in a way only a merge event resolves."""
    ours = set(store.forward_extremities(room_id))
    if len(ours) < 2 or not their_heads:
        return False
    metas = store.event_metas(their_heads)
    if len(metas) < len(set(their_heads)):
        return False  # it holds events we lack: pulling comes first
    if any(m.room_id != room_id or m.status not in IN_DAG for m in metas.values()):
        return False
    theirs = store.load_events(metas)
    covered = set(theirs)
    for event in theirs.values():
        covered.update(event.prev_event_ids)
    if len(their_heads) >= MAX_HEADS_PER_ROOM:
        # Cut short: it may hold, past the cut, ours that sort after its last.
        ours_metas = store.event_metas(ours)
        last = max((-m.depth, m.event_id) for m in metas.values())
        ours = {e for e, m in ours_metas.items() if (-m.depth, e) <= last}
    return not ours <= covered


class ExtremityMerger:
    def __init__(
        self,
        engine: RoomEngine,
        *,
        delay: float = MERGE_DELAY,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.delay = delay
        self.clock = clock
        # (peer, room) -> (the heads it reported, when we first saw them unreconciled)
        self._seen: LruCache[tuple[str, str], tuple[frozenset[str], float]] = LruCache(
            MAX_REMEMBERED
        )
        # (peer, room) -> the heads we last merged for: once is enough (a peer
        # that keeps reporting stale heads must not make us merge forever).
        self._merged_for: LruCache[tuple[str, str], frozenset[str]] = LruCache(MAX_REMEMBERED)
        self._reducing: set[str] = set()
        # For tests and metrics: merges for a peer's heads, and for too many extremities.
        self.merges = 0
        self.reductions = 0

    async def reconcile(self, peer: str, room_id: str, their_heads: Sequence[str]) -> None:
        """After catching up with ``peer``: judge its heads we soft failed again, then merge
        our extremities if that is what it takes (see the module docstring)."""
        metas = self.store.event_metas(their_heads)
        soft_failed = [
            m.event_id
            for m in metas.values()
            if m.room_id == room_id and m.status == EventStatus.SOFT_FAILED
        ]
        for event_id in soft_failed[:MAX_REJUDGED_HEADS]:  # each costs a state resolution
            await self.engine.reconsider_soft_failed(room_id, event_id)
        if self.observe(peer, room_id, their_heads):
            await self.merge(room_id)

    def observe(self, peer: str, room_id: str, their_heads: Sequence[str]) -> bool:
        """Record a peer's heads; whether we should merge our extremities now."""
        key = (peer, room_id)
        heads = frozenset(their_heads)
        if self._merged_for.get(key) == heads:
            return False
        self._merged_for.pop(key)
        if not unreconciled(self.store, room_id, their_heads):
            self._seen.pop(key)
            return False
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != heads:
            self._seen.set(key, (heads, now))
            return False
        if now - seen[1] < self.delay:
            return False
        self._seen.pop(key)
        self._merged_for.set(key, heads)
        return True

    def too_many_extremities(self, room_id: str) -> bool:
        return len(self.store.forward_extremities(room_id)) > MAX_EXTREMITIES

    async def reduce(self, room_id: str, delay: float) -> None:
        """While the room has more than :data:`MAX_EXTREMITIES` forward
        extremities, wait ``delay`` and, if it still has, send a merge event
        (see "Too many extremities" in the module docstring)."""
        if room_id in self._reducing:
            return
        self._reducing.add(room_id)
        try:
            while self.too_many_extremities(room_id):
                await trio.sleep(delay)
                if self.too_many_extremities(room_id):
                    if await self._send_merge_event(room_id) is None:
                        return
                    self.reductions += 1
        finally:
            self._reducing.discard(room_id)

    async def merge(self, room_id: str) -> str | None:
        """Send a merge event from one of our joined users; its ID, or None if we cannot."""
        event_id = await self._send_merge_event(room_id)
        if event_id is not None:
            self.merges += 1
        return event_id

    async def _send_merge_event(self, room_id: str) -> str | None:
        local = sorted(
            u
            for u in self.store.joined_members(room_id)
            if sender_server(u) == self.engine.server_name
        )
        for user_id in local:  # the first who may send it (as Synapse does)
            try:
                event_id = await self.engine.send_event(room_id, user_id, DUMMY_EVENT_TYPE, {})
            except MatrixError as exc:  # e.g. too little power in an announcement room
                logger.debug("%s cannot merge the extremities of %s: %s", user_id, room_id, exc)
                continue
            logger.info("merged the forward extremities of %s with %s", room_id, event_id)
            return event_id
        logger.info("no user of ours may merge the extremities of %s", room_id)
        return None
