"""Client accounts: the tables and queries of the Client-Server API.

This module owns one schema step (:func:`accounts_v1`, appended to
:data:`p2pserver.storage.schema.MIGRATIONS`) and two classes over the node's
one database:

- :class:`AccountStore`: what belongs to the node's users and is not a room
  event: accounts, devices and their access tokens, filters, account data,
  transaction IDs, receipts, room aliases, the room directory and forgotten
  rooms.
- :class:`RoomReads`: read-only questions the client API asks of the room
  engine's tables (which rooms a user is in, a room's timeline by stream
  position). They are plain SQL over those tables and never write them.

Rules:
- Access tokens are never stored: only their SHA-256 (``token_hash``). A
  device has at most one token (the spec's "one access token per device"),
  so logging in again on a device replaces its token.
- Passwords are stored as an opaque KDF string made by the client API
  (:mod:`p2pserver.clientapi.passwords`); storage never sees a password.
- Account data and receipts share one counter, the *account stream*
  (``client_stream``): each write takes the next position, so /sync can ask
  "what changed after position N" of both with one number in its token.
  To-device messages and device-list changes (:mod:`.e2ee`) take their
  positions from the same counter, through :meth:`AccountStore.next_stream`.
- A room's ``account_data`` rows use ``room_id = ''`` for global data, so one
  primary key covers both kinds.
- Writes open their own transaction unless the caller holds one, like
  :meth:`p2pserver.storage.outbound.OutboundQueue.enqueue_edu`.

Theory of the tables (schema step ``accounts_v1``):
- ``users``: one row per local account with its password hash and profile
  (``displayname``, ``avatar_url``); ``deactivated`` accounts keep their row
  so the user ID is never reused.
- ``devices`` and ``access_tokens`` (one token row per device, unique).
- ``user_filters``: filter JSON per user, numbered from 0.
- ``account_data``, ``receipts``: as above, each row carrying the account
  stream position of its last change.
- ``txn_ids``: (user, device, txnId) -> event ID, for idempotent sends.
- ``room_aliases`` (local aliases), ``room_directory`` (rooms published in
  /publicRooms), ``forgotten_rooms``.
- ``client_stream``: the one-row counter of the account stream.
- ``events_room_stream``: an index on the engine's ``events`` table so a
  room's timeline reads by stream position without a scan.

Step ``accounts_v2`` adds ``restored_events``: events the node held
stripped (clients were shown the stripped copy) and now holds whole, on
the account stream, so /sync sends their state again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

if TYPE_CHECKING:  # database.py imports schema.py, which imports this module
    from p2pserver.storage.database import Database

__all__ = [
    "AccountStore",
    "AliasInUse",
    "DeviceRecord",
    "Membership",
    "ReceiptRecord",
    "RoomReads",
    "UserExists",
    "UserRecord",
    "accounts_v1",
]

_ACCOUNTS_V1 = """
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    created_ts INTEGER NOT NULL,
    deactivated INTEGER NOT NULL DEFAULT 0,
    displayname TEXT,
    avatar_url TEXT
) WITHOUT ROWID;

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users(user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE access_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    UNIQUE (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
) WITHOUT ROWID;

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
) WITHOUT ROWID;
CREATE INDEX account_data_stream ON account_data(user_id, stream);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
) WITHOUT ROWID;
CREATE INDEX receipts_stream ON receipts(room_id, stream);

CREATE TABLE txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
) WITHOUT ROWID;
CREATE INDEX txn_ids_event ON txn_ids(event_id);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX room_aliases_room ON room_aliases(room_id);

CREATE TABLE room_directory (
    room_id TEXT PRIMARY KEY,
    visibility TEXT NOT NULL CHECK (visibility IN ('public', 'private'))
) WITHOUT ROWID;

CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;

CREATE TABLE client_stream (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL
);
INSERT INTO client_stream (id, position) VALUES (0, 0);

CREATE INDEX events_room_stream ON events(room_id, stream_ordering)
    WHERE stream_ordering IS NOT NULL;
"""


def accounts_v1(conn: apsw.Connection) -> None:
    """Schema step: the client API's tables (see the module docstring)."""
    conn.execute(_ACCOUNTS_V1)


def accounts_v2(conn: apsw.Connection) -> None:
    """Schema step: events held whole after clients were shown a stripped copy."""
    conn.execute(
        """CREATE TABLE restored_events (
               stream INTEGER PRIMARY KEY,
               room_id TEXT NOT NULL,
               event_id TEXT NOT NULL
           )"""
    )


class UserExists(Exception):
    """The user ID is taken (M_USER_IN_USE)."""


class AliasInUse(Exception):
    """The room alias already points at a room."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    password_hash: str | None
    created_ts: int
    deactivated: bool
    displayname: str | None
    avatar_url: str | None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    room_id: str
    receipt_type: str
    user_id: str
    # '' for an unthreaded receipt.
    thread_id: str
    event_id: str
    ts: int
    stream: int


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's current membership in one room, from the room's current state."""

    room_id: str
    membership: str
    event_id: str
    # The membership event's stream position (None for an outlier).
    stream_ordering: int | None


_USER_COLUMNS = "user_id, password_hash, created_ts, deactivated, displayname, avatar_url"


def _user(row: Any) -> UserRecord:
    return UserRecord(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction, unless the caller already holds one."""
        if self.db.in_transaction:
            yield
        else:
            with self.db.transaction():
                yield

    def next_stream(self, count: int = 1) -> int:
        """Take ``count`` positions on the account stream (inside a transaction); returns the last.

        The one counter of the account stream: account data and receipts
        here, to-device messages and device-list changes in
        :class:`p2pserver.storage.e2ee.E2eeStore` all take their positions
        from it, so one number in a /sync token covers them all.
        """
        if count < 1:
            raise ValueError("take at least one position")
        rows = self.db.query(
            "UPDATE client_stream SET position = position + ? WHERE id = 0 RETURNING position",
            (count,),
        )
        return int(rows[0][0])

    def stream_position(self) -> int:
        """The account stream's position (the last account data or receipt write)."""
        row = self.db.query_one("SELECT position FROM client_stream WHERE id = 0")
        return int(row[0]) if row else 0

    # -- users ---------------------------------------------------------------

    def create_user(self, user_id: str, password_hash: str | None, now: int) -> None:
        with self.atomic():
            if self.db.query_one("SELECT 1 FROM users WHERE user_id = ?", (user_id,)):
                raise UserExists(user_id)
            self.db.execute(
                "INSERT INTO users (user_id, password_hash, created_ts) VALUES (?, ?, ?)",
                (user_id, password_hash, now),
            )

    def user(self, user_id: str) -> UserRecord | None:
        row = self.db.query_one(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
        return _user(row) if row else None

    def search_users(self, term: str, limit: int) -> list[UserRecord]:
        """Active users whose ID or display name contains ``term`` (case-insensitive)."""
        pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.query(
            f"""SELECT {_USER_COLUMNS} FROM users WHERE deactivated = 0
                AND (user_id LIKE ?1 ESCAPE '\\' OR displayname LIKE ?1 ESCAPE '\\')
                ORDER BY user_id LIMIT ?2""",
            (pattern, limit),
        )
        return [_user(r) for r in rows]

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        with self.atomic():
            self.db.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            )

    def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        if field not in ("displayname", "avatar_url"):
            raise ValueError(f"unknown profile field {field!r}")
        with self.atomic():
            self.db.execute(f"UPDATE users SET {field} = ? WHERE user_id = ?", (value, user_id))

    # -- devices and access tokens ---------------------------------------------

    def add_device(
        self,
        user_id: str,
        device_id: str,
        display_name: str | None,
        token_hash: bytes,
        now: int,
        ip: str | None = None,
    ) -> None:
        """Create the device (or keep it, renaming only if a name is given) with a new token."""
        with self.atomic():
            self.db.execute(
                """INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip)
                   VALUES (?1, ?2, ?3, ?4, ?5)
                   ON CONFLICT (user_id, device_id) DO UPDATE SET
                   display_name = COALESCE(?3, display_name), last_seen_ts = ?4,
                   last_seen_ip = ?5""",
                (user_id, device_id, display_name, now, ip),
            )
            self.db.execute(
                "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )
            self.db.execute(
                """INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)
                   VALUES (?, ?, ?, ?)""",
                (token_hash, user_id, device_id, now),
            )

    def token_owner(self, token_hash: bytes) -> tuple[str, str] | None:
        """(user ID, device ID) of an access token, by its hash."""
        row = self.db.query_one(
            "SELECT user_id, device_id FROM access_tokens WHERE token_hash = ?", (token_hash,)
        )
        return (row[0], row[1]) if row else None

    def device(self, user_id: str, device_id: str) -> DeviceRecord | None:
        row = self.db.query_one(
            """SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip FROM devices
               WHERE user_id = ? AND device_id = ?""",
            (user_id, device_id),
        )
        return DeviceRecord(*row) if row else None

    def devices(self, user_id: str) -> list[DeviceRecord]:
        rows = self.db.query(
            """SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip FROM devices
               WHERE user_id = ? ORDER BY device_id""",
            (user_id,),
        )
        return [DeviceRecord(*r) for r in rows]

    def rename_device(self, user_id: str, device_id: str, display_name: str) -> None:
        with self.atomic():
            self.db.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                (display_name, user_id, device_id),
            )

    def delete_devices(self, user_id: str, device_ids: Iterable[str]) -> None:
        """Delete devices with their tokens and transaction IDs."""
        rows = [(user_id, d) for d in device_ids]
        with self.atomic():
            for table in ("access_tokens", "txn_ids", "devices"):
                self.db.executemany(
                    f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", rows
                )

    # -- filters ---------------------------------------------------------------

    def add_filter(self, user_id: str, filter_json: Mapping[str, Any]) -> int:
        with self.atomic():
            row = self.db.query_one(
                "SELECT MAX(filter_id) FROM user_filters WHERE user_id = ?", (user_id,)
            )
            filter_id = 0 if row is None or row[0] is None else int(row[0]) + 1
            self.db.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, json.dumps(filter_json, separators=(",", ":"))),
            )
        return filter_id

    def filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        row = self.db.query_one(
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
            (user_id, filter_id),
        )
        return json.loads(row[0]) if row else None

    # -- account data ----------------------------------------------------------

    def set_account_data(
        self, user_id: str, room_id: str | None, data_type: str, content: Mapping[str, Any]
    ) -> int:
        """Store global (``room_id`` None) or per-room account data; returns its stream position."""
        with self.atomic():
            stream = self.next_stream()
            self.db.execute(
                """INSERT OR REPLACE INTO account_data (user_id, room_id, type, content, stream)
                   VALUES (?, ?, ?, ?, ?)""",
                (user_id, room_id or "", data_type, json.dumps(content), stream),
            )
        return stream

    def account_data(self, user_id: str, room_id: str | None, data_type: str) -> Any | None:
        row = self.db.query_one(
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
            (user_id, room_id or "", data_type),
        )
        return json.loads(row[0]) if row else None

    def account_data_position(self, user_id: str, room_id: str | None, data_type: str) -> int:
        """The stream position of one account data entry's last change (0 if unset)."""
        row = self.db.query_one(
            "SELECT stream FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
            (user_id, room_id or "", data_type),
        )
        return int(row[0]) if row else 0

    def account_data_since(
        self, user_id: str, since: int
    ) -> list[tuple[str | None, str, dict[str, Any]]]:
        """``(room_id or None, type, content)`` changed after stream position ``since``."""
        rows = self.db.query(
            """SELECT room_id, type, content FROM account_data WHERE user_id = ? AND stream > ?
               ORDER BY stream""",
            (user_id, since),
        )
        return [(r[0] or None, r[1], json.loads(r[2])) for r in rows]

    # -- transaction IDs -------------------------------------------------------

    def txn_event(self, user_id: str, device_id: str, txn_id: str) -> str | None:
        row = self.db.query_one(
            "SELECT event_id FROM txn_ids WHERE user_id = ? AND device_id = ? AND txn_id = ?",
            (user_id, device_id, txn_id),
        )
        return row[0] if row else None

    def record_txn(
        self, user_id: str, device_id: str, txn_id: str, event_id: str, now: int
    ) -> None:
        with self.atomic():
            self.db.execute(
                """INSERT OR REPLACE INTO txn_ids (user_id, device_id, txn_id, event_id, ts)
                   VALUES (?, ?, ?, ?, ?)""",
                (user_id, device_id, txn_id, event_id, now),
            )

    def txn_ids_of(self, user_id: str, device_id: str, event_ids: Iterable[str]) -> dict[str, str]:
        """event ID -> transaction ID, for the events this device sent."""
        ids = list(event_ids)
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            for event_id, txn_id in self.db.query(
                f"""SELECT event_id, txn_id FROM txn_ids WHERE user_id = ? AND device_id = ?
                    AND event_id IN ({marks})""",
                (user_id, device_id, *batch),
            ):
                out[event_id] = txn_id
        return out

    # -- receipts --------------------------------------------------------------

    def set_receipt(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str | None,
        event_id: str,
        ts: int,
    ) -> int:
        with self.atomic():
            stream = self.next_stream()
            self.db.execute(
                """INSERT OR REPLACE INTO receipts
                   (room_id, receipt_type, user_id, thread_id, event_id, ts, stream)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (room_id, receipt_type, user_id, thread_id or "", event_id, ts, stream),
            )
        return stream

    def receipts(self, room_id: str, since: int = 0) -> list[ReceiptRecord]:
        rows = self.db.query(
            """SELECT room_id, receipt_type, user_id, thread_id, event_id, ts, stream FROM receipts
               WHERE room_id = ? AND stream > ? ORDER BY stream""",
            (room_id, since),
        )
        return [ReceiptRecord(*r) for r in rows]

    def receipt_rooms_since(self, since: int) -> set[str]:
        return {
            r[0]
            for r in self.db.query(
                "SELECT DISTINCT room_id FROM receipts WHERE stream > ?", (since,)
            )
        }

    # -- events restored whole -------------------------------------------------

    def add_restored(self, room_id: str, event_id: str) -> int:
        with self.atomic():
            stream = self.next_stream()
            self.db.execute(
                "INSERT INTO restored_events (stream, room_id, event_id) VALUES (?, ?, ?)",
                (stream, room_id, event_id),
            )
        return stream

    def restored_since(self, since: int) -> dict[str, set[str]]:
        """Per room, the events restored whole after account stream position ``since``."""
        out: dict[str, set[str]] = {}
        for room_id, event_id in self.db.query(
            "SELECT room_id, event_id FROM restored_events WHERE stream > ?", (since,)
        ):
            out.setdefault(room_id, set()).add(event_id)
        return out

    # -- aliases and the room directory ----------------------------------------

    def create_alias(self, alias: str, room_id: str, creator: str) -> None:
        with self.atomic():
            if self.db.query_one("SELECT 1 FROM room_aliases WHERE alias = ?", (alias,)):
                raise AliasInUse(alias)
            self.db.execute(
                "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?)",
                (alias, room_id, creator),
            )

    def alias(self, alias: str) -> tuple[str, str] | None:
        """(room ID, creator) of a local alias."""
        row = self.db.query_one(
            "SELECT room_id, creator FROM room_aliases WHERE alias = ?", (alias,)
        )
        return (row[0], row[1]) if row else None

    def delete_alias(self, alias: str) -> None:
        with self.atomic():
            self.db.execute("DELETE FROM room_aliases WHERE alias = ?", (alias,))

    def aliases_of(self, room_id: str) -> list[str]:
        return [
            r[0]
            for r in self.db.query(
                "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (room_id,)
            )
        ]

    def set_room_visibility(self, room_id: str, visibility: str) -> None:
        with self.atomic():
            self.db.execute(
                "INSERT OR REPLACE INTO room_directory (room_id, visibility) VALUES (?, ?)",
                (room_id, visibility),
            )

    def room_visibility(self, room_id: str) -> str:
        row = self.db.query_one(
            "SELECT visibility FROM room_directory WHERE room_id = ?", (room_id,)
        )
        return row[0] if row else "private"

    def public_room_ids(self) -> list[str]:
        return [
            r[0]
            for r in self.db.query(
                "SELECT room_id FROM room_directory WHERE visibility = 'public' ORDER BY room_id"
            )
        ]

    # -- forgotten rooms -------------------------------------------------------

    def set_forgotten(self, user_id: str, room_id: str, forgotten: bool) -> None:
        with self.atomic():
            if forgotten:
                self.db.execute(
                    "INSERT OR IGNORE INTO forgotten_rooms (user_id, room_id) VALUES (?, ?)",
                    (user_id, room_id),
                )
            else:
                self.db.execute(
                    "DELETE FROM forgotten_rooms WHERE user_id = ? AND room_id = ?",
                    (user_id, room_id),
                )

    def forgotten_rooms(self, user_id: str) -> set[str]:
        return {
            r[0]
            for r in self.db.query(
                "SELECT room_id FROM forgotten_rooms WHERE user_id = ?", (user_id,)
            )
        }


class RoomReads:
    """Read-only queries over the room engine's tables, for the client API.

    Only accepted events are timeline events: soft-failed events have a
    stream position too, but are never shown to clients.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def memberships(self, user_id: str) -> list[Membership]:
        """The user's current membership in every room that has one."""
        rows = self.db.query(
            """SELECT c.room_id, c.membership, e.event_id, e.stream_ordering
               FROM current_state c JOIN events e USING (event_nid)
               WHERE c.type = 'm.room.member' AND c.state_key = ? ORDER BY c.room_id""",
            (user_id,),
        )
        return [Membership(r[0], r[1] or "", r[2], r[3]) for r in rows]

    def rooms_changed(self, after: int, upto: int) -> set[str]:
        """Rooms with an accepted event in stream positions ``(after, upto]``."""
        return {
            r[0]
            for r in self.db.query(
                """SELECT DISTINCT room_id FROM events WHERE stream_ordering > ?
                   AND stream_ordering <= ? AND status = 'accepted'""",
                (after, upto),
            )
        }

    def room_events(
        self, room_id: str, *, after: int, before: int, limit: int, newest_first: bool
    ) -> list[tuple[str, int]]:
        """(event ID, stream position) of accepted events in ``(after, before)``."""
        order = "DESC" if newest_first else "ASC"
        rows = self.db.query(
            f"""SELECT event_id, stream_ordering FROM events WHERE room_id = ?
                AND stream_ordering > ? AND stream_ordering < ? AND status = 'accepted'
                ORDER BY stream_ordering {order} LIMIT ?""",
            (room_id, after, before, limit),
        )
        return [(r[0], r[1]) for r in rows]

    def last_event_at(self, room_id: str, position: int) -> str | None:
        """The room's last accepted event at or before stream position ``position``."""
        row = self.db.query_one(
            """SELECT event_id FROM events WHERE room_id = ? AND stream_ordering <= ?
               AND status = 'accepted' ORDER BY stream_ordering DESC LIMIT 1""",
            (room_id, position),
        )
        return row[0] if row else None

    def redaction_targets(self, event_ids: Iterable[str]) -> set[str]:
        """Those of ``event_ids`` that some accepted redaction targets."""
        ids = list(event_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            found.update(
                r[0]
                for r in self.db.query(
                    f"SELECT DISTINCT redacts FROM redactions WHERE redacts IN ({marks})", batch
                )
            )
        return found

    def latest_stream(self, room_id: str) -> int:
        """The stream position of the room's latest accepted event (0 if none)."""
        row = self.db.query_one(
            """SELECT MAX(stream_ordering) FROM events WHERE room_id = ?
               AND status = 'accepted'""",
            (room_id,),
        )
        return int(row[0]) if row and row[0] is not None else 0

    def members(self, room_id: str) -> list[tuple[str, str]]:
        """(user ID, membership) of every member in the room's current state."""
        return [
            (r[0], r[1] or "")
            for r in self.db.query(
                """SELECT state_key, membership FROM current_state WHERE room_id = ?
                   AND type = 'm.room.member' ORDER BY state_key""",
                (room_id,),
            )
        ]
