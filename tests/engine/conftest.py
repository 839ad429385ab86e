"""Helpers for room engine tests: trio runner, networks of engines, rooms."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

import trio

from p2pserver.engine import RoomEngine
from p2pserver.engine.local import LocalNetwork
from p2pserver.rooms.room_versions import RoomVersion

P = ParamSpec("P")


def trio_test(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test function under trio (pytest-trio is not installed)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def user(engine: RoomEngine, name: str) -> str:
    return f"@{name}:{engine.server_name}"


@dataclass
class Room:
    net: LocalNetwork
    room_id: str
    engines: list[RoomEngine]
    # users[i] is the user of engines[i]; users[0] created the room (admin).
    users: list[str]


async def make_room(
    servers: int = 3,
    *,
    room_version: RoomVersion | None = None,
    request: dict[str, Any] | None = None,
    power: dict[int, int] | None = None,
) -> Room:
    """A room created on the first engine; one user of every other engine joined.

    ``power`` gives some users (by index) a power level, set by the creator.
    """
    net = LocalNetwork()
    engines = [net.add_engine() for _ in range(servers)]
    users = [user(e, f"u{i}") for i, e in enumerate(engines)]
    room_id = await engines[0].create_room(
        users[0], request or {"preset": "public_chat"}, room_version=room_version
    )
    for engine, member in zip(engines[1:], users[1:], strict=True):
        await engines[0].invite(room_id, users[0], member)
        await net.deliver()
        await engine.join(room_id, member)
        await net.deliver()
    if power:
        await set_power(engines[0], room_id, users[0], {users[i]: lvl for i, lvl in power.items()})
        await net.deliver()
    return Room(net, room_id, engines, users)


async def set_power(engine: RoomEngine, room_id: str, sender: str, levels: dict[str, int]) -> str:
    state = engine.room_state(room_id)
    current = engine.store.load_event(state[("m.room.power_levels", "")])
    assert current is not None
    content = dict(current.content)
    users = dict(content.get("users", {}))
    users.update(levels)
    content["users"] = users
    return await engine.send_state(room_id, sender, "m.room.power_levels", "", content)


def state_content(engine: RoomEngine, room_id: str, key: tuple[str, str]) -> dict[str, Any] | None:
    event_id = engine.room_state(room_id).get(key)
    event = engine.store.load_event(event_id) if event_id else None
    return event.content if event else None
