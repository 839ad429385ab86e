"""The account stream: one counter for account data, receipts, to-device and device lists."""

import pytest

from p2pserver.storage import Store
from p2pserver.storage.accounts import AccountStore
from p2pserver.storage.e2ee import E2eeStore


def test_one_counter_hands_out_positions_to_every_writer(store: Store) -> None:
    accounts, e2ee = AccountStore(store.db), E2eeStore(store.db)
    taken: list[int] = []
    next_stream = accounts.next_stream

    def spy(count: int = 1) -> int:
        taken.append(count)
        return next_stream(count)

    with store.transaction():
        assert accounts.next_stream() == 1
        assert accounts.next_stream(3) == 4
        with pytest.raises(ValueError):
            accounts.next_stream(0)
    data = accounts.set_account_data("@a:x", None, "m.test", {})
    assert data == 5
    e2ee._accounts.next_stream = spy  # type: ignore[method-assign]
    last = e2ee.put_to_device([("@a:x", "D", {"n": 1}), ("@a:x", "D", {"n": 2})])
    change = e2ee.record_device_list_change("@a:x")
    assert (last, change) == (7, 8) and taken == [2, 1]  # through next_stream, nowhere else
    receipt = accounts.set_receipt("!r:x", "m.read", "@a:x", None, "$e", 0)
    assert receipt == 9 == accounts.stream_position()
