"""Nodes on a MemoryHub, each a room engine with its Federation, under trio's MockClock.

Tests are plain functions that call :func:`run` (MockClock with autojump:
timers such as backoff and the periodic pull cost no real time).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pserver.engine.engine import RoomEngine
from p2pserver.federation import Federation, FederationConfig, build_federation
from p2pserver.rooms.auth import select_auth_event_ids
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import EventStatus, Store
from p2pserver.transport.memory import MemoryHub, MemoryNetwork

CONFIG = FederationConfig(fanout=4, sync_interval=30.0, announce_delay=0.2, backoff_initial=1.0)


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``fn`` under a MockClock that jumps whenever every task waits."""
    return trio.run(
        functools.partial(fn, *args), clock=trio.testing.MockClock(autojump_threshold=0)
    )


class Node:
    """One server: a MemoryNetwork and a Federation that can be stopped and restarted."""

    def __init__(
        self,
        hub: MemoryHub,
        *,
        config: FederationConfig = CONFIG,
        store_path: Path | None = None,
    ) -> None:
        self.hub = hub
        self.key = SigningKey.generate()
        self.server_name = self.key.server_name
        self.net: MemoryNetwork = hub.network(self.server_name)
        self.config = config
        self.store_path = store_path
        self.store = Store.open(store_path)
        self.fed: Federation = build_federation(self.store, self.key, self.net, config)
        self._scope: trio.CancelScope | None = None

    @property
    def engine(self) -> RoomEngine:
        return self.fed.engine

    def user(self, name: str) -> str:
        return f"@{name}:{self.server_name}"

    @property
    def running(self) -> bool:
        return self._scope is not None

    async def start(self, nursery: trio.Nursery) -> None:
        self._scope = await nursery.start(self._run)

    async def _run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with self.net.running(), trio.open_nursery() as nursery:
                await nursery.start(self.fed.run)
                task_status.started(scope)
                await trio.sleep_forever()

    def stop(self) -> None:
        """Stop the node, as a crash would: nothing is flushed but what was committed."""
        assert self._scope is not None
        self._scope.cancel()
        self._scope = None

    def restart_objects(self) -> None:
        """A new engine and Federation over the same store file and network (a restarted process)."""
        assert self._scope is None
        if self.store_path is not None:
            self.store.close()
            self.store = Store.open(self.store_path)
        self.fed = build_federation(self.store, self.key, self.net, self.config)

    def has(self, event_id: str) -> bool:
        meta = self.store.event_meta(event_id)
        return meta is not None and meta.status == "accepted"

    def status(self, event_id: str) -> EventStatus | None:
        """How the event is stored here (None: not at all)."""
        meta = self.store.event_meta(event_id)
        return None if meta is None else meta.status


def cluster(count: int, *, latency: float = 0.005, **kwargs: Any) -> tuple[MemoryHub, list[Node]]:
    """``count`` nodes that know each other's addresses (links all up)."""
    hub = MemoryHub(latency=latency)
    nodes = [Node(hub, **kwargs) for _ in range(count)]
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.net.add_peer_address(other.server_name, [f"/memory/{other.server_name}"])
    return hub, nodes


async def start_all(nursery: trio.Nursery, nodes: list[Node]) -> None:
    for node in nodes:
        await node.start(nursery)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 120.0, step: float = 0.05
) -> None:
    """Wait (in trio time) until ``predicate()`` holds; fail after ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


async def shared_room(nodes: list[Node], *, preset: str = "public_chat") -> str:
    """A room created by nodes[0]'s user; every other node's user invited and joined."""
    creator = nodes[0]
    room_id = await creator.engine.create_room(creator.user("u0"), {"preset": preset})
    for i, node in enumerate(nodes[1:], 1):
        invite = await creator.fed.invite(room_id, creator.user("u0"), node.user(f"u{i}"))
        await wait_until(functools.partial(node.has, invite))
        await node.fed.join(room_id, node.user(f"u{i}"))
    everyone = {n.server_name for n in nodes}
    await wait_until(lambda: all(n.store.joined_servers(room_id) == everyone for n in nodes))
    return room_id


def same_heads(nodes: list[Node], room_id: str) -> bool:
    heads = [set(n.store.forward_extremities(room_id)) for n in nodes]
    return all(h == heads[0] for h in heads)


async def set_power(node: Node, room_id: str, users: dict[str, int]) -> str:
    """``node``'s user u0 gives ``users`` these power levels (the rest unchanged)."""
    power = node.store.load_event(node.store.current_state(room_id)[("m.room.power_levels", "")])
    assert power is not None
    content = {**power.content, "users": {**power.content["users"], **users}}
    return await node.engine.send_event(
        room_id, node.user("u0"), "m.room.power_levels", content, state_key=""
    )


def forged_message(node: Node, room_id: str, prev_events: list[str], body: str) -> dict[str, Any]:
    """A message of ``node``'s u0 on ``prev_events``, built by hand (a fork, or a
    PDU to tamper with), as a peer would receive it."""
    return forged_event(node, room_id, prev_events, "m.room.message", {"body": body})


def forged_event(
    node: Node,
    room_id: str,
    prev_events: list[str],
    event_type: str,
    content: dict[str, Any],
    state_key: str | None = None,
    *,
    sender: str | None = None,
    view: Node | None = None,
) -> dict[str, Any]:
    """An event of ``node``'s u0 (or ``sender``) on ``prev_events``, built by
    hand and signed by ``node``; auth events and depth from ``view``'s store
    (default: ``node``'s)."""
    store = (view or node).store
    version = store.room_version(room_id)
    assert version is not None
    sender = sender or node.user("u0")
    auth = select_auth_event_ids(
        version, event_type, sender, state_key, content, store.current_state(room_id)
    )
    depth = max(store.event_meta(p).depth for p in prev_events) + 1  # type: ignore[union-attr]
    event = build_event(
        version,
        signing_key=node.key,
        server_name=node.server_name,
        sender=sender,
        type=event_type,
        content=content,
        room_id=room_id,
        prev_events=prev_events,
        auth_events=auth,
        depth=depth,
        origin_server_ts=1,
        state_key=state_key,
    )
    return event.get_pdu_json()


def txn(
    origin: str, pdus: Sequence[Any] = (), edus: Sequence[Any] = (), txn_id: str = "t1"
) -> dict[str, Any]:
    """A ``send_transaction`` body."""
    return {
        "txn_id": txn_id,
        "origin": origin,
        "origin_server_ts": 1,
        "pdus": list(pdus),
        "edus": list(edus),
    }


def stripped_copy(node: Node, room_id: str, event_id: str) -> dict[str, Any]:
    """``event_id`` as a server that strips it for us serves it."""
    event = node.store.load_event(event_id)
    version = node.store.room_version(room_id)
    assert event is not None and version is not None
    return redact(event.get_pdu_json(), version)


def is_whole(node: Node, event_id: str) -> bool:
    meta = node.store.event_meta(event_id)
    return meta is not None and not meta.redacted
