"""Typing and receipt EDUs: queued for the other servers in a room, and taken from them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import trio

from p2pserver.clientapi.http import Request
from p2pserver.clientapi.server import ClientAPI
from p2pserver.engine.local import LocalNetwork

V3 = "/_matrix/client/v3"


async def call(
    api: ClientAPI, method: str, path: str, body: Any = None, token: str | None = None
) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else b""
    path, _, query = path.partition("?")
    response = await api.handle(Request(method, V3 + path, parse_qs(query), headers, data))
    assert response.status == 200, response.body
    return json.loads(response.body)


def test_edus_out_and_in() -> None:
    async def main() -> None:
        net = LocalNetwork()
        here, there = net.add_engine(), net.add_engine()
        api = ClientAPI(here)
        alice = await call(
            api,
            "POST",
            "/register",
            {"username": "alice", "password": "p", "auth": {"type": "m.login.dummy"}},
        )
        token = alice["access_token"]
        remote_user = f"@bob:{there.server_name}"
        room_id = (await call(api, "POST", "/createRoom", {"invite": [remote_user]}, token))[
            "room_id"
        ]
        await net.deliver()
        await there.join(room_id, remote_user)
        await net.deliver()
        message = (
            await call(api, "PUT", f"/rooms/{room_id}/send/m.room.message/1", {"body": "x"}, token)
        )["event_id"]
        await net.deliver()

        await call(
            api, "PUT", f"/rooms/{room_id}/typing/{alice['user_id']}", {"typing": True}, token
        )
        await call(api, "POST", f"/rooms/{room_id}/receipt/m.read/{message}", {}, token)
        await call(api, "POST", f"/rooms/{room_id}/receipt/m.read.private/{message}", {}, token)
        batch = here.store.outbound.peek(there.server_name)
        assert batch is not None
        assert [e["edu_type"] for e in batch.edus] == ["m.typing", "m.receipt"]
        assert batch.edus[0]["content"] == {
            "room_id": room_id,
            "user_id": alice["user_id"],
            "typing": True,
        }
        assert list(batch.edus[1]["content"][room_id]["m.read"]) == [alice["user_id"]]

        since = (await call(api, "GET", "/sync?timeout=0", None, token))["next_batch"]
        # The remote server speaks for its own joined user only.
        api.receive_edu(
            there.server_name,
            {
                "edu_type": "m.typing",
                "content": {"room_id": room_id, "user_id": remote_user, "typing": True},
            },
        )
        api.receive_edu(
            "evil",
            {
                "edu_type": "m.typing",
                "content": {"room_id": room_id, "user_id": remote_user, "typing": False},
            },
        )
        api.receive_edu(
            there.server_name,
            {
                "edu_type": "m.typing",
                "content": {"room_id": room_id, "user_id": alice["user_id"], "typing": False},
            },
        )
        api.receive_edu(
            there.server_name,
            {
                "edu_type": "m.receipt",
                "content": {
                    room_id: {"m.read": {remote_user: {"event_ids": [message], "data": {"ts": 5}}}}
                },
            },
        )
        api.receive_edu(there.server_name, {"edu_type": "m.receipt", "content": "nonsense"})
        api.receive_edu(there.server_name, ["not", "an", "edu"])
        response = await call(api, "GET", f"/sync?since={since}", None, token)
        ephemeral = {
            e["type"]: e["content"]
            for e in response["rooms"]["join"][room_id]["ephemeral"]["events"]
        }
        assert sorted(ephemeral["m.typing"]["user_ids"]) == sorted([alice["user_id"], remote_user])
        assert ephemeral["m.receipt"] == {message: {"m.read": {remote_user: {"ts": 5}}}}

    trio.run(main)


def test_federation_hooks_profile_and_edu_handlers() -> None:
    async def main() -> None:
        net = LocalNetwork()
        here = net.add_engine()
        api = ClientAPI(here)
        alice = await call(
            api,
            "POST",
            "/register",
            {"username": "alice", "password": "p", "auth": {"type": "m.login.dummy"}},
        )
        await call(
            api,
            "PUT",
            f"/profile/{alice['user_id']}/displayname",
            {"displayname": "Alice"},
            alice["access_token"],
        )
        assert await api.query_profile("peer", alice["user_id"], None) == {"displayname": "Alice"}
        assert await api.query_profile("peer", alice["user_id"], "displayname") == {
            "displayname": "Alice"
        }
        for user_id, field in (
            (alice["user_id"], "avatar_url"),
            (f"@nobody:{here.server_name}", None),
            ("@x:elsewhere", None),
        ):
            try:
                await api.query_profile("peer", user_id, field)
            except Exception as exc:  # noqa: BLE001 - the errcode is what matters
                assert getattr(exc, "errcode", None) == "M_NOT_FOUND"
            else:
                raise AssertionError("expected M_NOT_FOUND")
        handlers = api.edu_handlers()
        assert set(handlers) == {"m.typing", "m.receipt", "m.presence"}
        await handlers["m.presence"](
            "peer", {"push": [{"user_id": "@p:peer", "presence": "online"}]}
        )
        await handlers["m.presence"](
            "peer", {"push": [{"user_id": "@q:other", "presence": "online"}]}
        )
        assert api.presence.get("@p:peer") is not None
        assert api.presence.get("@q:other") is None

    trio.run(main)
