from collections.abc import Iterator

import pytest

from p2pserver.storage import Store


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store.open()
    yield s
    s.close()


def add_dummy_events(store: Store, event_ids: list[str], room_id: str = "!room:x") -> None:
    """Bare event rows, for tests of the tables that only reference events."""
    store.db.executemany(
        """INSERT INTO events (event_id, room_id, type, state_key, sender, depth,
               origin_server_ts, status, pdu) VALUES (?, ?, 'm.test', '', '@a:x', 1, 0, 'outlier', x'7b7d')""",
        [(e, room_id) for e in event_ids],
    )
