"""Stream positions, sync tokens, and what is kept in memory: typing and presence.

A /sync ``next_batch`` (and any pagination token) is a :class:`StreamToken`
of three positions, written ``s<events>_<account>_<ephemeral>``:

- ``events``: the room event stream (the engine's stream orderings; history
  fetched when a client paged back has negative ones, below
  :data:`HISTORY_START` < them < 0, see :mod:`p2pserver.storage.store`);
- ``account``: account data and receipts
  (:meth:`p2pserver.storage.accounts.AccountStore.stream_position`), and
  the to-device messages and device-list changes that take positions on
  the same counter (:mod:`p2pserver.storage.e2ee`);
- ``ephemeral``: typing and presence, which live in memory only. Their
  counter starts at the wall clock in milliseconds, so it never goes back
  across a restart and an old token never hides a change.

A pagination token names the point *after* the event at its ``events``
position: paginating backwards from it returns that event first.

:class:`Wakeup` is how a long-polling /sync learns that anything it might
deliver changed: every writer pokes it, and a waiter re-computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.routing import parse_decimal

__all__ = [
    "HISTORY_START",
    "PRESENCE_STATES",
    "STREAM_END",
    "EphemeralCounter",
    "Presence",
    "PresenceRecord",
    "StreamToken",
    "Typing",
    "Wakeup",
]


# Bounds of the room event stream: below the oldest history, above anything new.
HISTORY_START = -(2**62)
STREAM_END = 2**62


@dataclass(frozen=True, slots=True)
class StreamToken:
    events: int
    account: int = 0
    ephemeral: int = 0

    def __str__(self) -> str:
        return f"s{self.events}_{self.account}_{self.ephemeral}"

    @classmethod
    def parse(cls, text: str, name: str = "token") -> StreamToken:
        """Parse a token we issued; anything else is 400 M_INVALID_PARAM."""
        parts = text[1:].split("_") if text.startswith("s") else []
        # Only the events position may be negative (history paged back to).
        digits = [p.removeprefix("-") if i == 0 else p for i, p in enumerate(parts)]
        if not 1 <= len(parts) <= 3 or any(parse_decimal(d) is None for d in digits):
            raise ApiError.of("M_INVALID_PARAM", f"invalid {name} {text!r}")
        numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
        return cls(numbers[0], numbers[1], numbers[2])


class Wakeup:
    """Wakes every waiting long-poll when something changes."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def poke(self) -> None:
        event, self._event = self._event, trio.Event()
        event.set()

    def current(self) -> trio.Event:
        """The event the next :meth:`poke` sets; take it *before* looking for data."""
        return self._event


class EphemeralCounter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.position = int(clock() * 1000)

    def next(self) -> int:
        self.position += 1
        return self.position


class Typing:
    """Who is typing in which room (spec: "Typing Notifications"), with expiry."""

    def __init__(self, counter: EphemeralCounter, clock: Callable[[], float] = time.monotonic):
        self.counter = counter
        self.clock = clock
        self._typers: dict[str, dict[str, float]] = {}  # room -> user -> expiry
        self._changed: dict[str, int] = {}  # room -> position of its last change

    def set(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> bool:
        """Start (for ``timeout_ms``) or stop typing; True if the room's typers changed."""
        self.expire()
        users = self._typers.setdefault(room_id, {})
        was = user_id in users
        if typing:
            users[user_id] = self.clock() + timeout_ms / 1000
        else:
            users.pop(user_id, None)
        if was != typing:
            self._changed[room_id] = self.counter.next()
            return True
        return False

    def expire(self) -> bool:
        """Drop typers whose timeout passed; True if any did."""
        now = self.clock()
        changed = False
        for room_id, users in self._typers.items():
            gone = [u for u, expiry in users.items() if expiry <= now]
            for user_id in gone:
                del users[user_id]
            if gone:
                self._changed[room_id] = self.counter.next()
                changed = True
        return changed

    def next_expiry(self) -> float | None:
        """The monotonic time of the next expiry, if anyone is typing."""
        times = [t for users in self._typers.values() for t in users.values()]
        return min(times) if times else None

    def typers(self, room_id: str) -> list[str]:
        return sorted(self._typers.get(room_id, {}))

    def changed_since(self, room_id: str, position: int) -> bool:
        return self._changed.get(room_id, 0) > position


PRESENCE_STATES = ("online", "offline", "unavailable")


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    presence: str
    status_msg: str | None
    last_active_ts: int
    position: int


class Presence:
    """Each local user's presence (spec: "Presence"); nobody is known: offline."""

    def __init__(self, counter: EphemeralCounter, clock: Callable[[], float] = time.time):
        self.counter = counter
        self.clock = clock
        self._users: dict[str, PresenceRecord] = {}

    def get(self, user_id: str) -> PresenceRecord | None:
        return self._users.get(user_id)

    def set(
        self, user_id: str, presence: str, status_msg: str | None = None, *, keep_msg: bool = False
    ) -> bool:
        """Record a presence; True if others should hear of it."""
        old = self._users.get(user_id)
        if keep_msg and old is not None:
            status_msg = old.status_msg
        now = int(self.clock() * 1000)
        if old is not None and old.presence == presence and old.status_msg == status_msg:
            # Only activity: refresh the time without waking anyone.
            self._users[user_id] = PresenceRecord(presence, status_msg, now, old.position)
            return False
        self._users[user_id] = PresenceRecord(presence, status_msg, now, self.counter.next())
        return True

    def changed_since(self, position: int) -> dict[str, PresenceRecord]:
        return {u: r for u, r in self._users.items() if r.position > position}
