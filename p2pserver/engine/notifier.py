"""Telling the rest of the node that a room changed.

Every event that enters a room's timeline (accepted, not soft-failed),
every change of a room's current state, every event we held stripped and
now hold whole (``restored``: clients were shown the stripped copy), and
every new event of another server that we soft failed (``soft_failed``:
the federation still passes it on, since no one can pull it) produces one
:class:`RoomUpdate`, after its transaction committed. /sync and the
federation sender build on this.

Two ways to listen, neither of which spawns tasks:
- :meth:`Notifier.add_listener`: a plain callback, called synchronously in
  commit order. It must be quick and must not call back into the engine's
  write methods; an exception in a listener is logged and does not undo
  anything or stop other listeners.
- :meth:`Notifier.wait_for_stream`: ``await`` until the stream has moved
  past a position (long-polling /sync). Positions are the events' stream
  orderings, so a caller that remembers the last one it saw never misses
  an update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from p2pserver.rooms.events import Event, StateKey

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoomUpdate:
    room_id: str
    # The event that entered the timeline, or None for a state-only change
    # (e.g. state resolution after a soft-failed event became an ancestor).
    event: Event | None
    # The event's stream ordering (the stream position after this update).
    stream_ordering: int
    # How the room's current state changed: key -> new event ID, or None if removed.
    state_delta: Mapping[StateKey, str | None] = field(default_factory=dict)
    # True for events created by this server's users.
    local: bool = False
    # An event held stripped that is now held whole (the same event ID).
    restored: str | None = None
    # A new event of another server that we soft failed: in the DAG, not the timeline.
    soft_failed: Event | None = None


Listener = Callable[[RoomUpdate], None]


class Notifier:
    def __init__(self, position: int = 0) -> None:
        self._listeners: list[Listener] = []
        self.position = position
        self._moved = trio.Event()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, update: RoomUpdate) -> None:
        self.position = max(self.position, update.stream_ordering)
        for listener in list(self._listeners):
            try:
                listener(update)
            except Exception:
                logger.exception("room update listener %r failed", listener)
        moved, self._moved = self._moved, trio.Event()
        moved.set()

    async def wait_for_stream(self, after: int) -> int:
        """Wait until the stream position is past ``after``; return the position."""
        while self.position <= after:
            await self._moved.wait()
        return self.position
