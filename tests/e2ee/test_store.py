"""E2eeStore: keys, claims (exactly once, even from two connections), inboxes, backups."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserver.storage import Database, Store
from p2pserver.storage.accounts import AccountStore
from p2pserver.storage.e2ee import (
    RECEIVED_RETENTION_MS,
    BackupKey,
    E2eeStore,
    KeyConflict,
)
from p2pserver.storage.schema import MIGRATIONS

ALICE, BOB = "@alice:x", "@bob:x"
SIGNED = "signed_curve25519"


def store() -> E2eeStore:
    return E2eeStore(Store.open().db)


def otk(i: int) -> tuple[str, str, dict[str, str]]:
    return (SIGNED, f"K{i:04d}", {"key": f"key{i}"})


def test_migration_appended_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    e2ee = E2eeStore(Store.open(path).db)
    e2ee.add_one_time_keys(ALICE, "D", [otk(1)])
    e2ee.db.close()
    db = Database(path)
    assert db.schema_version == len(MIGRATIONS)
    assert E2eeStore(db).one_time_key_counts(ALICE, "D") == {SIGNED: 1}
    assert db.integrity_check() == []
    db.close()


def test_device_keys_changed_only_when_different() -> None:
    e2ee = store()
    keys = {"user_id": ALICE, "device_id": "D", "keys": {"ed25519:D": "a"}}
    assert e2ee.set_device_keys(ALICE, "D", keys)
    assert not e2ee.set_device_keys(ALICE, "D", dict(keys))
    assert e2ee.set_device_keys(ALICE, "D", keys | {"keys": {"ed25519:D": "b"}})
    assert e2ee.device_keys(ALICE) == {"D": keys | {"keys": {"ed25519:D": "b"}}}
    assert e2ee.device_keys(ALICE, ["other"]) == {}


def test_one_time_keys_conflict_and_counts() -> None:
    e2ee = store()
    e2ee.add_one_time_keys(ALICE, "D", [otk(1), otk(2), ("curve25519", "C1", "k")])
    e2ee.add_one_time_keys(ALICE, "D", [otk(1)])  # the same again: no-op
    with pytest.raises(KeyConflict):
        e2ee.add_one_time_keys(ALICE, "D", [otk(3), (SIGNED, "K0001", {"key": "changed"})])
    # All or nothing: K0003 of the failed upload is not there.
    assert e2ee.one_time_key_counts(ALICE, "D") == {SIGNED: 2, "curve25519": 1}


def test_claims_take_each_key_once_then_the_fallback() -> None:
    e2ee = store()
    e2ee.add_one_time_keys(ALICE, "D", [otk(1), otk(2)])
    e2ee.set_fallback_key(ALICE, "D", SIGNED, "F1", {"key": "fb", "fallback": True})
    assert e2ee.unused_fallback_key_types(ALICE, "D") == [SIGNED]
    claimed = [e2ee.claim_keys([(ALICE, "D", SIGNED)])[(ALICE, "D")] for _ in range(4)]
    assert [name for name, _ in claimed] == [
        f"{SIGNED}:K0001",
        f"{SIGNED}:K0002",
        f"{SIGNED}:F1",
        f"{SIGNED}:F1",
    ]
    assert e2ee.unused_fallback_key_types(ALICE, "D") == []
    # Re-uploading the same fallback key keeps it used; a new one is unused.
    e2ee.set_fallback_key(ALICE, "D", SIGNED, "F1", {"key": "fb", "fallback": True})
    assert e2ee.unused_fallback_key_types(ALICE, "D") == []
    e2ee.set_fallback_key(ALICE, "D", SIGNED, "F2", {"key": "fb2", "fallback": True})
    assert e2ee.unused_fallback_key_types(ALICE, "D") == [SIGNED]
    assert e2ee.claim_keys([(ALICE, "E", SIGNED), (BOB, "D", SIGNED)]) == {}


def test_concurrent_claims_from_two_connections_never_share_a_key(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    setup = E2eeStore(Store.open(path).db)
    keys = 300
    setup.add_one_time_keys(ALICE, "D", [otk(i) for i in range(keys)])
    setup.set_fallback_key(ALICE, "D", SIGNED, "FB", {"key": "fb"})
    setup.db.close()
    results: list[list[str]] = [[], [], []]
    barrier = threading.Barrier(len(results))
    errors: list[BaseException] = []

    def claimer(out: list[str]) -> None:
        try:
            db = Database(path)  # a connection of its own, as another process would have
            e2ee = E2eeStore(db)
            barrier.wait()
            for _ in range(keys // 2):
                name, _ = e2ee.claim_keys([(ALICE, "D", SIGNED)])[(ALICE, "D")]
                out.append(name)
            db.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    one_time = [n for r in results for n in r if not n.endswith(":FB")]
    assert len(one_time) == len(set(one_time)) == keys  # every key once, none twice
    fallbacks = [n for r in results for n in r if n.endswith(":FB")]
    assert len(fallbacks) == len(results) * (keys // 2) - keys


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["upload", "claim", "fallback"]), max_size=30))
def test_claims_model(ops: list[str]) -> None:
    """Against a model: a claim returns the lowest unclaimed key, else the fallback, never twice."""
    e2ee = store()
    available: list[str] = []
    fallback: str | None = None
    claimed: set[str] = set()
    n = 0
    for op in ops:
        if op == "upload":
            e2ee.add_one_time_keys(ALICE, "D", [otk(n)])
            available.append(f"K{n:04d}")
            n += 1
        elif op == "fallback":
            fallback = f"F{n}"
            e2ee.set_fallback_key(ALICE, "D", SIGNED, fallback, {"key": fallback})
            n += 1
        else:
            got = e2ee.claim_keys([(ALICE, "D", SIGNED)]).get((ALICE, "D"))
            if available:
                expected = available.pop(0)
                assert got is not None and got[0] == f"{SIGNED}:{expected}"
                assert expected not in claimed
                claimed.add(expected)
            elif fallback is not None:
                assert got is not None and got[0] == f"{SIGNED}:{fallback}"
            else:
                assert got is None
        assert e2ee.one_time_key_counts(ALICE, "D").get(SIGNED, 0) == len(available)


def test_inbox_positions_ack_and_account_stream() -> None:
    db = Store.open().db
    e2ee, accounts = E2eeStore(db), AccountStore(db)
    start = accounts.stream_position()
    last = e2ee.put_to_device(
        [(ALICE, "D", {"n": 1}), (ALICE, "E", {"n": 2}), (ALICE, "D", {"n": 3})]
    )
    assert last == start + 3 == accounts.stream_position()  # one shared stream
    accounts.set_account_data(ALICE, None, "x", {})
    assert e2ee.to_device_messages(ALICE, "D", after=0, upto=last, limit=10) == [
        (start + 1, {"n": 1}),
        (start + 3, {"n": 3}),
    ]
    assert e2ee.to_device_messages(ALICE, "D", after=start + 1, upto=last, limit=10) == [
        (start + 3, {"n": 3})
    ]
    assert e2ee.ack_to_device(ALICE, "D", start + 1) == 1
    assert e2ee.pending_to_device(ALICE, "D") == 1
    assert e2ee.pending_to_device(ALICE, "E") == 1
    assert e2ee.delete_device(ALICE, "E") is False  # no keys, but its inbox goes
    assert e2ee.pending_to_device(ALICE, "E") == 0


def test_received_ids_and_txn_ids_are_remembered() -> None:
    e2ee = store()
    assert e2ee.first_receipt("srv", "m1", 1000)
    assert not e2ee.first_receipt("srv", "m1", 2000)
    assert e2ee.first_receipt("other", "m1", 2000)
    # Old IDs are forgotten after the retention time.
    assert e2ee.first_receipt("srv", "m1", 1000 + RECEIVED_RETENTION_MS + 1)
    assert e2ee.record_to_device_txn(ALICE, "D", "t1", 1)
    assert not e2ee.record_to_device_txn(ALICE, "D", "t1", 2)
    assert e2ee.record_to_device_txn(ALICE, "E", "t1", 2)


def test_device_list_changes_and_stream_ids() -> None:
    e2ee = store()
    first = e2ee.record_device_list_change(ALICE, announced=True)
    assert e2ee.device_list_stream_id(ALICE) == first
    second = e2ee.record_device_list_change(ALICE)  # not announced: the stream ID stays
    assert e2ee.device_list_stream_id(ALICE) == first
    e2ee.record_device_list_change(BOB)
    assert e2ee.device_list_changes(0, second) == {ALICE}
    assert e2ee.device_list_changes(first, second + 1) == {ALICE, BOB}
    assert e2ee.device_list_changes(second + 1, second + 5) == set()
    assert e2ee.device_list_stream_id("@nobody:x") == 0


def test_remote_device_list_cache() -> None:
    e2ee = store()
    keys = {"user_id": BOB, "device_id": "B1", "keys": {}}
    e2ee.replace_remote_device_list(BOB, 7, [("B1", "phone", keys)], {"master": {"k": 1}})
    listed = e2ee.remote_device_list(BOB)
    assert listed is not None and listed.stream_id == 7 and not listed.stale
    assert listed.devices == {"B1": ("phone", keys)}
    assert e2ee.cross_signing_keys(BOB) == {"master": {"k": 1}}
    e2ee.update_remote_device(BOB, 8, "B2", display_name=None, keys=None, deleted=False)
    e2ee.update_remote_device(BOB, 9, "B1", display_name=None, keys=None, deleted=True)
    listed = e2ee.remote_device_list(BOB)
    assert listed is not None and listed.stream_id == 9 and set(listed.devices) == {"B2"}
    e2ee.mark_remote_stale([BOB, "@unknown:y"])
    assert e2ee.remote_device_list(BOB).stale  # type: ignore[union-attr]
    e2ee.forget_remote_device_list(BOB)
    assert e2ee.remote_device_list(BOB) is None and e2ee.cross_signing_keys(BOB) == {}


def test_backup_versions_and_keys() -> None:
    e2ee = store()
    assert e2ee.backup_version(ALICE) is None
    v1 = e2ee.create_backup(ALICE, "alg", {"public_key": "a"})
    v2 = e2ee.create_backup(ALICE, "alg", {"public_key": "b"})
    assert (v1, v2) == (1, 2)
    key = BackupKey(0, 0, False, {"ciphertext": "c"})
    e2ee.put_backup_keys(ALICE, v2, [("!r:x", "s1", key), ("!r:x", "s2", key)])
    current = e2ee.backup_version(ALICE)
    assert current is not None and (current.version, current.count, current.etag) == (2, 2, 1)
    e2ee.delete_backup_keys(ALICE, v2, "!r:x", "s1")
    e2ee.delete_backup_keys(ALICE, v2, "!r:x", "nothing")  # no change: etag stays
    current = e2ee.backup_version(ALICE)
    assert current is not None and (current.count, current.etag) == (1, 2)
    e2ee.delete_backup(ALICE, v2)
    assert e2ee.backup_version(ALICE).version == 1  # type: ignore[union-attr]
    assert e2ee.backup_version(ALICE, v2) is None and e2ee.backup_existed(ALICE, v2)
    assert e2ee.create_backup(ALICE, "alg", {}) == 3  # numbers are never reused
