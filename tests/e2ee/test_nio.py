"""matrix-nio's end-to-end encryption (vodozemac) across two nodes, user on each.

Node 1 and node 2 are full nodes in this process (:class:`LiveCluster`):
client API over HTTP on 127.0.0.1, federation over a MemoryHub, stores in
files. The clients are unmodified matrix-nio ``AsyncClient`` s with
encryption on; they upload keys, query and claim them across nodes, share
Megolm sessions by Olm to-device messages and decrypt each other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.crypto import ENCRYPTION_ENABLED
from nio.event_builders import EnableEncryptionBuilder

from .conftest import PASSWORD, E2eeNode, LiveCluster

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not ENCRYPTION_ENABLED, reason="matrix-nio[e2e] (vodozemac) is missing"),
]


def client(node: E2eeNode, store: Path, user: str = "") -> AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    return AsyncClient(
        node.url,
        user,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
    )


async def register(node: E2eeNode, store: Path, name: str) -> AsyncClient:
    c = client(node, store)
    response = await c.register(name, PASSWORD, device_name=f"{name}'s first device")
    assert isinstance(response, RegisterResponse), response
    return c


async def tick(c: AsyncClient, timeout: int = 0) -> SyncResponse:
    """One round of what ``sync_forever`` does: sync, then upload/query/claim keys as needed."""
    response = await c.sync(timeout=timeout)
    assert isinstance(response, SyncResponse), response
    if c.should_upload_keys:
        await c.keys_upload()
    if c.should_query_keys:
        await c.keys_query()
    if c.should_claim_keys:
        await c.keys_claim(c.get_users_for_key_claiming())
    return response


async def until(
    c: AsyncClient, done: Callable[[], bool], *, rounds: int = 60, timeout: int = 300
) -> None:
    for _ in range(rounds):
        if done():
            return
        await tick(c, timeout)
    assert done(), f"{c.user_id} never got there"


class Inbox:
    """Messages a client decrypted (and could not), per room, from its syncs."""

    def __init__(self, c: AsyncClient) -> None:
        self.texts: list[str] = []
        self.undecrypted: list[str] = []
        c.add_event_callback(self._on_text, RoomMessageText)
        c.add_event_callback(self._on_megolm, MegolmEvent)

    async def _on_text(self, room: Any, event: RoomMessageText) -> None:
        self.texts.append(event.body)

    async def _on_megolm(self, room: Any, event: MegolmEvent) -> None:
        self.undecrypted.append(event.event_id)


async def send(c: AsyncClient, room_id: str, body: str) -> str:
    response = await c.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": body},
        ignore_unverified_devices=True,
    )
    assert isinstance(response, RoomSendResponse), response
    return response.event_id


async def encrypted_room(alice: AsyncClient, bob: AsyncClient) -> str:
    await tick(alice)
    await tick(bob)
    created = await alice.room_create(
        invite=[bob.user_id], initial_state=[EnableEncryptionBuilder().as_dict()]
    )
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id
    await until(bob, lambda: room_id in bob.invited_rooms)
    assert isinstance(await bob.join(room_id), JoinResponse)
    await until(bob, lambda: room_id in bob.rooms and bob.rooms[room_id].encrypted)
    await until(alice, lambda: room_id in alice.rooms and bob.user_id in alice.rooms[room_id].users)
    return room_id


def database_bytes(node: E2eeNode) -> bytes:
    return b"".join(
        p.read_bytes() for p in node.data_dir.iterdir() if p.name.startswith("rooms.db")
    )


def test_encrypted_room_both_ways_and_no_plaintext_on_either_node(tmp_path: Path) -> None:
    async def main(live: LiveCluster) -> None:
        one, two = live.nodes
        alice = await register(one, tmp_path / "alice", "alice")
        bob = await register(two, tmp_path / "bob", "bob")
        alice_in, bob_in = Inbox(alice), Inbox(bob)
        room_id = await encrypted_room(alice, bob)
        secrets = [f"alice says {uuid.uuid4().hex}", f"bob says {uuid.uuid4().hex}"]
        await send(alice, room_id, secrets[0])
        await until(bob, lambda: secrets[0] in bob_in.texts)
        await send(bob, room_id, secrets[1])
        await until(alice, lambda: secrets[1] in alice_in.texts)
        for i in range(3):
            await send(alice, room_id, f"{secrets[0]} #{i}")
            await send(bob, room_id, f"{secrets[1]} #{i}")
        await until(bob, lambda: f"{secrets[0]} #2" in bob_in.texts)
        await until(alice, lambda: f"{secrets[1]} #2" in alice_in.texts)
        # Each sees the other's messages once, in order (and their own, decrypted too).
        from_alice = [t for t in bob_in.texts if t.startswith("alice says")]
        from_bob = [t for t in alice_in.texts if t.startswith("bob says")]
        assert from_alice == [secrets[0]] + [f"{secrets[0]} #{i}" for i in range(3)]
        assert from_bob == [secrets[1]] + [f"{secrets[1]} #{i}" for i in range(3)]
        assert not alice_in.undecrypted and not bob_in.undecrypted
        await alice.close()
        await bob.close()
        # The servers carried ciphertext only: not a byte of either text in their files.
        for node in (one, two):
            data = database_bytes(node)
            assert b"m.room.encrypted" in data
            for secret in secrets:
                assert secret.encode() not in data
                assert secret.split()[-1].encode() not in data

    with LiveCluster(tmp_path) as live:
        asyncio.run(main(live))


def test_new_device_is_seen_by_the_other_node_and_gets_keys(tmp_path: Path) -> None:
    async def main(live: LiveCluster) -> None:
        one, two = live.nodes
        alice = await register(one, tmp_path / "alice", "alice")
        bob = await register(two, tmp_path / "bob", "bob")
        room_id = await encrypted_room(alice, bob)
        before = await send(alice, room_id, "before the new device")
        await until(bob, lambda: bob.olm is not None and bool(bob.olm.inbound_group_store))
        # Bob logs in on a second device, on his own node.
        bob2 = client(two, tmp_path / "bob2", bob.user_id)
        login = await bob2.login(PASSWORD, device_name="bob's second device")
        assert bob2.device_id and bob2.device_id != bob.device_id, login
        bob2_in = Inbox(bob2)
        await tick(bob2)  # uploads its keys: node 2 tells node 1
        await until(
            alice,
            lambda: (
                bob2.device_id
                in {d.id for d in alice.device_store.active_user_devices(bob.user_id)}
            ),
        )
        secret = f"for both of bob's devices {uuid.uuid4().hex}"
        await send(alice, room_id, secret)
        await until(bob2, lambda: secret in bob2_in.texts)
        # Only what was sent before the device existed stays closed to it.
        assert set(bob2_in.undecrypted) <= {before}
        for c in (alice, bob, bob2):
            await c.close()

    with LiveCluster(tmp_path) as live:
        asyncio.run(main(live))


def test_node_offline_while_keys_are_shared_then_everything_decrypts(tmp_path: Path) -> None:
    async def main(live: LiveCluster) -> None:
        one, two = live.nodes
        alice = await register(one, tmp_path / "alice", "alice")
        bob = await register(two, tmp_path / "bob", "bob")
        bob_in = Inbox(bob)
        room_id = await encrypted_room(alice, bob)
        await send(alice, room_id, "while both are up")
        await until(bob, lambda: "while both are up" in bob_in.texts)

        live.stop(two)
        offline = [f"sent while node 2 was away #{i}" for i in range(5)]
        for i, text in enumerate(offline):
            if i in (0, 3):
                # A new Megolm session: its key goes to Bob by Olm to-device
                # messages, which wait in node 1's queue.
                alice.invalidate_outbound_session(room_id)
            await send(alice, room_id, text)
        queued = live.call(lambda: one.store.outbound.pending(two.server_name))
        assert queued >= len(offline) + 2  # the events and the two key shares
        live.stop(one)  # the sender restarts too while the receiver is away
        live.start(one)
        live.start(two)
        await until(bob, lambda: all(t in bob_in.texts for t in offline), timeout=1000)
        assert bob_in.texts.count(offline[0]) == 1
        assert not bob_in.undecrypted
        await alice.close()
        await bob.close()

    with LiveCluster(tmp_path) as live:
        asyncio.run(main(live))
