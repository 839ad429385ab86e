"""Two users on one node, through matrix-nio: rooms, messages, state, ephemeral."""

from __future__ import annotations

import time

from nio import (
    AsyncClient,
    JoinResponse,
    MessageDirection,
    ProfileGetResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)

from tests.clientapi.conftest import Node, auth, new_client, run_async


async def synced(client: AsyncClient, **kwargs: object) -> SyncResponse:
    response = await client.sync(**kwargs)  # type: ignore[arg-type]
    assert isinstance(response, SyncResponse), response
    return response


async def create(client: AsyncClient, **kwargs: object) -> str:
    response = await client.room_create(**kwargs)  # type: ignore[arg-type]
    assert isinstance(response, RoomCreateResponse), response
    return response.room_id


def texts(events: list[object]) -> list[str]:
    return [e.body for e in events if isinstance(e, RoomMessageText)]


@run_async
async def test_private_room_invite_join_and_100_messages_in_order(node: Node) -> None:
    alice, bob = await new_client(node, "alice"), await new_client(node, "bob")
    try:
        await synced(alice)
        await synced(bob)
        room_id = await create(
            alice, name="secret", invite=[bob.user_id], preset=RoomPreset.private_chat
        )
        invited = await synced(bob, since=bob.next_batch)
        assert room_id in invited.rooms.invite
        invite_state = invited.rooms.invite[room_id].invite_state
        assert any(getattr(e, "name", None) == "secret" for e in invite_state)
        assert isinstance(await bob.join(room_id), JoinResponse)
        joined = await synced(bob, since=bob.next_batch)
        assert room_id in joined.rooms.join
        assert bob.rooms[room_id].name == "secret"
        assert set(bob.rooms[room_id].users) == {alice.user_id, bob.user_id}

        await synced(alice, since=alice.next_batch)
        for i in range(100):
            sender = alice if i % 2 == 0 else bob
            sent = await sender.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"}
            )
            assert isinstance(sent, RoomSendResponse), sent
        # Incremental sync: the last 10 arrive, limited, with a prev_batch to page from.
        update = await synced(bob, since=bob.next_batch)
        timeline = update.rooms.join[room_id].timeline
        assert texts(timeline.events) == [f"m{i}" for i in range(90, 100)]
        assert timeline.limited
        # Page backwards from prev_batch: every message, in order, none twice.
        seen: list[str] = []
        token = timeline.prev_batch
        while True:
            page = await bob.room_messages(
                room_id, start=token, direction=MessageDirection.back, limit=17
            )
            assert isinstance(page, RoomMessagesResponse), page
            seen = texts(page.chunk)[::-1] + seen
            if page.end is None:
                break
            token = page.end
        assert seen[-90:] == [f"m{i}" for i in range(90)]
        # And forwards from the start of the room.
        forward: list[str] = []
        token = ""
        while True:
            page = await bob.room_messages(
                room_id, start=token, direction=MessageDirection.front, limit=33
            )
            assert isinstance(page, RoomMessagesResponse), page
            forward += texts(page.chunk)
            if page.end is None:
                break
            token = page.end
        assert forward == [f"m{i}" for i in range(100)]
    finally:
        await alice.close()
        await bob.close()


@run_async
async def test_public_room_join_by_alias_state_profile_leave(node: Node) -> None:
    alice, bob = await new_client(node, "alice"), await new_client(node, "bob")
    try:
        alias_name = f"lobby{int(time.monotonic() * 1000)}"
        room_id = await create(
            alice, visibility=RoomVisibility.public, alias=alias_name, name="Lobby", topic="hi"
        )
        alias = f"#{alias_name}:{node.server_name}"
        resolved = await bob.room_resolve_alias(alias)
        assert resolved.room_id == room_id
        assert isinstance(await bob.join(alias), JoinResponse)
        with node.http() as http:
            public = http.get("/_matrix/client/v3/publicRooms").json()
            entry = next(c for c in public["chunk"] if c["room_id"] == room_id)
            assert entry["name"] == "Lobby"
            assert entry["topic"] == "hi"
            assert entry["canonical_alias"] == alias
            assert entry["num_joined_members"] == 2
            searched = http.post(
                "/_matrix/client/v3/publicRooms",
                headers=auth(bob.access_token),
                json={"filter": {"generic_search_term": "lobb"}},
            ).json()
            assert room_id in [c["room_id"] for c in searched["chunk"]]

        await synced(alice)
        await synced(bob)
        # State change and profile change reach the other user.
        put = await alice.room_put_state(room_id, "m.room.topic", {"topic": "new topic"})
        assert put.event_id
        state = await bob.room_get_state_event(room_id, "m.room.topic")
        assert state.content == {"topic": "new topic"}
        await bob.set_displayname("Bobby")
        profile = await alice.get_profile(bob.user_id)
        assert isinstance(profile, ProfileGetResponse)
        assert profile.displayname == "Bobby"
        await synced(alice, since=alice.next_batch)
        room = alice.rooms[room_id]
        assert room.topic == "new topic"
        assert room.user_name(bob.user_id) == "Bobby"

        # Leave: alice sees it, bob gets the room in his leave section.
        await bob.room_leave(room_id)
        await synced(alice, since=alice.next_batch)
        assert bob.user_id not in alice.rooms[room_id].users
        left = await synced(bob, since=bob.next_batch)
        assert room_id in left.rooms.leave
        forget = await bob.room_forget(room_id)
        assert not hasattr(forget, "status_code") or forget.status_code is None
        with node.http() as http:
            joined = http.get(
                "/_matrix/client/v3/joined_rooms", headers=auth(bob.access_token)
            ).json()
            assert room_id not in joined["joined_rooms"]
    finally:
        await alice.close()
        await bob.close()


@run_async
async def test_typing_and_receipts_and_read_markers(node: Node) -> None:
    alice, bob = await new_client(node, "alice"), await new_client(node, "bob")
    try:
        room_id = await create(alice, invite=[bob.user_id])
        await bob.join(room_id)
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        await synced(alice)
        await synced(bob)
        assert bob.rooms[room_id].unread_notifications == 1

        await alice.room_typing(room_id, True, timeout=30000)
        update = await synced(bob, since=bob.next_batch)
        typing = [
            e
            for e in update.rooms.join[room_id].ephemeral
            if e.__class__.__name__ == "TypingNoticeEvent"
        ]
        assert typing and typing[0].users == [alice.user_id]

        await bob.room_read_markers(
            room_id, fully_read_event=sent.event_id, read_event=sent.event_id
        )
        update = await synced(alice, since=alice.next_batch)
        receipts = [
            e
            for e in update.rooms.join[room_id].ephemeral
            if e.__class__.__name__ == "ReceiptEvent"
        ]
        assert receipts
        assert any(
            r.event_id == sent.event_id and r.user_id == bob.user_id and r.receipt_type == "m.read"
            for r in receipts[0].receipts
        )
        update = await synced(bob, since=bob.next_batch)
        assert bob.rooms[room_id].unread_notifications == 0
        assert bob.rooms[room_id].fully_read_marker == sent.event_id

        await alice.room_typing(room_id, False)
        update = await synced(bob, since=bob.next_batch)
        typing = [
            e
            for e in update.rooms.join[room_id].ephemeral
            if e.__class__.__name__ == "TypingNoticeEvent"
        ]
        assert typing and typing[0].users == []
    finally:
        await alice.close()
        await bob.close()


@run_async
async def test_kick_ban_unban_redact_and_context(node: Node) -> None:
    alice, bob = await new_client(node, "alice"), await new_client(node, "bob")
    try:
        room_id = await create(alice, invite=[bob.user_id], room_version="11")
        await bob.join(room_id)
        first = await bob.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "oops"}
        )
        second = await bob.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "fine"}
        )
        redaction = await alice.room_redact(room_id, first.event_id, reason="spam")
        assert redaction.event_id
        context = await alice.room_context(room_id, second.event_id, limit=4)
        assert context.event.event_id == second.event_id
        with node.http() as http:
            redacted = http.get(
                f"/_matrix/client/v3/rooms/{room_id}/event/{first.event_id}",
                headers=auth(alice.access_token),
            ).json()
            assert redacted["content"] == {}
            assert redacted["unsigned"]["redacted_because"]["event_id"] == redaction.event_id
        assert (
            await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "x"})
        ).event_id
        await alice.room_kick(room_id, bob.user_id, reason="bye")
        refused = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "x"})
        assert getattr(refused, "status_code", None) == "M_FORBIDDEN"
        await alice.room_ban(room_id, bob.user_id)
        assert getattr(await bob.join(room_id), "status_code", None) == "M_FORBIDDEN"
        await alice.room_unban(room_id, bob.user_id)
        await alice.room_invite(room_id, bob.user_id)
        assert isinstance(await bob.join(room_id), JoinResponse)
        members = await alice.joined_members(room_id)
        assert {m.user_id for m in members.members} == {alice.user_id, bob.user_id}
    finally:
        await alice.close()
        await bob.close()


def test_aliases_and_directory_visibility(node: Node) -> None:
    from tests.clientapi.conftest import register_raw

    v3 = "/_matrix/client/v3"
    with node.http() as http:
        alice, alice_token = register_raw(http)
        bob, bob_token = register_raw(http)
        room_id = http.post(f"{v3}/createRoom", headers=auth(alice_token), json={}).json()[
            "room_id"
        ]
        alias = f"#place{int(time.monotonic() * 1000)}:{node.server_name}"
        quoted = alias.replace("#", "%23")
        assert (
            http.put(
                f"{v3}/directory/room/{quoted}",
                headers=auth(alice_token),
                json={"room_id": room_id},
            ).status_code
            == 200
        )
        taken = http.put(
            f"{v3}/directory/room/{quoted}", headers=auth(bob_token), json={"room_id": room_id}
        )
        assert (taken.status_code, taken.json()["errcode"]) == (409, "M_UNKNOWN")
        other = http.put(
            f"{v3}/directory/room/%23x:elsewhere",
            headers=auth(alice_token),
            json={"room_id": room_id},
        )
        assert other.json()["errcode"] == "M_INVALID_PARAM"
        assert http.get(f"{v3}/directory/room/{quoted}").json()["room_id"] == room_id
        assert http.get(f"{v3}/rooms/{room_id}/aliases", headers=auth(alice_token)).json() == {
            "aliases": [alias]
        }
        # canonical_alias may name it now; an alias of another room it may not.
        ok = http.put(
            f"{v3}/rooms/{room_id}/state/m.room.canonical_alias",
            headers=auth(alice_token),
            json={"alias": alias},
        )
        assert ok.status_code == 200
        bad = http.put(
            f"{v3}/rooms/{room_id}/state/m.room.canonical_alias",
            headers=auth(alice_token),
            json={"alias": f"#missing:{node.server_name}"},
        )
        assert (bad.status_code, bad.json()["errcode"]) == (400, "M_BAD_ALIAS")
        refused = http.request("DELETE", f"{v3}/directory/room/{quoted}", headers=auth(bob_token))
        assert refused.status_code == 403
        assert http.get(f"{v3}/directory/list/room/{room_id}").json() == {"visibility": "private"}
        assert (
            http.put(
                f"{v3}/directory/list/room/{room_id}",
                headers=auth(bob_token),
                json={"visibility": "public"},
            ).status_code
            == 403
        )
        assert (
            http.put(
                f"{v3}/directory/list/room/{room_id}",
                headers=auth(alice_token),
                json={"visibility": "public"},
            ).status_code
            == 200
        )
        listed = http.get(f"{v3}/publicRooms", params={"limit": 500}).json()["chunk"]
        assert room_id in [c["room_id"] for c in listed]
        assert (
            http.request(
                "DELETE", f"{v3}/directory/room/{quoted}", headers=auth(alice_token)
            ).status_code
            == 200
        )
        assert http.get(f"{v3}/directory/room/{quoted}").status_code == 404
