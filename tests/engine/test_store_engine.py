"""Store behaviour seen through real events: atomicity, outliers, compactness, notifications."""

import pytest
import trio

from p2pserver.engine import RoomUpdate
from p2pserver.storage import EventStatus

from .conftest import make_room, trio_test


@trio_test
async def test_a_failed_commit_leaves_no_trace() -> None:
    room = await make_room(1)
    engine, rid = room.engines[0], room.room_id
    store = engine.store
    rows, tips, state = store.table_rows(), engine.forward_extremities(rid), engine.room_state(rid)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    original = store.set_current_state
    store.set_current_state = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await engine.send_state(rid, room.users[0], "m.room.topic", "", {"topic": "lost"})
    store.set_current_state = original  # type: ignore[method-assign]
    assert store.table_rows() == rows
    assert engine.forward_extremities(rid) == tips and engine.room_state(rid) == state
    assert store.check_consistency() == []
    # and the engine carries on
    await engine.send_state(rid, room.users[0], "m.room.topic", "", {"topic": "kept"})
    assert store.check_consistency() == []


@trio_test
async def test_auth_events_fetched_are_outliers_and_can_join_the_dag() -> None:
    room = await make_room(2)
    (a, b), rid = room.engines, room.room_id
    outsider = room.net.add_engine()
    carol = f"@carol:{outsider.server_name}"
    invite = await a.invite(rid, room.users[0], carol)
    await room.net.deliver()
    # the outsider learnt the room from the invite; the events it fetched
    # only as auth events are outliers until something places them
    metas = outsider.store.event_metas(outsider.store.auth_chain_ids([invite]))
    assert metas and all(
        m.status in (EventStatus.OUTLIER, EventStatus.ACCEPTED) for m in metas.values()
    )
    assert outsider.store.event_meta(invite).status == EventStatus.ACCEPTED  # type: ignore[union-attr]
    await outsider.join(rid, carol)
    await room.net.deliver()
    assert a.store.current_membership(rid, carol) == "join"
    assert outsider.room_state(rid) == a.room_state(rid) == b.room_state(rid)
    assert outsider.store.check_consistency() == []


@trio_test
async def test_state_storage_grows_with_changes_not_members() -> None:
    room = await make_room(1, request={"preset": "public_chat"})
    engine, rid = room.engines[0], room.room_id
    members = 300
    for i in range(members):
        await engine.join(rid, f"@m{i}:{engine.server_name}")
    before = engine.store.table_rows()["state_group_entries"]
    for i in range(600):
        if i % 6 == 0:
            await engine.send_state(rid, room.users[0], "m.room.topic", "", {"topic": str(i)})
        else:
            await engine.send_message(rid, room.users[0], {"body": str(i)})
    added = engine.store.table_rows()["state_group_entries"] - before
    state_size = len(engine.room_state(rid))
    # 100 state changes in a room of 300+ members: a row each, plus at most
    # one new snapshot (taken once the delta chain outgrew the state), not
    # a full copy per event
    assert added <= 100 + state_size
    assert added < 100 * state_size / 20


@trio_test
async def test_listeners_hear_commits_in_order_and_waiters_wake() -> None:
    room = await make_room(1)
    engine, rid = room.engines[0], room.room_id
    heard: list[RoomUpdate] = []
    remove = engine.notifier.add_listener(heard.append)
    engine.notifier.add_listener(lambda u: 1 / 0)  # a broken listener harms nobody
    position = engine.notifier.position
    woke: list[int] = []

    async def waiter() -> None:
        woke.append(await engine.notifier.wait_for_stream(position))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0)
        first = await engine.send_message(rid, room.users[0], {"body": "1"})
        topic = await engine.send_state(rid, room.users[0], "m.room.topic", "", {"topic": "t"})
    assert [u.event.event_id for u in heard if u.event] == [first, topic]
    assert heard[1].state_delta == {("m.room.topic", ""): topic}
    assert heard[0].stream_ordering < heard[1].stream_ordering and heard[0].local
    assert woke and woke[0] > position
    remove()
    await engine.send_message(rid, room.users[0], {"body": "unheard"})
    assert len(heard) == 2


@trio_test
async def test_every_server_lists_the_same_extremities_in_the_same_order() -> None:
    """Lists of heads are cut short (room_heads, prev events), so servers
    holding the same extremities must order them alike: deepest first, then
    by event ID, whatever order the events arrived in."""
    room = await make_room(3)
    rid = room.room_id
    sent = [
        await engine.send_message(rid, member, {"body": "concurrent"})
        for engine, member in zip(room.engines, room.users, strict=True)
    ]
    await room.net.deliver()
    expected = sorted(sent)  # one depth: the three were sent on the same extremity
    for engine in room.engines:
        assert engine.store.forward_extremities(rid) == expected
        engine.store.clear_caches()
        assert engine.store.forward_extremities(rid) == expected
