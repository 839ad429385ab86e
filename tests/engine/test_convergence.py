"""Several engines, concurrent state changes, any delivery order: one state.

Each example: three servers in a room; their users make state changes
(topic, name, power levels, kicks, bans, joins, leaves, messages) on their
own engine while deliveries happen only now and then, in random order, so
branches form and events arrive before their prev events. Forged,
unauthorised and malformed PDUs are thrown in. Then everything is
delivered and the room creator sends a merging event after everyone else
spoke once more. Every server still in the room must then have the same
current state; a fresh server fed every PDU in a random order must compute
the same state at the merging event (it may not fetch anything it cannot
see, so it relies on redelivery); bad events must never be state.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Awaitable, Callable

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserver.engine import RoomEngine
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.hashing import compute_event_id
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage import EventStatus

from .conftest import Room, make_room, set_power

Op = Callable[[RoomEngine, str, str, str, int], Awaitable[object]]

OPERATIONS: dict[str, Op] = {
    "topic": lambda e, r, s, t, n: e.send_state(r, s, "m.room.topic", "", {"topic": f"t{n}"}),
    "name": lambda e, r, s, t, n: e.send_state(r, s, "m.room.name", "", {"name": f"n{n}"}),
    "promote": lambda e, r, s, t, n: set_power(e, r, s, {t: 50}),
    "demote": lambda e, r, s, t, n: set_power(e, r, s, {t: 0}),
    "kick": lambda e, r, s, t, n: e.kick(r, s, t),
    "ban": lambda e, r, s, t, n: e.ban(r, s, t),
    "unban": lambda e, r, s, t, n: e.unban(r, s, t),
    "join": lambda e, r, s, t, n: e.join(r, s),
    "leave": lambda e, r, s, t, n: e.leave(r, s),
    "message": lambda e, r, s, t, n: e.send_message(r, s, {"body": f"m{n}"}),
}

ops_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(sorted(OPERATIONS)), st.integers(1, 2)),
    min_size=1,
    max_size=14,
)


async def _bad_pdus(room: Room, rng: random.Random) -> list[tuple[str, dict, str | None]]:
    """A forged, an unauthorised and a malformed PDU, as (origin, pdu, event ID)."""
    a = room.engines[0]
    rid = room.room_id
    version = a.store.room_version(rid)
    assert version is not None
    tips = a.forward_extremities(rid)
    depth = max(a.store.event_meta(t).depth for t in tips) + 1  # type: ignore[union-attr]
    state = a.room_state(rid)
    outsider = SigningKey.generate()
    sender = f"@eve:{outsider.server_name}"
    auth = [state[("m.room.power_levels", "")]]
    if not version.room_id_is_create_event_hash:
        auth.insert(0, state[("m.room.create", "")])
    unauthorised = build_event(
        version,
        signing_key=outsider,
        sender=sender,
        type="m.room.topic",
        content={"topic": "eve"},
        room_id=rid,
        prev_events=tips,
        auth_events=auth,
        state_key="",
        depth=depth,
    )
    forged = copy.deepcopy(unauthorised.get_pdu_json())
    forged["sender"] = room.users[0]  # claims to be the admin; signature does not match
    forged["signatures"] = {a.server_name: forged["signatures"][outsider.server_name]}
    malformed = {"type": "m.room.topic", "room_id": rid, "content": "not an object"}
    bad = [
        (outsider.server_name, unauthorised.get_pdu_json(), unauthorised.event_id),
        (a.server_name, forged, compute_event_id(forged, version)),
        (a.server_name, malformed, None),
    ]
    rng.shuffle(bad)
    return bad


async def _run(ops: list[tuple[int, str, int]], seed: int, version: RoomVersion) -> None:
    rng = random.Random(seed)
    room = await make_room(3, room_version=version, power={1: 50})
    rid, net = room.room_id, room.net
    for n, (actor, kind, target) in enumerate(ops):
        engine, sender = room.engines[actor], room.users[actor]
        if actor == 0 and kind == "leave":
            kind = "message"  # the creator stays, to merge the branches at the end
        with contextlib.suppress(AuthError):  # refused by this engine's view of the room
            await OPERATIONS[kind](engine, rid, sender, room.users[target], n)
        if rng.random() < 0.3:
            await net.deliver(rng=rng, max_batches=rng.randint(1, 4))

    bad = await _bad_pdus(room, rng)
    for origin, pdu, _ in bad:
        target = rng.choice(room.engines)
        result = await target.receive_pdu(origin, json.loads(json.dumps(pdu)))
        assert not result.accepted, result
    await net.deliver(rng=rng)

    # Everyone still in the room speaks once, then the creator merges.
    a = room.engines[0]
    await a.send_message(rid, room.users[0], {"body": "merge 1"})
    await net.deliver(rng=rng)
    for engine, member in zip(room.engines, room.users, strict=True):
        with contextlib.suppress(AuthError):  # not in the room any more
            await engine.send_message(rid, member, {"body": "hello"})
    await net.deliver(rng=rng)
    merge = await a.send_message(rid, room.users[0], {"body": "merge 2"})
    await net.deliver(rng=rng)

    joined = a.store.joined_servers(rid)
    reference = a.room_state(rid)
    for engine in room.engines:
        assert engine.store.check_consistency() == []
        if engine.server_name in joined:
            assert engine.room_state(rid) == reference
            assert engine.forward_extremities(rid) == [merge]

    for _, _, bad_id in bad:
        for engine in room.engines:
            meta = engine.store.event_meta(bad_id) if bad_id else None
            assert meta is None or meta.status == EventStatus.REJECTED
            assert bad_id not in engine.room_state(rid).values()

    # A newcomer fed every PDU in a random order computes the same state at the merge.
    pdus = {}
    for engine in room.engines:
        for event_id, pdu in engine.store.db.query(
            "SELECT event_id, pdu FROM events WHERE room_id = ? AND status != 'outlier'", (rid,)
        ):
            pdus[event_id] = json.loads(pdu)
    observer = net.add_engine()
    remaining = list(pdus.values())
    rng.shuffle(remaining)
    while remaining:  # like a sender retrying: what could not be decided comes again
        dropped = [
            p for p in remaining if not (await observer.receive_pdu(a.server_name, p)).status
        ]
        if len(dropped) == len(remaining):
            break
        remaining = dropped
    merge_meta = observer.store.event_meta(merge)
    assert merge_meta is not None and merge_meta.status == EventStatus.ACCEPTED
    a_meta = a.store.event_meta(merge)
    assert a_meta is not None and a_meta.state_after is not None
    assert observer.store.state_map(merge_meta.state_after) == a.store.state_map(a_meta.state_after)  # type: ignore[arg-type]
    assert observer.store.check_consistency() == []
    merge_state = observer.store.state_map(merge_meta.state_after)  # type: ignore[arg-type]
    assert not {b for _, _, b in bad} & set(merge_state.values())


@settings(max_examples=100)
@given(
    ops=ops_strategy,
    seed=st.integers(0, 2**32 - 1),
    version=st.sampled_from([ROOM_V10, ROOM_V11, ROOM_V12]),
)
def test_concurrent_state_changes_converge(
    ops: list[tuple[int, str, int]], seed: int, version: RoomVersion
) -> None:
    trio.run(_run, ops, seed, version)


def test_a_scripted_conflict_converges() -> None:
    ops = [
        (0, "topic", 1),
        (1, "name", 1),
        (1, "ban", 2),
        (2, "topic", 2),
        (0, "demote", 1),
        (1, "kick", 2),
        (2, "message", 1),
        (0, "unban", 2),
    ]
    for seed in range(3):
        trio.run(_run, ops, seed, ROOM_V12)
