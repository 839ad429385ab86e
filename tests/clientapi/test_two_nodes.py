"""Two real nodes (``p2pserver run`` processes on 127.0.0.1), one matrix-nio user on each.

The nodes meet only through ``--bootstrap`` (no mDNS, loopback only). Each
user registers on their own node; everything they see of the other user
went between the nodes over federation: invites, joins, knocks, messages,
state, profiles, typing and receipts (EDUs), leaves, and history from before
a join (paging back).

:class:`ClientNode` is also what ``benchmarks/client.py`` starts nodes with.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    MessageDirection,
    ProfileGetResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomKnockResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)

STARTUP_TIMEOUT = 30.0
# Everything below is one conversation at a time; none of it should need the
# periodic pull (sync_interval), so waits are bounded well under it.
WAIT = 15.0
READY = re.compile(r"node (\S+) ready; client API at (\S+); listening on (.*)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClientNode:
    """A ``p2pserver run`` process serving the client API on 127.0.0.1."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.data_dir = root / name
        self.data_dir.mkdir()
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_name = ""
        self.url = ""
        self.address = ""

    def start(self, *bootstrap: str) -> ClientNode:
        args = [
            sys.executable, "-m", "p2pserver", "run",
            "--data-dir", str(self.data_dir),
            "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
            "--client-listen", f"127.0.0.1:{free_port()}",
            "--no-mdns",
        ]  # fmt: skip
        for address in bootstrap:
            args += ["--bootstrap", address]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (match := READY.search(self.log.read_text())):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.server_name, self.url = match[1], match[2]
        self.address = match[3].split()[0]
        assert self.address.startswith("/ip4/127.0.0.1/"), self.address
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


def start_two_nodes(root: Path) -> tuple[ClientNode, ClientNode]:
    n1 = ClientNode(root, "n1").start()
    try:
        n2 = ClientNode(root, "n2").start(n1.address)
    except BaseException:
        n1.stop()
        raise
    return n1, n2


async def new_user(node: ClientNode, name: str) -> AsyncClient:
    client = AsyncClient(
        node.url, config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    )
    response = await client.register(name, "correct horse battery staple")
    assert isinstance(response, RegisterResponse), response
    assert client.user_id == f"@{name}:{node.server_name}"
    return client


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[ClientNode, ClientNode]]:
    root = Path(tempfile.mkdtemp(prefix="p2pc", dir="/tmp"))
    n1, n2 = start_two_nodes(root)
    try:
        yield n1, n2
    finally:
        n2.stop()
        n1.stop()
        shutil.rmtree(root, ignore_errors=True)


async def synced(client: AsyncClient, **kwargs: object) -> SyncResponse:
    response = await client.sync(**kwargs)
    assert isinstance(response, SyncResponse), response
    return response


async def sync_until(
    client: AsyncClient, found: Callable[[SyncResponse], bool], what: str
) -> SyncResponse:
    """Long-poll incremental syncs until one answer satisfies ``found``."""
    deadline = time.monotonic() + WAIT
    while True:
        response = await synced(client, since=client.next_batch, timeout=5000)
        if found(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.user_id}: timed out waiting for {what}")


async def create(client: AsyncClient, **kwargs: object) -> str:
    response = await client.room_create(**kwargs)
    assert isinstance(response, RoomCreateResponse), response
    return response.room_id


def texts(events: list[object]) -> list[str]:
    return [e.body for e in events if isinstance(e, RoomMessageText)]


def timeline_texts(response: SyncResponse, room_id: str) -> list[str]:
    room = response.rooms.join.get(room_id)
    return texts(room.timeline.events) if room else []


def ephemeral(response: SyncResponse, room_id: str, kind: str) -> list[Any]:
    room = response.rooms.join.get(room_id)
    return [e for e in room.ephemeral if e.__class__.__name__ == kind] if room else []


def joined_member(client: AsyncClient, room_id: str, user_id: str) -> bool:
    """Whether ``client`` has seen ``user_id`` join (nio counts invitees in ``users``)."""
    room = client.rooms.get(room_id)
    return room is not None and user_id in room.users and user_id not in room.invited_users


async def invite_and_join(alice: AsyncClient, bob: AsyncClient, room_id: str) -> None:
    await alice.room_invite(room_id, bob.user_id)
    await sync_until(bob, lambda r: room_id in r.rooms.invite, "the invite")
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    await sync_until(bob, lambda r: room_id in r.rooms.join, "own join")
    await sync_until(alice, lambda r: joined_member(alice, room_id, bob.user_id), "the remote join")


async def page_all(client: AsyncClient, room_id: str, start: str, direction: MessageDirection,
                   limit: int) -> list[str]:  # fmt: skip
    """Every message text from ``start`` in ``direction``, in timeline order."""
    seen: list[str] = []
    token = start
    while True:
        page = await client.room_messages(room_id, start=token, direction=direction, limit=limit)
        assert isinstance(page, RoomMessagesResponse), page
        chunk = texts(page.chunk)
        seen = chunk[::-1] + seen if direction == MessageDirection.back else seen + chunk
        if page.end is None or not page.chunk:
            return seen
        token = page.end


def run(coro_fn: Callable[..., object]) -> Callable[..., None]:
    def wrapper(two_nodes: tuple[ClientNode, ClientNode]) -> None:
        asyncio.run(coro_fn(*two_nodes))  # type: ignore[arg-type]

    wrapper.__name__ = coro_fn.__name__
    wrapper.__doc__ = coro_fn.__doc__
    return wrapper


@run
async def test_private_room_across_nodes_100_messages_in_order_and_pagination(
    n1: ClientNode, n2: ClientNode
) -> None:
    alice, bob = await new_user(n1, "alice"), await new_user(n2, "bob")
    try:
        await synced(alice)
        await synced(bob)
        room_id = await create(alice, name="secret", preset=RoomPreset.private_chat)
        await invite_and_join(alice, bob, room_id)

        # A conversation: each message is sent once its sender has seen the
        # previous one (long-poll sync), so both nodes hold one linear order.
        users = (alice, bob)
        for i in range(100):
            sender, receiver = users[i % 2], users[(i + 1) % 2]
            sent = await sender.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"}
            )
            assert isinstance(sent, RoomSendResponse), sent

            def arrived(r: SyncResponse, body: str = f"m{i}") -> bool:
                return body in timeline_texts(r, room_id)

            await sync_until(receiver, arrived, f"message {i}")
        expected = [f"m{i}" for i in range(100)]
        for client in users:
            # Incremental sync: alice saw m99 arrive; bob has his own m99 to
            # see yet. Then nothing new.
            update = await synced(client, since=client.next_batch, timeout=0)
            assert timeline_texts(update, room_id) == ([] if client is alice else ["m99"])
            update = await synced(client, since=client.next_batch, timeout=0)
            assert room_id not in update.rooms.join
            client.next_batch = None  # an initial sync
            full = await synced(client, timeout=0)
            # Initial sync: the latest messages, limited; pagination back from
            # there and forwards from the start gives all 100 in order.
            timeline = full.rooms.join[room_id].timeline
            latest = texts(timeline.events)
            assert latest and latest == expected[100 - len(latest) :], latest
            assert timeline.limited
            assert await page_all(client, room_id, timeline.prev_batch, MessageDirection.back,
                                  17) == expected[: 100 - len(latest)]  # fmt: skip
            assert await page_all(client, room_id, "", MessageDirection.front, 33) == expected
            # The room's name as each node holds it (node 2 restores the
            # content of the history it first held stripped after the join).
            name = await client.room_get_state_event(room_id, "m.room.name")
            assert name.content == {"name": "secret"}
    finally:
        await alice.close()
        await bob.close()


@run
async def test_public_room_across_nodes_topic_profile_typing_receipts_leave(
    n1: ClientNode, n2: ClientNode
) -> None:
    alice, bob = await new_user(n1, "carol"), await new_user(n2, "dave")
    try:
        await synced(alice)
        await synced(bob)
        await bob.set_displayname("Dave")
        room_id = await create(alice, visibility=RoomVisibility.public, name="Lobby", topic="hi")
        await invite_and_join(alice, bob, room_id)

        # State change on node 1 reaches node 2.
        put = await alice.room_put_state(room_id, "m.room.topic", {"topic": "new topic"})
        assert put.event_id
        await sync_until(
            bob,
            lambda r: any(getattr(e, "topic", None) == "new topic"
                          for e in r.rooms.join[room_id].timeline.events)
            if room_id in r.rooms.join else False,
            "the topic",
        )  # fmt: skip
        state = await bob.room_get_state_event(room_id, "m.room.topic")
        assert state.content["topic"] == "new topic"
        # The remote user's profile, asked of node 1 (which asks node 2).
        profile = await alice.get_profile(bob.user_id)
        assert isinstance(profile, ProfileGetResponse), profile
        assert profile.displayname == "Dave"
        member = await alice.room_get_state_event(room_id, "m.room.member", bob.user_id)
        assert member.content.get("displayname") == "Dave", member
        assert alice.rooms[room_id].user_name(bob.user_id) == "Dave"

        # Typing (EDU) from node 1 to node 2.
        await alice.room_typing(room_id, True, timeout=30000)
        await sync_until(
            bob,
            lambda r: any(e.users == [alice.user_id] for e in ephemeral(r, room_id,
                                                                        "TypingNoticeEvent")),
            "typing",
        )  # fmt: skip
        # Receipt (EDU) from node 2 to node 1.
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "?"})
        assert isinstance(sent, RoomSendResponse), sent
        await sync_until(bob, lambda r: "?" in timeline_texts(r, room_id), "the message")
        await bob.room_read_markers(room_id, fully_read_event=sent.event_id,
                                    read_event=sent.event_id)  # fmt: skip
        await sync_until(
            alice,
            lambda r: any(
                x.event_id == sent.event_id and x.user_id == bob.user_id
                and x.receipt_type == "m.read"
                for e in ephemeral(r, room_id, "ReceiptEvent") for x in e.receipts
            ),
            "the receipt",
        )  # fmt: skip
        await alice.room_typing(room_id, False)
        await sync_until(
            bob,
            lambda r: any(e.users == [] for e in ephemeral(r, room_id, "TypingNoticeEvent")),
            "typing off",
        )

        # Leave on node 2: node 1 sees it, bob gets the room in his leave section.
        await bob.room_leave(room_id)
        await sync_until(bob, lambda r: room_id in r.rooms.leave, "own leave")
        await sync_until(
            alice, lambda r: bob.user_id not in alice.rooms[room_id].users, "the remote leave"
        )
    finally:
        await alice.close()
        await bob.close()


@run
async def test_remote_invite_shows_the_room_name_in_invite_state(
    n1: ClientNode, n2: ClientNode
) -> None:
    alice, bob = await new_user(n1, "erin"), await new_user(n2, "frank")
    try:
        await synced(alice)
        await synced(bob)
        room_id = await create(alice, name="secret", preset=RoomPreset.private_chat)
        await alice.room_invite(room_id, bob.user_id)
        invited = await sync_until(bob, lambda r: room_id in r.rooms.invite, "the invite")
        names = [
            getattr(e, "name", None) for e in invited.rooms.invite[room_id].invite_state
            if e.__class__.__name__ == "InviteNameEvent"
        ]  # fmt: skip
        assert names == ["secret"]
    finally:
        await alice.close()
        await bob.close()


@run
async def test_public_room_joined_without_invite_by_room_id_from_the_other_node(
    n1: ClientNode, n2: ClientNode
) -> None:
    """No server given: node 2 finds the room's servers through discovery (the DHT)."""
    alice, bob = await new_user(n1, "grace"), await new_user(n2, "heidi")
    try:
        room_id = await create(alice, visibility=RoomVisibility.public, name="Open")
        await synced(alice)
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), joined
        await sync_until(bob, lambda r: room_id in r.rooms.join, "own join")
        await sync_until(
            alice, lambda r: joined_member(alice, room_id, bob.user_id), "the remote join"
        )
        sent = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hey"})
        assert isinstance(sent, RoomSendResponse), sent
        await sync_until(alice, lambda r: "hey" in timeline_texts(r, room_id), "the message")
    finally:
        await alice.close()
        await bob.close()


@run
async def test_public_room_joined_by_alias_from_the_other_node(
    n1: ClientNode, n2: ClientNode
) -> None:
    alice, bob = await new_user(n1, "ivan"), await new_user(n2, "judy")
    try:
        alias_name = f"lobby{int(time.monotonic() * 1000)}"
        room_id = await create(alice, visibility=RoomVisibility.public, alias=alias_name)
        alias = f"#{alias_name}:{n1.server_name}"
        resolved = await bob.room_resolve_alias(alias)
        assert getattr(resolved, "room_id", None) == room_id, resolved
        assert n1.server_name in resolved.servers
        joined = await bob.join(alias)
        assert isinstance(joined, JoinResponse), joined
    finally:
        await alice.close()
        await bob.close()


@run
async def test_a_late_joiner_pages_back_through_history_from_before_it_joined(
    n1: ClientNode, n2: ClientNode
) -> None:
    """Node 2 holds nothing of the room's past: /messages backfills it from node 1."""
    alice, bob = await new_user(n1, "kim"), await new_user(n2, "lee")
    try:
        room_id = await create(alice, visibility=RoomVisibility.public, name="Log")
        before = [f"old{i}" for i in range(60)]
        for body in before:
            sent = await alice.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": body}
            )
            assert isinstance(sent, RoomSendResponse), sent
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), joined
        first = await sync_until(bob, lambda r: room_id in r.rooms.join, "own join")
        timeline = first.rooms.join[room_id].timeline
        assert texts(timeline.events) == []  # only the join: nothing before it is held
        # Paging back fetches the history page by page, oldest last, in order.
        assert await page_all(bob, room_id, timeline.prev_batch, MessageDirection.back,
                              25) == before  # fmt: skip
        # And it is held now: paging forwards from the start gives it again,
        # followed by what came after the join.
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "new"}
        )
        assert isinstance(sent, RoomSendResponse), sent
        await sync_until(bob, lambda r: "new" in timeline_texts(r, room_id), "a new message")
        assert await page_all(bob, room_id, "", MessageDirection.front, 40) == [*before, "new"]
        # The room's name (history visibility "shared": bob may see it all).
        name = await bob.room_get_state_event(room_id, "m.room.name")
        assert name.content == {"name": "Log"}
    finally:
        await alice.close()
        await bob.close()


@run
async def test_an_invitee_sees_the_room_state_whole_once_joined(
    n1: ClientNode, n2: ClientNode
) -> None:
    """Node 2 first holds the room's state stripped (its user was only invited): once the
    user joins, its client learns the whole state through incremental /sync alone."""
    alice, bob = await new_user(n1, "mia"), await new_user(n2, "ned")
    try:
        await synced(alice)
        await synced(bob)
        room_id = await create(
            alice, name="Hidden", topic="Only members", preset=RoomPreset.private_chat
        )
        await invite_and_join(alice, bob, room_id)

        def whole(r: SyncResponse) -> bool:
            room = bob.rooms.get(room_id)
            return room is not None and room.name == "Hidden" and room.topic == "Only members"

        if not whole(await synced(bob, since=bob.next_batch, timeout=0)):
            await sync_until(bob, whole, "the room's name and topic")
    finally:
        await alice.close()
        await bob.close()


def raw_sync(node: ClientNode, client: AsyncClient, since: str | None = None) -> dict[str, Any]:
    """A /sync as JSON, initial unless ``since`` (nio does not parse the knock section)."""
    response = httpx.get(
        f"{node.url}/_matrix/client/v3/sync",
        params={"timeout": "0", **({"since": since} if since else {})},
        headers={"Authorization": f"Bearer {client.access_token}"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@run
async def test_knocking_on_a_room_only_the_other_node_holds(n1: ClientNode, n2: ClientNode) -> None:
    """make_knock/send_knock: the knock shows in both nodes' views; an invite lets bob in."""
    alice, bob = await new_user(n1, "olga"), await new_user(n2, "pete")
    try:
        room_id = await create(alice, name="Knock knock", preset=RoomPreset.private_chat)
        await alice.room_enable_knocking(room_id)
        await synced(alice)
        knocked = await bob.room_knock(room_id, reason="let me in")
        assert isinstance(knocked, RoomKnockResponse), knocked
        # Bob's node holds no DAG of the room: the knock section shows the
        # stripped state the resident answered, and bob's own knock.
        knock = raw_sync(n2, bob)["rooms"]["knock"][room_id]["knock_state"]["events"]
        shown = {(e["type"], e["state_key"]): e["content"] for e in knock}
        assert shown[("m.room.name", "")] == {"name": "Knock knock"}
        assert shown[("m.room.join_rules", "")]["join_rule"] == "knock"
        assert shown[("m.room.member", bob.user_id)]["membership"] == "knock"
        # Alice's node holds the knock as bob's membership in the room.
        member = await alice.room_get_state_event(room_id, "m.room.member", bob.user_id)
        assert member.content["membership"] == "knock", member
        assert member.content["reason"] == "let me in"
        # Alice lets him in.
        invited = await alice.room_invite(room_id, bob.user_id)
        assert isinstance(invited, RoomInviteResponse), invited
        await sync_until(bob, lambda r: room_id in r.rooms.invite, "the invite")
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), joined
        await sync_until(bob, lambda r: room_id in r.rooms.join, "own join")
        rooms = raw_sync(n2, bob)["rooms"]
        assert room_id in rooms["join"] and room_id not in rooms.get("knock", {})
    finally:
        await alice.close()
        await bob.close()


@run
async def test_a_knock_the_room_does_not_allow_is_refused_and_leaves_nothing(
    n1: ClientNode, n2: ClientNode
) -> None:
    alice, bob = await new_user(n1, "quin"), await new_user(n2, "rosa")
    try:
        room_id = await create(alice, name="Closed", preset=RoomPreset.private_chat)
        await synced(alice)
        refused = await bob.room_knock(room_id)
        assert not isinstance(refused, RoomKnockResponse)
        assert refused.status_code == "M_FORBIDDEN", refused
        assert room_id not in raw_sync(n2, bob).get("rooms", {}).get("knock", {})
    finally:
        await alice.close()
        await bob.close()


def sections(response: dict[str, Any], room_id: str) -> list[str]:
    """The /sync sections (join, invite, leave, knock) the room is in."""
    rooms = response.get("rooms", {})
    return [name for name, section in rooms.items() if room_id in section]


@run
async def test_a_knock_on_a_room_only_the_other_node_holds_can_be_withdrawn(
    n1: ClientNode, n2: ClientNode
) -> None:
    alice, bob = await new_user(n1, "sam"), await new_user(n2, "tess")
    try:
        room_id = await create(alice, name="Porch", preset=RoomPreset.private_chat)
        await alice.room_enable_knocking(room_id)
        knocked = await bob.room_knock(room_id)
        assert isinstance(knocked, RoomKnockResponse), knocked
        first = raw_sync(n2, bob)
        assert sections(first, room_id) == ["knock"]
        left = await bob.room_leave(room_id)
        assert isinstance(left, RoomLeaveResponse), left
        # The client learns that the knock is over, in the leave section.
        assert sections(raw_sync(n2, bob, since=first["next_batch"]), room_id) == ["leave"]
        assert sections(raw_sync(n2, bob), room_id) == []
        member = await alice.room_get_state_event(room_id, "m.room.member", bob.user_id)
        assert member.content["membership"] == "leave", member
    finally:
        await alice.close()
        await bob.close()


@run
async def test_a_knock_the_room_refused_ends_when_the_knocker_leaves(
    n1: ClientNode, n2: ClientNode
) -> None:
    """Kicking a knocker refuses the knock; bob's node is not told (it holds no DAG of
    the room), but leaving is accepted as the end of it, not refused."""
    alice, bob = await new_user(n1, "uma"), await new_user(n2, "vic")
    try:
        room_id = await create(alice, name="Gate", preset=RoomPreset.private_chat)
        await alice.room_enable_knocking(room_id)
        assert isinstance(await bob.room_knock(room_id), RoomKnockResponse)
        await alice.room_kick(room_id, bob.user_id, reason="not today")
        first = raw_sync(n2, bob)
        left = await bob.room_leave(room_id)
        assert isinstance(left, RoomLeaveResponse), left
        assert sections(raw_sync(n2, bob, since=first["next_batch"]), room_id) == ["leave"]
    finally:
        await alice.close()
        await bob.close()


@run
async def test_a_knock_on_a_room_left_earlier_is_shown_and_withdrawn(
    n1: ClientNode, n2: ClientNode
) -> None:
    """Bob's node still holds the room's DAG from before he left: his knock through
    node 1 stands for his membership until the room's events here catch up."""
    alice, bob = await new_user(n1, "wes"), await new_user(n2, "xia")
    try:
        room_id = await create(alice, name="Again", preset=RoomPreset.private_chat)
        await invite_and_join(alice, bob, room_id)
        assert isinstance(await bob.room_leave(room_id), RoomLeaveResponse)
        await alice.room_enable_knocking(room_id)
        assert isinstance(await bob.room_knock(room_id, reason="again"), RoomKnockResponse)
        member = await alice.room_get_state_event(room_id, "m.room.member", bob.user_id)
        assert member.content == {**member.content, "membership": "knock", "reason": "again"}
        first = raw_sync(n2, bob)
        assert sections(first, room_id) == ["knock"]
        assert isinstance(await bob.room_leave(room_id), RoomLeaveResponse)
        assert sections(raw_sync(n2, bob, since=first["next_batch"]), room_id) == ["leave"]
        member = await alice.room_get_state_event(room_id, "m.room.member", bob.user_id)
        assert member.content["membership"] == "leave", member
    finally:
        await alice.close()
        await bob.close()
