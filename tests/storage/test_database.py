from pathlib import Path

import apsw
import pytest

from p2pserver.storage.database import APPLICATION_ID, Database, SchemaTooNew, StorageError
from p2pserver.storage.schema import MIGRATIONS


def test_fresh_database_is_at_latest_version(tmp_path: Path) -> None:
    db = Database(tmp_path / "rooms.db")
    assert db.schema_version == len(MIGRATIONS)
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert db.query("PRAGMA application_id")[0][0] == APPLICATION_ID
    assert db.integrity_check() == []
    db.close()


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def step(n: int):
        def migrate(conn: apsw.Connection) -> None:
            calls.append(n)
            conn.execute(f"CREATE TABLE t{n} (x)")

        return migrate

    path = tmp_path / "rooms.db"
    Database(path, migrations=[step(1)]).close()
    db = Database(path, migrations=[step(1), step(2), step(3)])
    assert calls == [1, 2, 3]
    assert db.schema_version == 3
    db.close()
    Database(path, migrations=[step(1), step(2), step(3)]).close()
    assert calls == [1, 2, 3]


def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    def ok(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE a (x)")

    def broken(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE b (x)")
        raise RuntimeError("boom")

    path = tmp_path / "rooms.db"
    with pytest.raises(RuntimeError):
        Database(path, migrations=[ok, broken])
    db = Database(path, migrations=[ok])
    assert db.schema_version == 1
    assert db.query("SELECT name FROM sqlite_master WHERE name = 'b'") == []
    db.close()


def test_newer_database_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    Database(path).close()
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer p2pserver"):
        Database(path)


def test_foreign_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE x (y); PRAGMA user_version=3")
    conn.close()
    with pytest.raises(StorageError, match="not a p2pserver database"):
        Database(path)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError):
        Database(garbage)


def test_transaction_rolls_back_and_calls_hooks(tmp_path: Path) -> None:
    db = Database(tmp_path / "rooms.db", migrations=[lambda c: c.execute("CREATE TABLE t (x)")])
    hooks: list[str] = []
    db.on_rollback(lambda: hooks.append("rolled back"))
    with db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError), db.transaction():
        db.execute("INSERT INTO t VALUES (2)")
        raise ValueError
    assert db.query("SELECT x FROM t") == [(1,)]
    assert hooks == ["rolled back"]
    with pytest.raises(RuntimeError), db.transaction(), db.transaction():
        pass
    db.close()


def test_batch_groups_transactions_that_stay_atomic(tmp_path: Path) -> None:
    db = Database(tmp_path / "rooms.db", migrations=[lambda c: c.execute("CREATE TABLE t (x)")])
    hooks: list[str] = []
    db.on_rollback(lambda: hooks.append("rolled back"))
    with db.batch():
        with db.transaction():
            db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError), db.transaction():
            db.execute("INSERT INTO t VALUES (2)")
            raise ValueError
        with db.transaction():
            db.execute("INSERT INTO t VALUES (3)")
        # not committed yet: another connection sees nothing
        other = apsw.Connection(str(tmp_path / "rooms.db"))
        assert other.execute("SELECT COUNT(*) FROM t").fetchall() == [(0,)]
    assert other.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (3,)]
    assert hooks == ["rolled back"]
    with pytest.raises(KeyError), db.batch():
        with db.transaction():
            db.execute("INSERT INTO t VALUES (4)")
        raise KeyError
    assert db.query("SELECT x FROM t ORDER BY x") == [(1,), (3,)]
    with db.batch():
        pass  # an unused batch begins nothing
    assert db.conn.getautocommit()
    with pytest.raises(RuntimeError), db.batch(), db.batch():
        pass
    other.close()
    db.close()


def test_after_commit_callbacks_wait_for_the_commit_and_never_follow_a_rollback() -> None:
    db = Database()
    db.execute("CREATE TABLE t (x)")
    calls: list[str] = []

    def seen(name: str):  # the callback checks its row is committed
        def check() -> None:
            assert not db.in_transaction
            calls.append(name)

        return check

    db.call_after_commit(seen("outside"))  # nothing open: at once
    assert calls == ["outside"]
    with db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        db.call_after_commit(seen("committed"))
        assert calls == ["outside"]
    assert calls == ["outside", "committed"]
    with pytest.raises(RuntimeError), db.transaction():
        db.call_after_commit(seen("rolled back"))
        raise RuntimeError
    with db.batch():
        with db.transaction():
            db.call_after_commit(seen("batch 1"))
        with pytest.raises(RuntimeError), db.transaction():
            db.call_after_commit(seen("batch savepoint rolled back"))
            raise RuntimeError
        with db.transaction():
            db.call_after_commit(seen("batch 2"))
        assert calls == ["outside", "committed"]  # the batch has not committed yet
    assert calls == ["outside", "committed", "batch 1", "batch 2"]
    with pytest.raises(RuntimeError), db.batch():
        with db.transaction():
            db.call_after_commit(seen("batch rolled back"))
        raise RuntimeError

    def broken() -> None:
        raise ValueError("a failing callback is logged, not raised")

    with db.transaction():
        db.call_after_commit(broken)
        db.call_after_commit(seen("after a failing one"))
    assert calls == ["outside", "committed", "batch 1", "batch 2", "after a failing one"]
    db.close()
