"""Knocking over federation: make_knock / send_knock, and withdrawing with make_leave / send_leave."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from p2pserver.federation import protocol as p
from p2pserver.federation.client import FederationError
from p2pserver.federation.membership import fill_template
from p2pserver.rooms.errors import MatrixError

from .conftest import cluster, run, start_all

KNOCK_ROOM = {
    "preset": "private_chat",
    "name": "Door",
    "initial_state": [
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
    ],
}


def _membership(node, room_id: str, user_id: str) -> str | None:
    event_id = node.store.current_state(room_id).get(("m.room.member", user_id))
    event = node.store.load_event(event_id) if event_id else None
    return event.content.get("membership") if event is not None else None


def test_a_knock_reaches_the_room_and_can_be_withdrawn():
    async def main():
        _, (a, b) = cluster(2)
        asked: list[str] = []
        request = b.fed.client.request

        async def counting(destination: str, method: str, body: dict[str, Any]) -> Any:
            asked.append(method)
            return await request(destination, method, body)

        b.fed.client.request = counting  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("alice"), KNOCK_ROOM)
            bob = b.user("bob")
            event_id, server, state = await b.fed.knock(
                room_id, bob, via=[a.server_name], content={"reason": "hi"}
            )
            assert asked == [p.MAKE_KNOCK, p.SEND_KNOCK]
            assert server == a.server_name
            shown = {(e["type"], e["state_key"]): e["content"] for e in state}
            assert shown[("m.room.name", "")] == {"name": "Door"}
            assert shown[("m.room.join_rules", "")] == {"join_rule": "knock"}
            assert a.has(event_id) and _membership(a, room_id, bob) == "knock"
            # The knocking server is given no more of the room than that.
            assert b.store.room(room_id) is None
            await b.fed.leave(room_id, bob, via=[a.server_name])
            assert _membership(a, room_id, bob) == "leave"
            nursery.cancel_scope.cancel()

    run(main)


def test_a_knock_on_an_invite_only_room_is_forbidden():
    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            room_id = await a.engine.create_room(a.user("alice"), {"preset": "private_chat"})
            with pytest.raises(MatrixError) as refused:
                await b.fed.knock(room_id, b.user("bob"), via=[a.server_name])
            assert refused.value.errcode == "M_FORBIDDEN"
            assert _membership(a, room_id, b.user("bob")) is None
            nursery.cancel_scope.cancel()

    run(main)


def test_send_knock_takes_only_a_knock_of_a_user_of_the_requesting_server():
    async def main():
        _, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await a.engine.create_room(a.user("alice"), KNOCK_ROOM)
            template, _ = await b.fed.client.make_membership(
                a.server_name, "knock", room_id, b.user("bob")
            )
            assert template["content"]["membership"] == "knock"
            # c may not ask for a template for b's user.
            with pytest.raises(FederationError) as refused:
                await c.fed.client.make_membership(a.server_name, "knock", room_id, b.user("bob"))
            assert refused.value.errcode == "M_FORBIDDEN"
            # A join passed off as a knock is refused.
            version = a.store.room_version(room_id)
            forged = dict(template, content={"membership": "join"})
            event = fill_template(forged, version, b.key, server_name=b.server_name)
            with pytest.raises(FederationError) as bad:
                await b.fed.client.send_knock(
                    a.server_name, room_id, event.event_id, event.get_pdu_json()
                )
            assert bad.value.errcode == "M_BAD_JSON"
            nursery.cancel_scope.cancel()

    run(main)


def test_a_user_banned_after_the_template_cannot_knock_or_join():
    """send_knock / send_join of an event that fails against the current state: 403.

    The event is soft-failed (stored, changing nothing), and the room's state
    is not handed over."""

    async def main():
        _, (a, b) = cluster(2)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b])
            alice, bob = a.user("alice"), b.user("bob")
            room_id = await a.engine.create_room(alice, KNOCK_ROOM)
            version = a.store.room_version(room_id)
            knock_template, _ = await b.fed.client.make_membership(
                a.server_name, "knock", room_id, bob
            )
            await a.engine.send_state(
                room_id, alice, "m.room.join_rules", "", {"join_rule": "public"}
            )
            join_template, _ = await b.fed.client.make_membership(
                a.server_name, "join", room_id, bob
            )
            await a.engine.ban(room_id, alice, bob)
            for template, send in (
                (knock_template, b.fed.client.send_knock),
                (join_template, b.fed.client.send_join),
            ):
                event = fill_template(template, version, b.key, server_name=b.server_name)
                with pytest.raises(FederationError) as refused:
                    await send(a.server_name, room_id, event.event_id, event.get_pdu_json())
                assert refused.value.errcode == "M_FORBIDDEN"
            assert _membership(a, room_id, bob) == "ban"
            nursery.cancel_scope.cancel()

    run(main)
