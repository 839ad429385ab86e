"""End-to-end encryption: the tables and queries behind keys, to-device messages and backups.

This module owns one schema step (:func:`e2ee_v1`, appended to
:data:`p2pserver.storage.schema.MIGRATIONS`) and :class:`E2eeStore` over the
node's one database. The server never sees a plaintext or a private key:
it keeps what clients upload (public keys, signatures, encrypted to-device
messages, encrypted backups) and hands it out again. The protocol rules
(which key to keep, who may see what, what goes to which server) live in
the client API (:mod:`p2pserver.clientapi.keys`, :mod:`.todevice`,
:mod:`.devicelists`, :mod:`.backup`); storage records and answers.

Rules:
- Stream positions. To-device messages put in a local device's inbox and
  device-list changes take positions on the client API's *account stream*
  (the ``client_stream`` counter, taken through
  :meth:`p2pserver.storage.accounts.AccountStore.next_stream`, which account
  data and receipts use too), so one number in a /sync token says which of
  all of them a client has seen.
- A one-time key is handed out at most once: :meth:`E2eeStore.claim_keys`
  removes each key with one ``DELETE ... RETURNING`` inside ``BEGIN
  IMMEDIATE``, so two claims, even from two connections, never get the
  same key. With no one-time key left, the device's fallback key of that
  algorithm is returned (and marked used) instead; it stays until replaced.
- A to-device message stays in its device's inbox until the device
  acknowledges a /sync token at or past its position
  (:meth:`E2eeStore.ack_to_device`), then it is deleted.
- Messages from other servers are deduplicated by ``(origin, message_id)``
  (:meth:`E2eeStore.first_receipt`), kept for :data:`RECEIVED_RETENTION_MS`,
  so a transaction retried after a crash of either side delivers nothing
  twice. Client retries are deduplicated by transaction ID
  (:meth:`E2eeStore.record_to_device_txn`).
- Writes open their own transaction unless the caller holds one (as in
  :mod:`p2pserver.storage.accounts`), so a caller can make several of them,
  and its outbound EDUs, one atomic unit with :meth:`E2eeStore.atomic`.

Theory of the tables (schema step ``e2ee_v1``):
- ``e2e_device_keys``: the identity keys a local device uploaded (JSON,
  with the self-signing signatures merged in).
- ``e2e_one_time_keys``, ``e2e_fallback_keys``: per local device and
  algorithm; a fallback key carries ``used``.
- ``e2e_cross_signing_keys``: master, self-signing and user-signing keys of
  local users, and the master and self-signing keys cached for remote
  users whose device list is cached.
- ``e2e_signatures``: a user's signatures of *another* user's master key
  (made with their user-signing key), which only the signer may see.
- ``e2e_device_list_changes``: per user (local or remote), the stream
  position of the last change of their devices or cross-signing keys, and
  for a local user the ``stream_id`` of the last ``m.device_list_update``
  EDU about them (the position of the change it announced; 0 if none).
- ``e2e_remote_device_lists`` and ``e2e_remote_devices``: the cached device
  lists of remote users (``stream_id`` of the last update applied, and
  whether the cache is ``stale`` and must be fetched again).
- ``e2e_device_inbox``: to-device messages waiting for a local device, by
  stream position.
- ``e2e_to_device_txns``: client transaction IDs of sendToDevice.
- ``e2e_received_messages``: ``message_id`` of to-device EDUs received.
- ``e2e_backup_versions`` and ``e2e_backup_keys``: server-side key backup;
  a version's ``etag`` counts the changes of its keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apsw

from p2pserver.storage.accounts import AccountStore

if TYPE_CHECKING:  # database.py imports schema.py, which imports this module
    from p2pserver.storage.database import Database

__all__ = [
    "CROSS_SIGNING_TYPES",
    "RECEIVED_RETENTION_MS",
    "BackupKey",
    "BackupVersion",
    "E2eeStore",
    "KeyConflict",
    "RemoteDeviceList",
    "e2ee_v1",
]

CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")
# How long a received to-device message ID is remembered (duplicates come
# from retries after a crash, which the sender makes as soon as it is back).
RECEIVED_RETENTION_MS = 90 * 24 * 3600 * 1000

_E2EE_V1 = """
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
) WITHOUT ROWID;

CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
) WITHOUT ROWID;

CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL CHECK (key_type IN ('master', 'self_signing', 'user_signing')),
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
) WITHOUT ROWID;

CREATE TABLE e2e_signatures (
    signer TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (signer, target_user_id, target_key_id, key_id)
) WITHOUT ROWID;

CREATE TABLE e2e_device_list_changes (
    user_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    stream_id INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX e2e_device_list_changes_position ON e2e_device_list_changes(position);

CREATE TABLE e2e_remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id INTEGER NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE e2e_remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    key_json TEXT,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE e2e_device_inbox (
    position INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    message_json TEXT NOT NULL
);
CREATE INDEX e2e_device_inbox_device ON e2e_device_inbox(user_id, device_id, position);

CREATE TABLE e2e_to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
) WITHOUT ROWID;

CREATE TABLE e2e_received_messages (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, message_id)
) WITHOUT ROWID;
CREATE INDEX e2e_received_messages_ts ON e2e_received_messages(received_ts);

CREATE TABLE e2e_backup_versions (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
) WITHOUT ROWID;

CREATE TABLE e2e_backup_keys (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count INTEGER NOT NULL,
    is_verified INTEGER NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
) WITHOUT ROWID;
"""


def e2ee_v1(conn: apsw.Connection) -> None:
    """Schema step: the end-to-end encryption tables (see the module docstring)."""
    conn.execute(_E2EE_V1)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class KeyConflict(Exception):
    """A one-time key ID is already stored with different contents."""


@dataclass(frozen=True, slots=True)
class RemoteDeviceList:
    user_id: str
    stream_id: int
    stale: bool
    # device ID -> (display name, device keys or None)
    devices: Mapping[str, tuple[str | None, dict[str, Any] | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BackupVersion:
    user_id: str
    version: int
    algorithm: str
    auth_data: dict[str, Any]
    etag: int
    count: int


@dataclass(frozen=True, slots=True)
class BackupKey:
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        }


class E2eeStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._accounts = AccountStore(db)  # its stream counter, shared with us

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction, unless the caller already holds one."""
        if self.db.in_transaction:
            yield
        else:
            with self.db.transaction():
                yield

    def _take_positions(self, count: int) -> int:
        """Take ``count`` positions on the account stream; returns the last one."""
        return self._accounts.next_stream(count)

    # -- device keys (local devices) -------------------------------------------

    def device_keys(
        self, user_id: str, device_ids: Sequence[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """device ID -> uploaded device keys (all devices when ``device_ids`` is empty)."""
        rows = self.db.query(
            "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = ? ORDER BY device_id",
            (user_id,),
        )
        wanted = set(device_ids)
        return {d: json.loads(k) for d, k in rows if not wanted or d in wanted}

    def set_device_keys(self, user_id: str, device_id: str, keys: Mapping[str, Any]) -> bool:
        """Store a device's identity keys; True if they are new or differ from the stored ones."""
        text = _dumps(keys)
        with self.atomic():
            row = self.db.query_one(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )
            if row is not None and json.loads(row[0]) == keys:
                return False
            self.db.execute(
                "INSERT OR REPLACE INTO e2e_device_keys (user_id, device_id, key_json) "
                "VALUES (?, ?, ?)",
                (user_id, device_id, text),
            )
        return True

    def delete_device(self, user_id: str, device_id: str) -> bool:
        """Forget everything of a deleted device; True if it had identity keys."""
        with self.atomic():
            had_keys = (
                self.db.query_one(
                    "SELECT 1 FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id),
                )
                is not None
            )
            for table in (
                "e2e_device_keys",
                "e2e_one_time_keys",
                "e2e_fallback_keys",
                "e2e_device_inbox",
                "e2e_to_device_txns",
            ):
                self.db.execute(
                    f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id),
                )
        return had_keys

    # -- one-time and fallback keys --------------------------------------------

    def add_one_time_keys(
        self, user_id: str, device_id: str, keys: Iterable[tuple[str, str, Any]]
    ) -> None:
        """Add ``(algorithm, key_id, key)`` one-time keys.

        Re-uploading a stored key unchanged is a no-op; the same ID with other
        contents raises :class:`KeyConflict` and stores none of ``keys``.
        """
        with self.atomic():
            for algorithm, key_id, key in keys:
                row = self.db.query_one(
                    """SELECT key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?
                       AND algorithm = ? AND key_id = ?""",
                    (user_id, device_id, algorithm, key_id),
                )
                if row is not None:
                    if json.loads(row[0]) != key:
                        raise KeyConflict(f"one-time key {algorithm}:{key_id} already exists")
                    continue
                self.db.execute(
                    """INSERT INTO e2e_one_time_keys
                       (user_id, device_id, algorithm, key_id, key_json) VALUES (?, ?, ?, ?, ?)""",
                    (user_id, device_id, algorithm, key_id, _dumps(key)),
                )

    def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = self.db.query(
            """SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ?
               AND device_id = ? GROUP BY algorithm""",
            (user_id, device_id),
        )
        return {r[0]: int(r[1]) for r in rows}

    def set_fallback_key(
        self, user_id: str, device_id: str, algorithm: str, key_id: str, key: Any
    ) -> None:
        """Replace the device's fallback key of ``algorithm`` (unused again unless unchanged)."""
        with self.atomic():
            row = self.db.query_one(
                """SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ?
                   AND device_id = ? AND algorithm = ?""",
                (user_id, device_id, algorithm),
            )
            if row is not None and row[0] == key_id and json.loads(row[1]) == key:
                return
            self.db.execute(
                """INSERT OR REPLACE INTO e2e_fallback_keys
                   (user_id, device_id, algorithm, key_id, key_json, used) VALUES (?, ?, ?, ?, ?, 0)""",
                (user_id, device_id, algorithm, key_id, _dumps(key)),
            )

    def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        return [
            r[0]
            for r in self.db.query(
                """SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?
                   AND used = 0 ORDER BY algorithm""",
                (user_id, device_id),
            )
        ]

    def claim_keys(
        self, requests: Iterable[tuple[str, str, str]]
    ) -> dict[tuple[str, str], tuple[str, Any]]:
        """Claim one key per ``(user_id, device_id, algorithm)``.

        Returns ``(user_id, device_id) -> ("<algorithm>:<key_id>", key)``: a
        one-time key, removed as it is taken, else the fallback key (marked
        used). Devices with neither are left out. One transaction for all.
        """
        out: dict[tuple[str, str], tuple[str, Any]] = {}
        with self.atomic():
            for user_id, device_id, algorithm in requests:
                rows = self.db.query(
                    """DELETE FROM e2e_one_time_keys
                       WHERE (user_id, device_id, algorithm, key_id) = (
                           SELECT user_id, device_id, algorithm, key_id FROM e2e_one_time_keys
                           WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                           ORDER BY key_id LIMIT 1)
                       RETURNING key_id, key_json""",
                    (user_id, device_id, algorithm),
                )
                if not rows:
                    rows = self.db.query(
                        """UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ?
                           AND device_id = ? AND algorithm = ? RETURNING key_id, key_json""",
                        (user_id, device_id, algorithm),
                    )
                if rows:
                    key_id, key_json = rows[0]
                    out[(user_id, device_id)] = (f"{algorithm}:{key_id}", json.loads(key_json))
        return out

    # -- cross-signing keys and signatures -------------------------------------

    def cross_signing_keys(self, user_id: str) -> dict[str, dict[str, Any]]:
        """key type (master, self_signing, user_signing) -> key JSON."""
        rows = self.db.query(
            "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,)
        )
        return {r[0]: json.loads(r[1]) for r in rows}

    def set_cross_signing_key(self, user_id: str, key_type: str, key: Mapping[str, Any]) -> None:
        if key_type not in CROSS_SIGNING_TYPES:
            raise ValueError(f"unknown cross-signing key type {key_type!r}")
        with self.atomic():
            self.db.execute(
                "INSERT OR REPLACE INTO e2e_cross_signing_keys (user_id, key_type, key_json) "
                "VALUES (?, ?, ?)",
                (user_id, key_type, _dumps(key)),
            )

    def add_signature(
        self, signer: str, target_user_id: str, target_key_id: str, key_id: str, signature: str
    ) -> None:
        """Keep ``signer``'s signature of another user's key (seen by ``signer`` only)."""
        with self.atomic():
            self.db.execute(
                """INSERT OR REPLACE INTO e2e_signatures
                   (signer, target_user_id, target_key_id, key_id, signature)
                   VALUES (?, ?, ?, ?, ?)""",
                (signer, target_user_id, target_key_id, key_id, signature),
            )

    def signatures_by(self, signer: str, target_user_id: str) -> dict[str, dict[str, str]]:
        """target key ID -> {signing key ID: signature} made by ``signer``."""
        out: dict[str, dict[str, str]] = {}
        for target_key_id, key_id, signature in self.db.query(
            """SELECT target_key_id, key_id, signature FROM e2e_signatures
               WHERE signer = ? AND target_user_id = ?""",
            (signer, target_user_id),
        ):
            out.setdefault(target_key_id, {})[key_id] = signature
        return out

    # -- device-list changes ---------------------------------------------------

    def record_device_list_change(self, user_id: str, *, announced: bool = False) -> int:
        """A change of the user's devices or cross-signing keys; returns its position.

        ``announced``: the change is announced by an ``m.device_list_update``
        whose ``stream_id`` is that position (see :meth:`device_list_stream_id`).
        """
        with self.atomic():
            position = self._take_positions(1)
            self.db.execute(
                """INSERT INTO e2e_device_list_changes (user_id, position, stream_id)
                   VALUES (?1, ?2, CASE WHEN ?3 THEN ?2 ELSE 0 END)
                   ON CONFLICT (user_id) DO UPDATE SET position = ?2,
                   stream_id = CASE WHEN ?3 THEN ?2 ELSE stream_id END""",
                (user_id, position, announced),
            )
        return position

    def device_list_stream_id(self, user_id: str) -> int:
        """The ``stream_id`` of the last ``m.device_list_update`` about the user (0 if none)."""
        row = self.db.query_one(
            "SELECT stream_id FROM e2e_device_list_changes WHERE user_id = ?", (user_id,)
        )
        return int(row[0]) if row else 0

    def device_list_changes(self, after: int, upto: int) -> set[str]:
        """Users whose last device-list change is in positions ``(after, upto]``."""
        return {
            r[0]
            for r in self.db.query(
                """SELECT user_id FROM e2e_device_list_changes WHERE position > ?
                   AND position <= ?""",
                (after, upto),
            )
        }

    def rooms_with_membership_changes(self, after: int, upto: int) -> set[str]:
        """Rooms with an accepted member or encryption event in stream positions ``(after, upto]``.

        A read of the room engine's ``events`` table, like
        :class:`p2pserver.storage.accounts.RoomReads`.
        """
        return {
            r[0]
            for r in self.db.query(
                """SELECT DISTINCT room_id FROM events WHERE stream_ordering > ?
                   AND stream_ordering <= ? AND status = 'accepted'
                   AND type IN ('m.room.member', 'm.room.encryption')""",
                (after, upto),
            )
        }

    # -- remote device lists ---------------------------------------------------

    def remote_device_list(self, user_id: str) -> RemoteDeviceList | None:
        row = self.db.query_one(
            "SELECT stream_id, stale FROM e2e_remote_device_lists WHERE user_id = ?", (user_id,)
        )
        if row is None:
            return None
        devices = {
            d: (name, json.loads(keys) if keys is not None else None)
            for d, name, keys in self.db.query(
                """SELECT device_id, display_name, key_json FROM e2e_remote_devices
                   WHERE user_id = ? ORDER BY device_id""",
                (user_id,),
            )
        }
        return RemoteDeviceList(user_id, int(row[0]), bool(row[1]), devices)

    def replace_remote_device_list(
        self,
        user_id: str,
        stream_id: int,
        devices: Iterable[tuple[str, str | None, Mapping[str, Any] | None]],
        cross_signing: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Cache a snapshot of a remote user's devices ``(device_id, name, keys)``
        and cross-signing keys (type -> key), replacing what was cached."""
        with self.atomic():
            self.forget_remote_device_list(user_id)
            self.db.execute(
                "INSERT INTO e2e_remote_device_lists (user_id, stream_id, stale) VALUES (?, ?, 0)",
                (user_id, stream_id),
            )
            self.db.executemany(
                """INSERT OR REPLACE INTO e2e_remote_devices
                   (user_id, device_id, display_name, key_json) VALUES (?, ?, ?, ?)""",
                [
                    (user_id, d, name, _dumps(keys) if keys is not None else None)
                    for d, name, keys in devices
                ],
            )
            for key_type, key in cross_signing.items():
                self.set_cross_signing_key(user_id, key_type, key)

    def update_remote_device(
        self,
        user_id: str,
        stream_id: int,
        device_id: str,
        *,
        display_name: str | None,
        keys: Mapping[str, Any] | None,
        deleted: bool,
    ) -> None:
        """Apply one ``m.device_list_update`` to a cached device list."""
        with self.atomic():
            if deleted:
                self.db.execute(
                    "DELETE FROM e2e_remote_devices WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id),
                )
            else:
                self.db.execute(
                    """INSERT OR REPLACE INTO e2e_remote_devices
                       (user_id, device_id, display_name, key_json) VALUES (?, ?, ?, ?)""",
                    (user_id, device_id, display_name, _dumps(keys) if keys is not None else None),
                )
            self.db.execute(
                "UPDATE e2e_remote_device_lists SET stream_id = ? WHERE user_id = ?",
                (stream_id, user_id),
            )

    def mark_remote_stale(self, user_ids: Iterable[str]) -> None:
        with self.atomic():
            self.db.executemany(
                "UPDATE e2e_remote_device_lists SET stale = 1 WHERE user_id = ?",
                [(u,) for u in user_ids],
            )

    def forget_remote_device_list(self, user_id: str) -> None:
        with self.atomic():
            for table in (
                "e2e_remote_device_lists",
                "e2e_remote_devices",
                "e2e_cross_signing_keys",
            ):
                self.db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))

    # -- to-device messages ----------------------------------------------------

    def record_to_device_txn(self, user_id: str, device_id: str, txn_id: str, now: int) -> bool:
        """Remember a sendToDevice transaction ID; False if it was already used."""
        with self.atomic():
            self.db.execute(
                """INSERT OR IGNORE INTO e2e_to_device_txns (user_id, device_id, txn_id, ts)
                   VALUES (?, ?, ?, ?)""",
                (user_id, device_id, txn_id, now),
            )
            return self.db.conn.changes() == 1

    def first_receipt(self, origin: str, message_id: str, now: int) -> bool:
        """Remember a to-device EDU's ID; False if it was received before."""
        with self.atomic():
            self.db.execute(
                "DELETE FROM e2e_received_messages WHERE received_ts < ?",
                (now - RECEIVED_RETENTION_MS,),
            )
            self.db.execute(
                """INSERT OR IGNORE INTO e2e_received_messages (origin, message_id, received_ts)
                   VALUES (?, ?, ?)""",
                (origin, message_id, now),
            )
            return self.db.conn.changes() == 1

    def put_to_device(self, messages: Sequence[tuple[str, str, Mapping[str, Any]]]) -> int:
        """Put ``(user_id, device_id, message)`` in local inboxes; returns the last position."""
        if not messages:
            return 0
        with self.atomic():
            last = self._take_positions(len(messages))
            first = last - len(messages) + 1
            self.db.executemany(
                """INSERT INTO e2e_device_inbox (position, user_id, device_id, message_json)
                   VALUES (?, ?, ?, ?)""",
                [(first + i, u, d, _dumps(m)) for i, (u, d, m) in enumerate(messages)],
            )
        return last

    def to_device_messages(
        self, user_id: str, device_id: str, *, after: int, upto: int, limit: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(position, message)`` for the device in positions ``(after, upto]``, oldest first."""
        rows = self.db.query(
            """SELECT position, message_json FROM e2e_device_inbox WHERE user_id = ?
               AND device_id = ? AND position > ? AND position <= ? ORDER BY position LIMIT ?""",
            (user_id, device_id, after, upto, limit),
        )
        return [(int(p), json.loads(m)) for p, m in rows]

    def ack_to_device(self, user_id: str, device_id: str, upto: int) -> int:
        """Delete the device's messages at positions up to ``upto``; returns how many."""
        with self.atomic():
            self.db.execute(
                """DELETE FROM e2e_device_inbox WHERE user_id = ? AND device_id = ?
                   AND position <= ?""",
                (user_id, device_id, upto),
            )
            return int(self.db.conn.changes())

    def pending_to_device(self, user_id: str, device_id: str) -> int:
        row = self.db.query_one(
            "SELECT COUNT(*) FROM e2e_device_inbox WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        )
        return int(row[0]) if row else 0

    # -- server-side key backup ------------------------------------------------

    def create_backup(self, user_id: str, algorithm: str, auth_data: Mapping[str, Any]) -> int:
        """A new backup version (numbers are never reused); it becomes the current one."""
        with self.atomic():
            row = self.db.query_one(
                "SELECT MAX(version) FROM e2e_backup_versions WHERE user_id = ?", (user_id,)
            )
            version = 1 if row is None or row[0] is None else int(row[0]) + 1
            self.db.execute(
                """INSERT INTO e2e_backup_versions (user_id, version, algorithm, auth_data)
                   VALUES (?, ?, ?, ?)""",
                (user_id, version, algorithm, _dumps(auth_data)),
            )
        return version

    def backup_version(self, user_id: str, version: int | None = None) -> BackupVersion | None:
        """A live backup version, or the current (latest live) one when ``version`` is None."""
        sql = """SELECT v.version, v.algorithm, v.auth_data, v.etag,
                   (SELECT COUNT(*) FROM e2e_backup_keys k
                    WHERE k.user_id = v.user_id AND k.version = v.version)
                 FROM e2e_backup_versions v WHERE v.user_id = ? AND v.deleted = 0"""
        if version is None:
            row = self.db.query_one(sql + " ORDER BY v.version DESC LIMIT 1", (user_id,))
        else:
            row = self.db.query_one(sql + " AND v.version = ?", (user_id, version))
        if row is None:
            return None
        return BackupVersion(
            user_id, int(row[0]), row[1], json.loads(row[2]), int(row[3]), int(row[4])
        )

    def backup_existed(self, user_id: str, version: int) -> bool:
        """Whether the version was ever created (deleted or not)."""
        return (
            self.db.query_one(
                "SELECT 1 FROM e2e_backup_versions WHERE user_id = ? AND version = ?",
                (user_id, version),
            )
            is not None
        )

    def update_backup(self, user_id: str, version: int, auth_data: Mapping[str, Any]) -> None:
        with self.atomic():
            self.db.execute(
                """UPDATE e2e_backup_versions SET auth_data = ? WHERE user_id = ?
                   AND version = ? AND deleted = 0""",
                (_dumps(auth_data), user_id, version),
            )

    def delete_backup(self, user_id: str, version: int) -> None:
        """Mark the version deleted and drop its keys."""
        with self.atomic():
            self.db.execute(
                "UPDATE e2e_backup_versions SET deleted = 1 WHERE user_id = ? AND version = ?",
                (user_id, version),
            )
            self.db.execute(
                "DELETE FROM e2e_backup_keys WHERE user_id = ? AND version = ?",
                (user_id, version),
            )

    def backup_keys(
        self,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, dict[str, BackupKey]]:
        """room ID -> session ID -> key, for the whole version, one room or one session."""
        sql = """SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                   session_data FROM e2e_backup_keys WHERE user_id = ? AND version = ?"""
        args: list[Any] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
        out: dict[str, dict[str, BackupKey]] = {}
        for room, session, first, forwarded, verified, data in self.db.query(sql, args):
            out.setdefault(room, {})[session] = BackupKey(
                int(first), int(forwarded), bool(verified), json.loads(data)
            )
        return out

    def put_backup_keys(
        self, user_id: str, version: int, keys: Iterable[tuple[str, str, BackupKey]]
    ) -> None:
        """Store ``(room_id, session_id, key)``, replacing; bumps the etag if any was given."""
        rows = [
            (
                user_id,
                version,
                room,
                session,
                k.first_message_index,
                k.forwarded_count,
                int(k.is_verified),
                _dumps(k.session_data),
            )
            for room, session, k in keys
        ]
        if not rows:
            return
        with self.atomic():
            self.db.executemany(
                """INSERT OR REPLACE INTO e2e_backup_keys (user_id, version, room_id, session_id,
                   first_message_index, forwarded_count, is_verified, session_data)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                rows,
            )
            self._bump_etag(user_id, version)

    def delete_backup_keys(
        self,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        """Delete a version's keys: all, one room's, or one session's."""
        sql = "DELETE FROM e2e_backup_keys WHERE user_id = ? AND version = ?"
        args: list[Any] = [user_id, version]
        if room_id is not None:
            sql += " AND room_id = ?"
            args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
        with self.atomic():
            self.db.execute(sql, args)
            if self.db.conn.changes():
                self._bump_etag(user_id, version)

    def _bump_etag(self, user_id: str, version: int) -> None:
        self.db.execute(
            "UPDATE e2e_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?",
            (user_id, version),
        )
