"""One SQLite database per node: opening, pragmas, transactions, migrations.

Rules:
- The database lives in the node's data directory (``rooms.db``) and is
  opened through apsw, synchronously: it is local and fast, and the room
  engine only awaits when it talks to peers.
- Journal mode is WAL. ``synchronous=NORMAL`` (the default here) survives
  any crash of the process, including SIGKILL, because a commit has been
  written to the WAL file before :meth:`Database.transaction` returns; only
  a power cut can lose the last commits, and never consistency. Pass
  ``durable=True`` for ``synchronous=FULL`` (an fsync per commit).
- Every write happens inside :meth:`Database.transaction` (``BEGIN
  IMMEDIATE`` ... ``COMMIT``), so an event and everything derived from it
  commit together or not at all. A failed transaction rolls back and calls
  the registered rollback hooks, which drop in-memory caches that might now
  describe rows that were never committed. :meth:`Database.batch` groups
  the transactions of a synchronous stretch into one commit (each one a
  savepoint, still all or nothing on its own).
  :meth:`Database.call_after_commit` defers a callback (waking a task that
  reads the new rows) until the writes it follows are committed.
- The schema is versioned with ``PRAGMA user_version``; the database is
  marked as ours with ``PRAGMA application_id``. :data:`MIGRATIONS` (in
  :mod:`p2pserver.storage.schema`) holds one step per version, each applied
  in its own transaction together with the version bump. A database whose
  version is newer than the code knows refuses to open with
  :class:`SchemaTooNew` instead of guessing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from p2pserver.storage.schema import MIGRATIONS, Migration

logger = logging.getLogger(__name__)

DATABASE_FILE_NAME = "rooms.db"
# "p2ps" in ASCII: identifies our database files (PRAGMA application_id).
APPLICATION_ID = 0x70327073


class StorageError(Exception):
    """The database cannot be used (wrong file, newer schema, corruption)."""


class SchemaTooNew(StorageError):
    pass


class Database:
    """An apsw connection with our pragmas, transactions and migrations applied."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durable: bool = False,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        """Open (creating if needed) the database at ``path``; None is in-memory."""
        self.path = ":memory:" if path is None else os.fspath(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = apsw.Connection(self.path)
            self.conn.setbusytimeout(5000)
            # Fail early on a file that is not a SQLite database at all.
            self.conn.execute("PRAGMA schema_version").fetchall()
        except apsw.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        self._rollback_hooks: list[Callable[[], None]] = []
        # Callbacks waiting for the open transaction (or batch) to commit.
        self._after_commit: list[Callable[[], None]] = []
        self._in_transaction = False
        # None: no batch; False: a batch is open but has not begun; True: begun.
        self._batch: bool | None = None
        try:
            self._configure(durable)
            self._migrate(migrations)
        except BaseException:
            self.conn.close()
            raise

    def _configure(self, durable: bool) -> None:
        if self.path != ":memory:":
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL (got {mode})")
        self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        # Checkpoint the WAL every ~16 MiB rather than every 4 MiB: fewer
        # fsyncs of the main file under a steady stream of small commits.
        self.conn.execute("PRAGMA wal_autocheckpoint=4000")

    # -- migrations -----------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        latest = len(migrations)
        app_id = int(self.query("PRAGMA application_id")[0][0])
        version = self.schema_version
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and version != 0):
            raise StorageError(f"{self.path} is not a p2pserver database")
        if version > latest:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}, but this p2pserver only "
                f"knows versions up to {latest}: it was written by a newer p2pserver. "
                "Upgrade p2pserver to open it (downgrading a database is not supported)."
            )
        for target in range(version + 1, latest + 1):
            with self.transaction():
                if target == 1:
                    self.conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                migrations[target - 1](self.conn)
                self.conn.execute(f"PRAGMA user_version={target}")

    # -- transactions ---------------------------------------------------------

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever a transaction rolls back (to drop caches)."""
        self._rollback_hooks.append(hook)

    def call_after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what was written so far is committed (at once outside a transaction).

        Inside a transaction, or a batch, it waits for the commit; it is
        dropped if that transaction (or the batch's savepoint it belongs
        to) rolls back. For waking whoever acts on the new rows: it must be
        quick and must not write; an exception in it is logged.
        """
        if self._in_transaction or self._batch:
            self._after_commit.append(callback)
        else:
            _call(callback)

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception.

        Not reentrant: one transaction is one atomic unit of the engine.
        Inside :meth:`batch` it is a savepoint instead: it is still all or
        nothing, and becomes durable when the batch commits.
        """
        if self._in_transaction:
            raise RuntimeError("transactions do not nest")
        if self._batch is not None:
            with self._savepoint():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            self._rollback("ROLLBACK")
            raise
        else:
            self._in_transaction = False
            self._commit()
        self._run_after_commit()

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        if not self._batch:
            self.conn.execute("BEGIN IMMEDIATE")
            self._batch = True
        self.conn.execute("SAVEPOINT unit")
        self._in_transaction = True
        waiting = len(self._after_commit)
        try:
            yield
        except BaseException:
            self._in_transaction = False
            del self._after_commit[waiting:]
            self._rollback("ROLLBACK TO unit")
            self.conn.execute("RELEASE unit")
            raise
        else:
            self._in_transaction = False
            self.conn.execute("RELEASE unit")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the transactions made inside into one commit (group commit).

        For a synchronous stretch of work only: no other task may write
        while a batch is open, since its writes would wait for this commit.
        Each :meth:`transaction` inside stays atomic on its own (a
        savepoint); an exception escaping the batch rolls all of it back.
        ``BEGIN`` is issued lazily, so an unused batch costs nothing.
        """
        if self._batch is not None or self._in_transaction:
            raise RuntimeError("a batch cannot be opened inside a transaction or batch")
        self._batch = False  # open, nothing begun yet
        try:
            yield
        except BaseException:
            begun, self._batch = self._batch, None
            if begun:
                self._rollback("ROLLBACK")
            raise
        else:
            begun, self._batch = self._batch, None
            if begun:
                self._commit()
                self._run_after_commit()

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            if not self.conn.getautocommit():
                self._rollback("ROLLBACK")
            else:
                self._run_rollback_hooks()
            raise

    def _rollback(self, statement: str) -> None:
        try:
            self.conn.execute(statement)
        finally:
            self._run_rollback_hooks()

    def _run_rollback_hooks(self) -> None:
        if not self._batch:  # all of it rolled back (a savepoint drops its own callbacks)
            self._after_commit.clear()
        for hook in self._rollback_hooks:
            hook()

    def _run_after_commit(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            _call(callback)

    # -- queries --------------------------------------------------------------

    def execute(self, sql: str, bindings: Sequence[Any] | dict[str, Any] = ()) -> apsw.Cursor:
        return self.conn.execute(sql, bindings)

    def executemany(
        self, sql: str, rows: Sequence[Sequence[Any]] | Iterator[Sequence[Any]]
    ) -> None:
        self.conn.executemany(sql, rows)

    def query(
        self, sql: str, bindings: Sequence[Any] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, bindings).fetchall()

    def query_one(
        self, sql: str, bindings: Sequence[Any] | dict[str, Any] = ()
    ) -> tuple[Any, ...] | None:
        for row in self.conn.execute(sql, bindings):
            return tuple(row)
        return None

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` and foreign-key check; [] when healthy."""
        problems = [str(r[0]) for r in self.query("PRAGMA integrity_check")]
        if problems == ["ok"]:
            problems = []
        problems += [f"foreign key violation: {r}" for r in self.query("PRAGMA foreign_key_check")]
        return problems

    def close(self) -> None:
        self.conn.close()


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("after-commit callback %r failed", callback)


def chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """Split ``items`` so an ``IN (...)`` list stays under SQLite's variable limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(count: int) -> str:
    return ",".join("?" * count)
