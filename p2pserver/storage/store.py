"""The node's room store: events, the DAG, state and the outbound queue.

:class:`Store` is the one object the room engine persists through. It is
synchronous (apsw) and knows nothing of the protocol's checks: the engine
decides what an event is (accepted, soft-failed, rejected, outlier) and what
the state before and after it is, and the store records that durably and
answers questions about it.

Rules:
- Writes happen inside :meth:`Store.transaction`; the engine stores an event
  and everything derived from it (edges, state groups, forward extremities,
  current state, joined servers, outbound queue) in one transaction.
- Rejected events are stored (so they are not fetched and checked again)
  but never returned by :meth:`Store.get_event` / :meth:`Store.get_events`,
  the :class:`p2pserver.state.source.EventSource` interface, so nothing can
  use them as valid. Outliers (events we hold without knowing the state at
  them) are returned: they are valid auth events.
- Every event is stored after its auth events, which makes ``event_nid`` a
  topological order of the auth DAG (see :mod:`.auth_chains`).
- Caches hold committed facts only; a rolled back transaction clears them.
- An event stored in redacted form (its content hash did not match: a
  server served it stripped) is replaced by the full copy once one arrives
  (:meth:`Store.replace_stripped`); nothing else about it changes.
- Gaps (``event_gaps``): prev events the engine recorded as missing before
  an accepted event; one stays until it is in the DAG. Those marked
  ``auto`` (events missed while joined) are filled by themselves
  (:meth:`Store.gaps`) until that was tried often enough
  (:meth:`Store.gaps_tried`); the others are history from before we
  joined, the room's backward extremities (:meth:`Store.backward_extremities`),
  fetched when a client pages back to them.
- Stream positions order events as they entered our DAG, for clients.
  History fetched for a client paging back is older than anything we
  hold, so it gets positions below all others (negative), as Synapse does:
  /sync never shows it as new, and /messages finds it in order. A batch
  reserves its positions first (:meth:`Store.reserve_history_positions`),
  as its events are stored oldest first but numbered down from the newest.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from p2pserver.rooms.events import Event, StateKey, sender_server
from p2pserver.rooms.room_versions import RoomVersion, get_room_version
from p2pserver.storage.auth_chains import AuthChains
from p2pserver.storage.cache import LruCache
from p2pserver.storage.database import DATABASE_FILE_NAME, Database, chunks, placeholders
from p2pserver.storage.outbound import OutboundQueue
from p2pserver.storage.state_groups import StateGroups, StateMap, diff_states

MEMBER = "m.room.member"
CREATE_KEY: StateKey = ("m.room.create", "")


class EventStatus(StrEnum):
    ACCEPTED = "accepted"
    SOFT_FAILED = "soft_failed"
    REJECTED = "rejected"
    OUTLIER = "outlier"


# Events that are part of the room's DAG with a known state.
IN_DAG = (EventStatus.ACCEPTED, EventStatus.SOFT_FAILED)


@dataclass(frozen=True, slots=True)
class EventMeta:
    """What the store knows about an event besides its PDU."""

    nid: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    depth: int
    status: EventStatus
    rejected_reason: str | None
    redacted: bool
    stream_ordering: int | None
    state_before: int | None
    state_after: int | None

    @property
    def has_state(self) -> bool:
        """True when the state before and after this event is known."""
        return self.state_after is not None


@dataclass(frozen=True, slots=True)
class RoomRecord:
    room_id: str
    room_version: RoomVersion
    create_event_id: str
    current_state_group: int | None


_META_COLUMNS = (
    "event_nid, event_id, room_id, type, state_key, sender, depth, status, "
    "rejected_reason, redacted, stream_ordering, state_before, state_after"
)


# Stored PDUs need no canonical form (hashes and signatures are computed on
# the way in, from the parsed object), only a lossless one.
_pdu_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _encode_pdu(pdu: Mapping[str, Any]) -> bytes:
    return _pdu_encoder.encode(pdu).encode("utf-8")


def _meta_from_row(row: Sequence[Any]) -> EventMeta:
    return EventMeta(
        nid=row[0],
        event_id=row[1],
        room_id=row[2],
        type=row[3],
        state_key=row[4],
        sender=row[5],
        depth=row[6],
        status=EventStatus(row[7]),
        rejected_reason=row[8],
        redacted=bool(row[9]),
        stream_ordering=row[10],
        state_before=row[11],
        state_after=row[12],
    )


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.state_groups = StateGroups(db, self.event_nids)
        self.auth_chains = AuthChains(db)
        self.outbound = OutboundQueue(db)
        self._rooms: dict[str, RoomRecord] = {}
        self._meta: LruCache[str, EventMeta] = LruCache(50_000)
        self._events: LruCache[str, Event] = LruCache(10_000)
        self._stream: int | None = None
        # The lowest history position handed out; not a cache (a rollback
        # keeps it): reserved positions must never be handed out twice.
        self._history_floor: int | None = None
        self._extremities: dict[str, tuple[str, ...]] = {}
        # Room -> servers with a member joined (current state): read per
        # event by the federation (fan-out, sync), written only on a
        # membership change. Kept as a frozenset; callers get copies.
        self._joined: dict[str, frozenset[str]] = {}
        db.on_rollback(self.clear_caches)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, durable: bool = False) -> Store:
        """Open the database file at ``path`` (None: a fresh in-memory store)."""
        return cls(Database(path, durable=durable))

    @classmethod
    def open_data_dir(cls, data_dir: str | os.PathLike[str], *, durable: bool = False) -> Store:
        return cls.open(Path(data_dir) / DATABASE_FILE_NAME, durable=durable)

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[None]:
        return self.db.transaction()

    def clear_caches(self) -> None:
        self._rooms.clear()
        self._meta.clear()
        self._events.clear()
        self._stream = None
        self._extremities.clear()
        self._joined.clear()
        self.state_groups.clear_caches()
        self.auth_chains.clear_caches()

    # -- rooms ----------------------------------------------------------------

    def room(self, room_id: str) -> RoomRecord | None:
        record = self._rooms.get(room_id)
        if record is None:
            row = self.db.query_one(
                "SELECT room_version, create_event_id, current_state_group FROM rooms WHERE room_id = ?",
                (room_id,),
            )
            if row is None:
                return None
            record = RoomRecord(room_id, get_room_version(row[0]), row[1], row[2])
            self._rooms[room_id] = record
        return record

    def room_version(self, room_id: str) -> RoomVersion | None:
        record = self.room(room_id)
        return record.room_version if record else None

    def room_ids(self) -> list[str]:
        return [r[0] for r in self.db.query("SELECT room_id FROM rooms ORDER BY room_id")]

    def add_room(self, room_id: str, room_version: RoomVersion, create_event_id: str) -> None:
        self.db.execute(
            "INSERT INTO rooms (room_id, room_version, create_event_id) VALUES (?, ?, ?)",
            (room_id, room_version.identifier, create_event_id),
        )
        self._rooms.pop(room_id, None)

    # -- events ---------------------------------------------------------------

    def event_meta(self, event_id: str) -> EventMeta | None:
        meta = self._meta.get(event_id)
        if meta is None:
            row = self.db.query_one(
                f"SELECT {_META_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
            )
            if row is None:
                return None
            meta = _meta_from_row(row)
            self._meta.set(event_id, meta)
        return meta

    def event_metas(self, event_ids: Iterable[str]) -> dict[str, EventMeta]:
        out: dict[str, EventMeta] = {}
        missing: list[str] = []
        for event_id in dict.fromkeys(event_ids):
            meta = self._meta.get(event_id)
            if meta is None:
                missing.append(event_id)
            else:
                out[event_id] = meta
        for batch in chunks(missing):
            for row in self.db.query(
                f"SELECT {_META_COLUMNS} FROM events WHERE event_id IN ({placeholders(len(batch))})",
                batch,
            ):
                meta = _meta_from_row(row)
                self._meta.set(meta.event_id, meta)
                out[meta.event_id] = meta
        return out

    def event_nids(self, event_ids: Iterable[str]) -> dict[str, int]:
        """nids of stored events; raises KeyError naming any that is not stored."""
        ids = list(event_ids)
        metas = self.event_metas(ids)
        for event_id in ids:
            if event_id not in metas:
                raise KeyError(f"event {event_id} is not stored")
        return {event_id: metas[event_id].nid for event_id in ids}

    def event_ids_for_nids(self, nids: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for batch in chunks(list(nids)):
            for nid, event_id in self.db.query(
                f"SELECT event_nid, event_id FROM events WHERE event_nid IN ({placeholders(len(batch))})",
                batch,
            ):
                out[nid] = event_id
        return out

    def load_event(self, event_id: str, *, allow_rejected: bool = False) -> Event | None:
        return self.load_events([event_id], allow_rejected=allow_rejected).get(event_id)

    def load_events(
        self, event_ids: Iterable[str], *, allow_rejected: bool = False
    ) -> dict[str, Event]:
        """Stored events by ID (rejected ones only with ``allow_rejected``)."""
        ids = list(dict.fromkeys(event_ids))
        metas = self.event_metas(ids)
        out: dict[str, Event] = {}
        missing: list[str] = []
        for event_id in ids:
            meta = metas.get(event_id)
            if meta is None or (meta.status == EventStatus.REJECTED and not allow_rejected):
                continue
            event = self._events.get(event_id)
            if event is None:
                missing.append(event_id)
            else:
                out[event_id] = event
        for batch in chunks(missing):
            for event_id, room_id, pdu, redacted in self.db.query(
                f"SELECT event_id, room_id, pdu, redacted FROM events WHERE event_id IN ({placeholders(len(batch))})",
                batch,
            ):
                room_version = self.room_version(room_id)
                if room_version is None:
                    continue  # a rejected create event of a room we never had
                event = Event(
                    json.loads(pdu), room_version, event_id=event_id, redacted=bool(redacted)
                )
                self._events.set(event_id, event)
                out[event_id] = event
        return out

    # EventSource (p2pserver.state.source): rejected events do not exist.
    def get_event(self, event_id: str) -> Event | None:
        return self.load_event(event_id)

    def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        return self.load_events(event_ids)

    def _held_nids(self, event_ids: Iterable[str]) -> dict[str, int]:
        return {
            event_id: meta.nid
            for event_id, meta in self.event_metas(event_ids).items()
            if meta.status != EventStatus.REJECTED
        }

    def auth_chain_difference(self, state_sets: Sequence[Collection[str]]) -> set[str]:
        """The auth difference of ``state_sets`` (see :mod:`.auth_chains`)."""
        nid_sets = [self._held_nids(s).values() for s in state_sets]
        difference = self.auth_chains.difference(nid_sets)
        return set(self.event_ids_for_nids(difference).values())

    def conflicted_state_subgraph(self, conflicted: Collection[str]) -> set[str]:
        """The conflicted state subgraph of ``conflicted``, plus its held events."""
        subgraph = self.auth_chains.conflicted_subgraph(self._held_nids(conflicted).values())
        return set(self.event_ids_for_nids(subgraph).values())

    def auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """The union of the auth chains of the given held events, as event IDs."""
        chain = self.auth_chains.auth_chain(self._held_nids(event_ids).values())
        return set(self.event_ids_for_nids(chain).values())

    def _next_stream_ordering(self) -> int:
        if self._stream is None:
            row = self.db.query_one("SELECT MAX(stream_ordering) FROM events")
            self._stream = int(row[0]) if row and row[0] is not None else 0
        self._stream += 1
        return self._stream

    def reserve_history_positions(self, count: int) -> list[int]:
        """``count`` stream positions below every other, ascending (see the module docstring)."""
        if self._history_floor is None:
            row = self.db.query_one("SELECT MIN(stream_ordering) FROM events")
            lowest = int(row[0]) if row and row[0] is not None else 0
            self._history_floor = min(lowest, 0)
        self._history_floor -= count
        return list(range(self._history_floor, self._history_floor + count))

    def _stream_position(self, status: EventStatus, reserved: int | None) -> int | None:
        if status not in IN_DAG:
            return None
        return reserved if reserved is not None else self._next_stream_ordering()

    def max_stream_ordering(self) -> int:
        if self._stream is None:
            row = self.db.query_one("SELECT MAX(stream_ordering) FROM events")
            self._stream = int(row[0]) if row and row[0] is not None else 0
        return self._stream

    def insert_event(
        self,
        event: Event,
        status: EventStatus,
        *,
        rejected_reason: str | None = None,
        state_before: int | None = None,
        adds_state: bool = False,
        stream_ordering: int | None = None,
    ) -> EventMeta:
        """Store a new event (inside a transaction) with what we decided about it.

        ``state_before`` is the group of the state before the event (None
        for outliers); the state after it is that group, plus the event
        itself when ``adds_state`` (an accepted or soft-failed state event).
        Non-rejected events must have all their auth events stored already.
        ``stream_ordering``: one reserved for history paged back to, else
        the next one.
        """
        if (status == EventStatus.REJECTED) != (rejected_reason is not None):
            raise ValueError("a rejected_reason goes with, and only with, status rejected")
        if (status == EventStatus.OUTLIER and state_before is not None) or (
            status in IN_DAG and state_before is None
        ):
            raise ValueError("outliers have no state; accepted and soft-failed events do")
        stream = self._stream_position(status, stream_ordering)
        # The state after a state event needs the event's nid: set it below.
        after = None if adds_state else state_before
        self.db.execute(
            """INSERT INTO events (event_id, room_id, type, state_key, sender, depth,
                   origin_server_ts, status, rejected_reason, redacted, stream_ordering,
                   state_before, state_after, pdu)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                event.event_id,
                event.room_id,
                event.type,
                event.state_key,
                event.sender,
                event.depth,
                event.origin_server_ts,
                status.value,
                rejected_reason,
                int(event.redacted),
                stream,
                state_before,
                after,
                _encode_pdu(event.pdu),
            ),
        )
        nid = int(self.db.conn.last_insert_rowid())
        meta = EventMeta(
            nid,
            event.event_id,
            event.room_id,
            event.type,
            event.state_key,
            event.sender,
            event.depth,
            status,
            rejected_reason,
            event.redacted,
            stream,
            state_before,
            after,
        )
        self._meta.set(event.event_id, meta)
        self._events.set(event.event_id, event)
        if status != EventStatus.OUTLIER:
            self._insert_prev_edges(nid, event)
        if status != EventStatus.REJECTED:
            self._insert_auth_edges(nid, event)
        if status == EventStatus.ACCEPTED:
            self._record_redaction(nid, event)
        if adds_state and state_before is not None:
            meta = self._set_state_after(meta, event, adds_state)
        return meta

    def promote_outlier(
        self,
        event: Event,
        status: EventStatus,
        *,
        rejected_reason: str | None = None,
        state_before: int,
        adds_state: bool = False,
        stream_ordering: int | None = None,
    ) -> EventMeta:
        """Place a stored outlier in the DAG now that we know the state before it."""
        old = self.event_meta(event.event_id)
        if old is None or old.status != EventStatus.OUTLIER:
            raise ValueError(f"{event.event_id} is not a stored outlier")
        if (status == EventStatus.REJECTED) != (rejected_reason is not None):
            raise ValueError("a rejected_reason goes with, and only with, status rejected")
        stream = self._stream_position(status, stream_ordering)
        self.db.execute(
            """UPDATE events SET status = ?, rejected_reason = ?, stream_ordering = ?,
                   state_before = ? WHERE event_nid = ?""",
            (status.value, rejected_reason, stream, state_before, old.nid),
        )
        if status == EventStatus.REJECTED:
            # A rejected event is no auth event; it had edges as an outlier.
            self.db.execute("DELETE FROM event_auth WHERE event_nid = ?", (old.nid,))
            self.auth_chains.clear_caches()
        self._insert_prev_edges(old.nid, event)
        if status == EventStatus.ACCEPTED:
            self._record_redaction(old.nid, event)
        meta = EventMeta(
            old.nid,
            old.event_id,
            old.room_id,
            old.type,
            old.state_key,
            old.sender,
            old.depth,
            status,
            rejected_reason,
            old.redacted,
            stream,
            state_before,
            None,
        )
        self._meta.set(event.event_id, meta)
        return self._set_state_after(meta, event, adds_state)

    def replace_stripped(self, event: Event) -> EventMeta:
        """Replace a stored redacted copy by the full ``event`` of the same ID (inside a transaction).

        The caller checked the full copy's content hash. Only the PDU
        changes: everything stored about an event besides it (state groups,
        DAG and auth edges, memberships, redaction targets) comes from keys
        that redaction keeps, and the decision made on the redacted copy
        stands.
        """
        old = self.event_meta(event.event_id)
        if old is None or not old.redacted or event.redacted:
            raise ValueError(f"{event.event_id} is not a stored redacted copy of a full event")
        self.db.execute(
            "UPDATE events SET pdu = ?, redacted = 0 WHERE event_nid = ?",
            (_encode_pdu(event.pdu), old.nid),
        )
        meta = dataclasses.replace(old, redacted=False)
        self._meta.set(event.event_id, meta)
        self._events.set(event.event_id, event)
        return meta

    def _set_state_after(self, meta: EventMeta, event: Event, adds_state: bool) -> EventMeta:
        assert meta.state_before is not None
        after = meta.state_before
        if adds_state and event.state_key is not None:
            after = self.state_groups.create_delta(
                meta.room_id, after, {(event.type, event.state_key): event.event_id}
            )
        self.db.execute("UPDATE events SET state_after = ? WHERE event_nid = ?", (after, meta.nid))
        meta = EventMeta(
            meta.nid,
            meta.event_id,
            meta.room_id,
            meta.type,
            meta.state_key,
            meta.sender,
            meta.depth,
            meta.status,
            meta.rejected_reason,
            meta.redacted,
            meta.stream_ordering,
            meta.state_before,
            after,
        )
        self._meta.set(meta.event_id, meta)
        return meta

    def prev_event_ids(self, nid: int) -> list[str]:
        """The prev_events of a stored DAG event (outliers have none recorded)."""
        return [
            r[0]
            for r in self.db.query(
                "SELECT prev_event_id FROM event_edges WHERE event_nid = ?", (nid,)
            )
        ]

    def _insert_prev_edges(self, nid: int, event: Event) -> None:
        self._insert_pairs("event_edges (event_nid, prev_event_id)", nid, event.prev_event_ids)

    def _insert_auth_edges(self, nid: int, event: Event) -> None:
        # Only the listed auth events, as the spec's auth chain has it: in
        # v12 the create event is not listed, so it is in no auth chain.
        auth_nids = self.event_nids(event.auth_event_ids).values()
        self._insert_pairs("event_auth (event_nid, auth_nid)", nid, list(auth_nids))

    def _insert_pairs(self, table: str, nid: int, values: Sequence[object]) -> None:
        """``(nid, value)`` rows in one statement (this is on the hot path)."""
        if values:
            rows = ", ".join(["(?, ?)"] * len(values))
            self.db.execute(
                f"INSERT OR IGNORE INTO {table} VALUES {rows}",
                [x for value in values for x in (nid, value)],
            )

    def accept_soft_failed(self, event: Event) -> EventMeta:
        """Accept a stored soft-failed event (inside a transaction); it takes the next
        stream position, so it reaches clients as new."""
        old = self.event_meta(event.event_id)
        if old is None or old.status != EventStatus.SOFT_FAILED:
            raise ValueError(f"{event.event_id} is not a stored soft-failed event")
        stream = self._next_stream_ordering()
        self.db.execute(
            "UPDATE events SET status = ?, stream_ordering = ? WHERE event_nid = ?",
            (EventStatus.ACCEPTED.value, stream, old.nid),
        )
        self._record_redaction(old.nid, event)
        meta = dataclasses.replace(old, status=EventStatus.ACCEPTED, stream_ordering=stream)
        self._meta.set(event.event_id, meta)
        return meta

    def _record_redaction(self, nid: int, event: Event) -> None:
        target = event.redacts
        if target is not None:
            self.db.execute(
                "INSERT INTO redactions (redaction_nid, redacts) VALUES (?, ?)", (nid, target)
            )

    def redactions_of(self, event_id: str) -> list[str]:
        """Accepted redaction events that target ``event_id``."""
        return [
            r[0]
            for r in self.db.query(
                """SELECT e.event_id FROM redactions r JOIN events e ON e.event_nid = r.redaction_nid
                   WHERE r.redacts = ? ORDER BY r.redaction_nid""",
                (event_id,),
            )
        ]

    # -- the DAG --------------------------------------------------------------

    def forward_extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities, deepest first, then by event ID: the
        same order on every server, so lists cut short (``room_heads``, prev
        events) compare alike."""
        cached = self._extremities.get(room_id)
        if cached is None:
            cached = tuple(
                r[0]
                for r in self.db.query(
                    """SELECT e.event_id FROM forward_extremities f JOIN events e USING (event_nid)
                       WHERE f.room_id = ? ORDER BY e.depth DESC, e.event_id""",
                    (room_id,),
                )
            )
            self._extremities[room_id] = cached
        return list(cached)

    def set_forward_extremities(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Replace the room's forward extremities (inside a transaction)."""
        old = set(self.forward_extremities(room_id))
        new = set(event_ids)
        metas = self.event_metas(old | new)
        removed, added = old - new, new - old
        if len(removed) == 1 and len(added) == 1:
            # The usual case, an event on top of the one extremity: one statement.
            self.db.execute(
                "UPDATE forward_extremities SET event_nid = ? WHERE room_id = ? AND event_nid = ?",
                (metas[added.pop()].nid, room_id, metas[removed.pop()].nid),
            )
        for event_id in removed:
            self.db.execute(
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_nid = ?",
                (room_id, metas[event_id].nid),
            )
        for event_id in added:
            self.db.execute(
                "INSERT INTO forward_extremities (room_id, event_nid) VALUES (?, ?)",
                (room_id, metas[event_id].nid),
            )
        self._extremities[room_id] = tuple(sorted(new, key=lambda e: (-metas[e].depth, e)))

    def has_children(self, event_id: str) -> bool:
        """Whether any event in the DAG lists ``event_id`` as a prev event (rarely, for a new one)."""
        return bool(
            self.db.query_one(
                "SELECT 1 FROM event_edges WHERE prev_event_id = ? LIMIT 1", (event_id,)
            )
        )

    def children(self, event_id: str) -> list[str]:
        """Events in the DAG (any status but outlier) listing ``event_id`` as a prev event."""
        return [
            r[0]
            for r in self.db.query(
                """SELECT e.event_id FROM event_edges g JOIN events e ON e.event_nid = g.event_nid
                   WHERE g.prev_event_id = ? ORDER BY e.event_nid""",
                (event_id,),
            )
        ]

    def add_gaps(self, room_id: str, event_ids: Iterable[str], *, auto: bool = True) -> None:
        """Record prev events we lack of an accepted event (inside a transaction).

        ``auto``: events missed while joined, to fill by themselves; else
        history from before we joined. One recorded both ways is filled by
        itself.
        """
        self.db.executemany(
            """INSERT INTO event_gaps (room_id, event_id, auto) VALUES (?, ?, ?)
               ON CONFLICT (room_id, event_id) DO UPDATE SET auto = MAX(auto, excluded.auto)""",
            [(room_id, e, int(auto)) for e in event_ids],
        )

    def gaps(self, room_id: str) -> list[str]:
        """The room's gaps to fill by themselves that are still missing from the DAG."""
        return self._missing_gaps(room_id, "AND g.auto = 1")

    def backward_extremities(self, room_id: str) -> list[str]:
        """Where the room's history from before we joined goes on (still missing from the DAG).

        Those asked for least often first (:meth:`history_tried`), so points
        no server can fill do not crowd out the others.
        """
        return self._missing_gaps(room_id, "AND g.auto = 0")

    def history_tried(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Backward extremities were asked for once more (inside a transaction)."""
        self.db.executemany(
            """UPDATE event_gaps SET attempts = attempts + 1
               WHERE room_id = ? AND event_id = ? AND auto = 0""",
            [(room_id, e) for e in event_ids],
        )

    def _missing_gaps(self, room_id: str, condition: str) -> list[str]:
        return [
            r[0]
            for r in self.db.query(
                f"""SELECT g.event_id FROM event_gaps g LEFT JOIN events e USING (event_id)
                    WHERE g.room_id = ? AND (e.status IS NULL OR e.status = 'outlier') {condition}
                    ORDER BY g.attempts, g.event_id""",
                (room_id,),
            )
        ]

    def gaps_tried(self, room_id: str, event_ids: Iterable[str], *, max_attempts: int) -> None:
        """One more try at filling these gaps (inside a transaction): filled or spent ones go."""
        ids = list(event_ids)
        self.db.executemany(
            "UPDATE event_gaps SET attempts = attempts + 1 WHERE room_id = ? AND event_id = ?",
            [(room_id, e) for e in ids],
        )
        self.db.execute(
            "DELETE FROM event_gaps WHERE room_id = ? AND auto = 1 AND attempts >= ?",
            (room_id, max_attempts),
        )
        self.gaps_filled(room_id)

    def gaps_filled(self, room_id: str) -> None:
        """Forget the room's gaps that are now in the DAG (inside a transaction)."""
        self.db.execute(
            """DELETE FROM event_gaps WHERE room_id = ? AND event_id IN
                   (SELECT event_id FROM events WHERE status != 'outlier'
                    AND event_id IN (SELECT event_id FROM event_gaps WHERE room_id = ?))""",
            (room_id, room_id),
        )

    def rooms_with_gaps(self) -> list[str]:
        """Rooms with gaps to fill by themselves."""
        return [
            r[0] for r in self.db.query("SELECT DISTINCT room_id FROM event_gaps WHERE auto = 1")
        ]

    def min_depth(self, room_id: str) -> int:
        row = self.db.query_one(
            "SELECT MIN(depth) FROM events WHERE room_id = ? AND status IN ('accepted', 'soft_failed')",
            (room_id,),
        )
        return int(row[0]) if row and row[0] is not None else 0

    def stripped_rooms(self) -> list[str]:
        """Rooms with events held only redacted (and not rejected)."""
        return [
            r[0]
            for r in self.db.query(
                """SELECT DISTINCT room_id FROM events WHERE redacted = 1
                   AND status != 'rejected' ORDER BY room_id"""
            )
        ]

    def stripped_event_ids(
        self, room_id: str, *, limit: int, after: str | None = None
    ) -> list[str]:
        """Events of the room held only redacted (and not rejected), deepest first.

        Ties in depth go by storage order, newest first, so the order is
        total and can be paged: ``after`` (a stored event, typically the
        last of the previous page) starts the list just after it.
        """
        sql = """SELECT event_id FROM events WHERE room_id = ? AND redacted = 1
                 AND status != 'rejected'"""
        params: tuple[object, ...] = (room_id,)
        if after is not None:
            sql += """ AND (depth, event_nid) <
                       (SELECT depth, event_nid FROM events WHERE event_id = ?)"""
            params += (after,)
        sql += " ORDER BY depth DESC, event_nid DESC LIMIT ?"
        return [r[0] for r in self.db.query(sql, (*params, limit))]

    def redacted_current_state(self, room_id: str) -> set[str]:
        """The room's current state events that we hold only redacted."""
        rows = self.db.query(
            """SELECT e.event_id FROM current_state c JOIN events e USING (event_nid)
               WHERE c.room_id = ? AND e.redacted = 1""",
            (room_id,),
        )
        return {r[0] for r in rows}

    def membership_events(self, room_id: str, user_id: str) -> list[EventMeta]:
        """Every stored membership event of ``user_id`` in the room."""
        rows = self.db.query(
            f"SELECT {_META_COLUMNS} FROM events WHERE room_id = ? AND type = ? AND state_key = ?"
            " ORDER BY event_nid",
            (room_id, MEMBER, user_id),
        )
        return [_meta_from_row(r) for r in rows]

    # -- state ----------------------------------------------------------------

    def state_map(self, group: int) -> StateMap:
        return self.state_groups.load(group)

    def current_state(self, room_id: str) -> StateMap:
        record = self.room(room_id)
        if record is None or record.current_state_group is None:
            return {}
        return self.state_groups.load(record.current_state_group)

    def set_current_state(
        self, room_id: str, group: int, *, delta: Mapping[StateKey, str | None] | None = None
    ) -> dict[StateKey, str | None]:
        """Make ``group`` the room's current state (inside a transaction).

        Updates ``current_state`` and ``joined_servers`` by the difference,
        which is returned. A caller that knows the difference from the old
        current state (one state event on top of it) may pass it as ``delta``.
        """
        record = self.room(room_id)
        if record is None:
            raise KeyError(f"unknown room {room_id}")
        if record.current_state_group == group:
            return {}
        old = self.current_state(room_id)
        if delta is None:
            delta = diff_states(old, self.state_groups.load(group))
        else:
            delta = {k: v for k, v in delta.items() if old.get(k) != v}
        changed_members = [k for k in delta if k[0] == MEMBER]
        events = self.load_events(
            [v for k in changed_members for v in (old.get(k), delta[k]) if v is not None],
            allow_rejected=True,
        )

        def membership(event_id: str | None) -> str | None:
            event = events.get(event_id) if event_id is not None else None
            return event.membership if event is not None else None

        server_change: dict[str, int] = {}
        for key in changed_members:
            was = membership(old.get(key)) == "join"
            now = membership(delta[key]) == "join"
            if was != now:
                server = sender_server(key[1])
                server_change[server] = server_change.get(server, 0) + (1 if now else -1)
        deletes = [(room_id, k[0], k[1]) for k, v in delta.items() if v is None]
        self.db.executemany(
            "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?", deletes
        )
        upserts = {k: v for k, v in delta.items() if v is not None}
        nids = self.event_nids(upserts.values())
        self.db.executemany(
            """INSERT OR REPLACE INTO current_state (room_id, type, state_key, event_nid, membership)
               VALUES (?, ?, ?, ?, ?)""",
            [
                (room_id, k[0], k[1], nids[v], membership(v) if k[0] == MEMBER else None)
                for k, v in upserts.items()
            ],
        )
        for server, change in server_change.items():
            if not change:
                continue
            row = self.db.query_one(
                "SELECT joined_members FROM joined_servers WHERE room_id = ? AND server_name = ?",
                (room_id, server),
            )
            count = (int(row[0]) if row else 0) + change
            if count > 0:
                self.db.execute(
                    "INSERT OR REPLACE INTO joined_servers (room_id, server_name, joined_members)"
                    " VALUES (?, ?, ?)",
                    (room_id, server, count),
                )
            else:
                self.db.execute(
                    "DELETE FROM joined_servers WHERE room_id = ? AND server_name = ?",
                    (room_id, server),
                )
        self.db.execute(
            "UPDATE rooms SET current_state_group = ? WHERE room_id = ?", (group, room_id)
        )
        self._rooms.pop(room_id, None)
        if server_change:
            self._joined.pop(room_id, None)
        return delta

    def joined_servers(self, room_id: str) -> set[str]:
        return set(self._joined_servers(room_id))

    def server_joined(self, room_id: str, server_name: str) -> bool:
        return server_name in self._joined_servers(room_id)

    def _joined_servers(self, room_id: str) -> frozenset[str]:
        servers = self._joined.get(room_id)
        if servers is None:
            servers = self._joined[room_id] = frozenset(
                r[0]
                for r in self.db.query(
                    "SELECT server_name FROM joined_servers WHERE room_id = ?", (room_id,)
                )
            )
        return servers

    def server_invited(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is invited to the room (current state)."""
        return self.server_has_member(room_id, server_name, "invite")

    def server_has_member(
        self, room_id: str, server_name: str, membership: str | None = None
    ) -> bool:
        """Whether a user of ``server_name`` has a membership in the room's current state
        (of kind ``membership``; any kind, even a leave or a ban, if None)."""
        suffix = ":" + server_name
        sql = """SELECT 1 FROM current_state WHERE room_id = ? AND type = ?
                 AND substr(state_key, -?) = ?"""
        args: tuple[object, ...] = (room_id, MEMBER, len(suffix), suffix)
        if membership is not None:
            sql += " AND membership = ?"
            args += (membership,)
        return self.db.query_one(sql + " LIMIT 1", args) is not None

    def current_membership(self, room_id: str, user_id: str) -> str | None:
        row = self.db.query_one(
            "SELECT membership FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, MEMBER, user_id),
        )
        return row[0] if row else None

    def joined_members(self, room_id: str) -> list[str]:
        return [
            r[0]
            for r in self.db.query(
                """SELECT state_key FROM current_state WHERE room_id = ? AND type = ?
                   AND membership = 'join' ORDER BY state_key""",
                (room_id, MEMBER),
            )
        ]

    # -- checks ---------------------------------------------------------------

    def check_consistency(self) -> list[str]:
        """Database integrity plus the store's own invariants; [] when sound."""
        problems = self.db.integrity_check()
        problems += [
            f"event {r[0]} ({r[1]}) has no state"
            for r in self.db.query(
                """SELECT event_id, status FROM events WHERE status IN ('accepted', 'soft_failed')
                   AND (state_before IS NULL OR state_after IS NULL)"""
            )
        ]
        problems += [
            f"forward extremity {r[0]} is {r[1]}"
            for r in self.db.query(
                """SELECT e.event_id, e.status FROM forward_extremities f JOIN events e USING (event_nid)
                   WHERE e.status != 'accepted'"""
            )
        ]
        for room_id in self.room_ids():
            record = self.room(room_id)
            assert record is not None
            expected = dict(self.current_state(room_id))
            rows = self.db.query(
                """SELECT c.type, c.state_key, e.event_id FROM current_state c
                   JOIN events e USING (event_nid) WHERE c.room_id = ?""",
                (room_id,),
            )
            if {(r[0], r[1]): r[2] for r in rows} != expected:
                problems.append(f"{room_id}: current_state table differs from its state group")
            counts: dict[str, int] = {}
            for (type_, state_key), event_id in expected.items():
                if type_ == MEMBER:
                    event = self.load_event(event_id, allow_rejected=True)
                    if event is not None and event.membership == "join":
                        server = sender_server(state_key)
                        counts[server] = counts.get(server, 0) + 1
            stored = dict(
                self.db.query(
                    "SELECT server_name, joined_members FROM joined_servers WHERE room_id = ?",
                    (room_id,),
                )
            )
            if stored != counts:
                problems.append(f"{room_id}: joined_servers {stored} != {counts}")
        return problems

    def table_rows(self) -> dict[str, int]:
        """Row counts per table (for benchmarks and tests of compactness)."""
        tables = [
            r[0]
            for r in self.db.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: int(self.db.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in sorted(tables)}
