"""What we know other servers hold: enough to skip telling them again.

A node learns that a peer holds an event when the peer pushed it to us,
when our push of it succeeded, and when the peer listed it among its
forward extremities. :mod:`p2pserver.federation.sync` asks
:meth:`PeerKnowledge.has_all` before announcing new forward extremities to
a peer, so rooms where pushes reach everyone cost no extra requests.

It is a hint, never a promise: it lives in memory, is bounded per peer and
room (oldest forgotten first), and a wrong "no" costs only one small
request. A wrong "yes" cannot happen except for events the peer dropped
after holding them, which periodic pulls repair.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

# Event IDs remembered per (peer, room): more than a room's forward extremities.
PER_ROOM = 64
# (peer, room) pairs remembered at all; the least recently told are forgotten.
MAX_ENTRIES = 4096


class PeerKnowledge:
    def __init__(self, *, per_room: int = PER_ROOM, max_entries: int = MAX_ENTRIES) -> None:
        self.per_room = per_room
        self.max_entries = max_entries
        self._held: OrderedDict[tuple[str, str], OrderedDict[str, None]] = OrderedDict()

    def record(self, peer: str, room_id: str, event_ids: Iterable[str]) -> None:
        """``peer`` holds ``event_ids`` of ``room_id``."""
        key = (peer, room_id)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = OrderedDict()
        self._held.move_to_end(key)
        for event_id in event_ids:
            held[event_id] = None
            held.move_to_end(event_id)
        while len(held) > self.per_room:
            held.popitem(last=False)
        while len(self._held) > self.max_entries:
            self._held.popitem(last=False)

    def has_all(self, peer: str, room_id: str, event_ids: Iterable[str]) -> bool:
        held = self._held.get((peer, room_id))
        return held is not None and all(e in held for e in event_ids)
