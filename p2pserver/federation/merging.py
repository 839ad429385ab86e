"""Merging forward extremities that pulling cannot reconcile.

Two servers that hold the same events can still resolve different room
states, because each resolves over its own forward extremities and a
soft-failed event is never one (the spec: it is not referenced by new
events). Example, found by the converge fuzzer (seed 15): X accepted E, a
state event of a user whom Y had meanwhile seen kicked, so Y soft-failed it.
X's extremities hold E, whose state supersedes its parent P; Y's hold P. Both
hold everything, so no pull changes anything, and the states differ until a
server that accepted E sends an event that references it. In a quiet room
that may never happen.

So X sends one: an ``org.matrix.dummy_event`` (Synapse's type for the same
purpose; clients ignore it) whose prev_events are its extremities. Y
computes the state before it from those prev events, exactly as X did, and
accepts it (X's user is joined). Both now have that one event as extremity.

When. The ``room_heads`` exchange (:mod:`.sync`) shows X a peer's heads.
X merges when, in two exchanges with the same peer at least
:data:`MERGE_DELAY` apart, that peer reported the same heads and
:func:`unreconciled` held: X has two or more extremities, holds every head
the peer reported, and has accepted one of them yet has it only as an
ancestor of its own. (The peer either soft-failed or rejected what X built
on it, or still lacks it; the delay and the second look rule out the
latter, since the first exchange made it pull.) Y never merges on its side
of the same situation, because the head it lacks as an extremity is one it
soft-failed. After merging X has one extremity, so it does not merge again
until the room branches anew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from p2pserver.engine.engine import RoomEngine
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import sender_server
from p2pserver.storage.store import IN_DAG, EventStatus, Store

logger = logging.getLogger(__name__)

MERGE_EVENT_TYPE = "org.matrix.dummy_event"
MERGE_DELAY = 10.0


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
    return any(m.status == EventStatus.ACCEPTED and m.event_id not in ours for m in metas.values())


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
        self._seen: dict[tuple[str, str], tuple[frozenset[str], float]] = {}
        self.merges = 0  # for tests and metrics

    def observe(self, peer: str, room_id: str, their_heads: Sequence[str]) -> bool:
        """Record a peer's heads; whether we should merge our extremities now."""
        key = (peer, room_id)
        if not unreconciled(self.store, room_id, their_heads):
            self._seen.pop(key, None)
            return False
        heads = frozenset(their_heads)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != heads:
            self._seen[key] = (heads, now)
            return False
        if now - seen[1] < self.delay:
            return False
        del self._seen[key]
        return True

    async def merge(self, room_id: str) -> str | None:
        """Send a merge event from one of our joined users; its ID, or None if we cannot."""
        local = sorted(
            u
            for u in self.store.joined_members(room_id)
            if sender_server(u) == self.engine.server_name
        )
        if not local:
            return None
        try:
            event_id = await self.engine.send_event(room_id, local[0], MERGE_EVENT_TYPE, {})
        except MatrixError as exc:  # e.g. our users may not send events in this room
            logger.info("cannot merge the extremities of %s: %s", room_id, exc)
            return None
        self.merges += 1
        logger.info("merged the forward extremities of %s with %s", room_id, event_id)
        return event_id
