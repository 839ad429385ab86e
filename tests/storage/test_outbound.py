import pytest

from p2pserver.storage import Store

from .conftest import add_dummy_events


def test_queue_is_fifo_per_destination_with_limits(store: Store) -> None:
    ids = [f"$e{i}" for i in range(60)]
    with store.transaction():
        add_dummy_events(store, ids)
        nids = store.event_nids(ids)
        for event_id in ids:
            store.outbound.enqueue_pdu(["b", "c"], nids[event_id])
        store.outbound.enqueue_edu("b", {"edu_type": "m.typing", "content": {}})
    assert store.outbound.destinations() == ["b", "c"]
    batch = store.outbound.peek("b")
    assert batch is not None
    assert len(batch.pdus) == 50 and batch.edus == []
    store.outbound.ack("b", batch.last_position)
    batch = store.outbound.peek("b")
    assert batch is not None
    assert len(batch.pdus) == 10 and batch.edus == [{"edu_type": "m.typing", "content": {}}]
    store.outbound.ack("b", batch.last_position)
    assert store.outbound.peek("b") is None
    assert store.outbound.pending("c") == 60
    assert store.outbound.destinations() == ["c"]


def test_rolled_back_enqueue_is_not_sent(store: Store) -> None:
    with store.transaction():
        add_dummy_events(store, ["$a"])
    try:
        with store.transaction():
            store.outbound.enqueue_pdu(["b"], store.event_nids(["$a"])["$a"])
            raise RuntimeError
    except RuntimeError:
        pass
    assert store.outbound.peek("b") is None


def test_listeners_hear_of_every_committed_enqueue(store: Store) -> None:
    heard: list[int] = []
    remove = store.outbound.add_listener(lambda: heard.append(store.outbound.pending()))
    store.outbound.enqueue_edu("b", {"edu_type": "m.typing", "content": {}})  # its own transaction
    assert heard == [1]
    with store.transaction():
        add_dummy_events(store, ["$a"])
        store.outbound.enqueue_pdu(["b"], store.event_nids(["$a"])["$a"])
        store.outbound.enqueue_edu("c", {"edu_type": "m.receipt", "content": {}})
        assert heard == [1]  # not before the commit
    assert heard[1:] and set(heard[1:]) == {3}
    count = len(heard)
    with pytest.raises(RuntimeError), store.transaction():
        store.outbound.enqueue_edu("b", {"edu_type": "m.typing", "content": {}})
        raise RuntimeError
    assert len(heard) == count  # nothing was queued after all
    remove()
    store.outbound.enqueue_edu("b", {"edu_type": "m.typing", "content": {}})
    assert len(heard) == count
