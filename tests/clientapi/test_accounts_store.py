"""AccountStore and the accounts migration on the node's one database."""

from __future__ import annotations

import pytest

from p2pserver.clientapi.passwords import check_password, hash_password
from p2pserver.clientapi.server import hash_token
from p2pserver.storage import Database, Store
from p2pserver.storage.accounts import AccountStore, AliasInUse, UserExists
from p2pserver.storage.schema import MIGRATIONS


def test_migration_appended_and_reopen(tmp_path) -> None:
    path = tmp_path / "rooms.db"
    store = Store.open(path)
    accounts = AccountStore(store.db)
    accounts.create_user("@a:x", "hash", 1)
    accounts.add_device("@a:x", "D1", "phone", hash_token("secret"), 2)
    store.close()
    db = Database(path)
    assert db.schema_version == len(MIGRATIONS)
    again = AccountStore(db)
    assert again.token_owner(hash_token("secret")) == ("@a:x", "D1")
    assert db.integrity_check() == []
    db.close()


def test_users_devices_tokens() -> None:
    accounts = AccountStore(Store.open().db)
    accounts.create_user("@a:x", None, 1)
    with pytest.raises(UserExists):
        accounts.create_user("@a:x", None, 1)
    accounts.add_device("@a:x", "D1", "phone", b"t1", 2)
    accounts.add_device("@a:x", "D1", None, b"t2", 3)  # a new login on the device
    assert accounts.token_owner(b"t1") is None
    assert accounts.token_owner(b"t2") == ("@a:x", "D1")
    assert accounts.device("@a:x", "D1").display_name == "phone"
    accounts.record_txn("@a:x", "D1", "txn", "$e", 4)
    accounts.delete_devices("@a:x", ["D1"])
    assert accounts.devices("@a:x") == []
    assert accounts.token_owner(b"t2") is None
    assert accounts.txn_event("@a:x", "D1", "txn") is None


def test_account_stream_orders_account_data_and_receipts() -> None:
    accounts = AccountStore(Store.open().db)
    first = accounts.set_account_data("@a:x", None, "t", {"v": 1})
    second = accounts.set_receipt("!r:x", "m.read", "@a:x", None, "$e", 5)
    third = accounts.set_account_data("@a:x", "!r:x", "t", {"v": 2})
    assert first < second < third == accounts.stream_position()
    assert accounts.account_data_since("@a:x", first) == [("!r:x", "t", {"v": 2})]
    assert [r.event_id for r in accounts.receipts("!r:x", first)] == ["$e"]
    assert accounts.receipts("!r:x", second) == []


def test_filters_aliases_directory_forgotten_search() -> None:
    accounts = AccountStore(Store.open().db)
    assert accounts.add_filter("@a:x", {"room": {}}) == 0
    assert accounts.add_filter("@a:x", {}) == 1
    assert accounts.filter("@a:x", 0) == {"room": {}}
    assert accounts.filter("@b:x", 0) is None
    accounts.create_alias("#a:x", "!r:x", "@a:x")
    with pytest.raises(AliasInUse):
        accounts.create_alias("#a:x", "!s:x", "@a:x")
    assert accounts.alias("#a:x") == ("!r:x", "@a:x")
    accounts.set_room_visibility("!r:x", "public")
    assert accounts.public_room_ids() == ["!r:x"]
    accounts.set_forgotten("@a:x", "!r:x", True)
    assert accounts.forgotten_rooms("@a:x") == {"!r:x"}
    accounts.create_user("@under_score:x", None, 1)
    accounts.create_user("@percent:x", None, 1)
    accounts.set_profile_field("@percent:x", "displayname", "100% real")
    assert [u.user_id for u in accounts.search_users("_", 10)] == ["@under_score:x"]
    assert [u.user_id for u in accounts.search_users("0%", 10)] == ["@percent:x"]


def test_passwords() -> None:
    stored = hash_password("pw")
    assert stored.startswith("scrypt$14$8$1$")
    assert check_password("pw", stored)
    assert not check_password("pW", stored)
    assert not check_password("pw", None)
    assert not check_password("pw", "garbage")
    assert not check_password("pw", "scrypt$x$8$1$AA$AA")
    with pytest.raises(ValueError):
        hash_password("x" * 600)
