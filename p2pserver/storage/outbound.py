"""The per-destination outbound queue: what we still owe each peer.

Rules:
- A local event is queued for every destination in the same transaction
  that stores it, so a crash can neither lose a committed event's delivery
  nor send an event that was never committed.
- Each destination's queue is FIFO (``queue_nid`` is AUTOINCREMENT, so
  positions are never reused, even after deletes).
- :meth:`OutboundQueue.peek` returns the next transaction's worth, within
  the spec's limits (at most 50 PDUs and 100 EDUs), in queue order; the
  sender calls :meth:`OutboundQueue.ack` with the batch's last position once
  the destination accepted it, which deletes everything up to there.
  Delivery is therefore at-least-once; receivers drop duplicate PDUs by
  event ID.
- Whatever queues an item (a local event, a relayed PDU, any EDU: typing,
  receipts, presence, to-device, device lists), the queue tells its
  listeners once the item is committed (:meth:`OutboundQueue.add_listener`).
  That is the one way the federation sender learns there is work.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.storage.database import Database

MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100


@dataclass(frozen=True)
class OutboundBatch:
    destination: str
    pdus: list[dict[str, Any]] = field(default_factory=list)
    edus: list[dict[str, Any]] = field(default_factory=list)
    # The stored event ID of each of ``pdus`` (so the sender need not hash them).
    event_ids: list[str] = field(default_factory=list)
    # The queue position to pass to ack() once the destination took it.
    last_position: int = 0


class OutboundQueue:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each commit that queued anything; returns its remover.

        It runs synchronously after the commit and must be quick (set a
        flag, wake a task).
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _queued(self) -> None:
        self.db.call_after_commit(self._tell)

    def _tell(self) -> None:
        for listener in list(self._listeners):
            listener()

    def enqueue_pdu(self, destinations: Iterable[str], event_nid: int) -> None:
        """Queue a stored event for each destination (inside a transaction)."""
        self.db.executemany(
            "INSERT INTO outbound_queue (destination, event_nid) VALUES (?, ?)",
            [(d, event_nid) for d in sorted(set(destinations))],
        )
        self._queued()

    def enqueue_edu(self, destination: str, edu: Mapping[str, Any]) -> None:
        """Queue an EDU (its own transaction unless one is open)."""
        row = (destination, encode_canonical_json(dict(edu)))
        sql = "INSERT INTO outbound_queue (destination, edu) VALUES (?, ?)"
        if self.db.in_transaction:
            self.db.execute(sql, row)
            self._queued()
        else:
            with self.db.transaction():
                self.db.execute(sql, row)
                self._queued()

    def destinations(self) -> list[str]:
        """Destinations with anything queued, in order of their oldest item."""
        return [
            r[0]
            for r in self.db.query(
                "SELECT destination FROM outbound_queue GROUP BY destination ORDER BY MIN(queue_nid)"
            )
        ]

    def pending(self, destination: str | None = None) -> int:
        if destination is None:
            row = self.db.query_one("SELECT COUNT(*) FROM outbound_queue")
        else:
            row = self.db.query_one(
                "SELECT COUNT(*) FROM outbound_queue WHERE destination = ?", (destination,)
            )
        return int(row[0]) if row else 0

    def peek(
        self,
        destination: str,
        *,
        max_pdus: int = MAX_PDUS_PER_TRANSACTION,
        max_edus: int = MAX_EDUS_PER_TRANSACTION,
    ) -> OutboundBatch | None:
        """The oldest items for ``destination`` that fit in one transaction."""
        batch = OutboundBatch(destination)
        last = 0
        rows = self.db.query(
            """SELECT q.queue_nid, e.pdu, e.event_id, q.edu FROM outbound_queue q
               LEFT JOIN events e ON e.event_nid = q.event_nid
               WHERE q.destination = ? ORDER BY q.queue_nid LIMIT ?""",
            (destination, max_pdus + max_edus),
        )
        for position, pdu, event_id, edu in rows:
            if pdu is not None:
                if len(batch.pdus) == max_pdus:
                    break
                batch.pdus.append(json.loads(pdu))
                batch.event_ids.append(event_id)
            else:
                if len(batch.edus) == max_edus:
                    break
                batch.edus.append(json.loads(edu))
            last = position
        if not last:
            return None
        return OutboundBatch(
            destination, batch.pdus, batch.edus, event_ids=batch.event_ids, last_position=last
        )

    def ack(self, destination: str, up_to: int) -> None:
        """Forget everything queued for ``destination`` up to position ``up_to``."""
        sql = "DELETE FROM outbound_queue WHERE destination = ? AND queue_nid <= ?"
        if self.db.in_transaction:
            self.db.execute(sql, (destination, up_to))
        else:
            with self.db.transaction():
                self.db.execute(sql, (destination, up_to))
