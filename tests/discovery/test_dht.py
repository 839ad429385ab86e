"""The DHT with 20 nodes in one process, over an in-memory libp2p transport.

Each node has a libp2p host on :mod:`p2pserver.dht.memory_transport` for the
DHT, and a MemoryNetwork (transport's hub) for federation, tied together by
:class:`~p2pserver.discovery.Discovery` (``dht_host=``). The DHT is
bootstrapped as a chain: node i is only told about node i+1.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio
from libp2p.kad_dht.pb.kademlia_pb2 import Record
from libp2p.peer.peerinfo import PeerInfo

from p2pserver.dht import records
from p2pserver.dht.memory_transport import MemoryTransportHub, close_hosts, new_memory_host
from p2pserver.dht.service import KAD_PROTOCOL_ID, now_ms
from p2pserver.discovery import Discovery, DiscoveryConfig
from p2pserver.federation import FederationConfig, build_federation
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import Store
from p2pserver.transport.memory import MemoryHub

N = 20
FEDERATION = FederationConfig(fanout=4, sync_interval=30.0, announce_delay=0.2, backoff_initial=1.0)


class Node:
    def __init__(self, hub: MemoryHub, dht_hub: MemoryTransportHub) -> None:
        self.key = SigningKey.generate()
        self.name = self.key.server_name
        self.net = hub.network(self.name)
        self.host = new_memory_host(self.key, dht_hub)
        self.discovery = Discovery(
            self.net, self.key, DiscoveryConfig(mdns=False), dht_host=self.host
        )
        self.store: Store | None = None
        self.fed: Any = None

    def with_federation(self) -> Node:
        self.store = Store.open(None)
        self.fed = build_federation(self.store, self.key, self.net, FEDERATION)
        return self

    def addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_transport_addrs()]

    def user(self, local: str) -> str:
        return f"@{local}:{self.name}"

    async def start(self, stack: AsyncExitStack, nursery: trio.Nursery) -> None:
        await stack.enter_async_context(self.host.run([multiaddr.Multiaddr("/memory/0")]))
        await stack.enter_async_context(self.net.running())
        if self.fed is not None:
            await nursery.start(self.fed.run)
        await nursery.start(self.discovery.run)

    @property
    def dht(self) -> Any:
        assert self.discovery.dht is not None
        return self.discovery.dht


async def chain(nodes: list[Node]) -> None:
    for a, b in zip(nodes, nodes[1:], strict=False):
        await a.host.connect(PeerInfo(b.host.get_id(), b.host.get_addrs()))
        assert await a.dht.add_peer(b.name, b.addrs())
        assert await b.dht.add_peer(a.name, a.addrs())


async def room_servers(reader: Node, room: str, expected: set[str]) -> set[str]:
    """What ``reader`` finds for ``room`` once it is ``expected`` (publishing
    runs in the background), or whatever it last found after 30 s."""
    found: set[str] = set()
    with trio.move_on_after(30):
        while found != expected:
            found = set(await reader.discovery.find_room_servers(room))
            await trio.sleep(0.2)
    return found


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def forged_room_entry(room_id: str, attacker: SigningKey, victim: str) -> dict[str, Any]:
    """An entry signed by ``attacker`` that claims to be ``victim``'s."""
    entry = records.make_entry(
        attacker,
        kind=records.KIND_ROOM,
        room_id=room_id,
        addrs=["/memory/999"],
        now_ms=now_ms(),
        ttl_ms=600_000,
    )
    entry["server_name"] = victim
    entry["signatures"] = {victim: entry["signatures"][attacker.server_name]}
    return entry


async def test_twenty_nodes_route_peers_and_rooms() -> None:
    hub, dht_hub = MemoryHub(latency=0.001), MemoryTransportHub()
    nodes = [Node(hub, dht_hub) for _ in range(N)]
    creator, member_a, member_b, joiner = (nodes[i].with_federation() for i in (3, 7, 11, 15))
    attacker = nodes[19]
    try:
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            for node in nodes:
                await node.start(stack, nursery)

            # The DHT speaks only our private protocol.
            handlers = nodes[0].host.get_mux().handlers
            assert KAD_PROTOCOL_ID in handlers and "/ipfs/kad/1.0.0" not in handlers

            await chain(nodes)

            # Every node finds every other's addresses, though each was told one.
            for node in nodes:
                for other in nodes:
                    if other is not node:
                        assert await node.discovery.find_peer(other.name) == other.addrs()
                        assert other.name in node.net.known_peers()
            assert "dht" in nodes[0].discovery.directory.get(nodes[10].name).found_by

            # The federating nodes publish their rooms as their users join and leave.
            for node in (creator, member_a, member_b, joiner):
                node.discovery.follow_rooms(node.fed.engine)

            # A room: created on one node, joined by two more.
            room = await creator.fed.engine.create_room(
                creator.user("c"), {"preset": "public_chat"}
            )
            for member in (member_a, member_b):
                await member.fed.join(room, member.user("m"), via=[creator.name])
            members = {creator.name, member_a.name, member_b.name}
            assert await room_servers(nodes[0], room, members) == members

            # Every node holding the room's record turns malicious: it adds an
            # entry claiming an innocent server is in the room (signed with
            # the attacker's key) and answers with it.
            key = records.room_key(room)
            forged = forged_room_entry(room, attacker.key, nodes[16].name)
            holders = 0
            for node in nodes:
                held = node.dht.store.get(key.encode())
                if held is not None:
                    tampered = Record()
                    tampered.key = key.encode()
                    tampered.value = records.encode_raw_entries(
                        [*json.loads(held.value)["entries"], forged]
                    )
                    node.dht.store.store[key.encode()] = (tampered, now_ms() / 1000 + 600)
                    holders += 1
            assert holders >= 4
            # ... and honest nodes refuse to store it: alone it is refused, next
            # to valid entries it is dropped.
            honest = next(n for n in nodes if n is not attacker and n.dht.store.entries(key))
            before = honest.dht.store.entries(key)
            alone = Record()
            alone.key, alone.value = key.encode(), records.encode_raw_entries([forged])
            assert not await attacker.dht.store._store_at_peer(
                honest.host.get_id(), key.encode(), alone.value, record=alone
            )
            mixed = Record()
            mixed.key = key.encode()
            mixed.value = records.encode_raw_entries([*(dict(e.raw) for e in before), forged])
            await attacker.dht.store._store_at_peer(
                honest.host.get_id(), key.encode(), mixed.value, record=mixed
            )
            # Members' own publishes may still be arriving meanwhile, so the
            # store may have gained valid entries; the forged one never.
            after = honest.dht.store.entries(key)
            assert all(entry in after for entry in before)
            assert all(entry.raw != forged for entry in after)
            assert {entry.server_name for entry in after} <= members

            # The joiner knows only the room ID: the DHT names the room's servers.
            servers = await joiner.discovery.find_room_servers(room)
            assert set(servers) == members
            await joiner.fed.join(room, joiner.user("j"), via=servers)
            everyone = members | {joiner.name}
            await wait_until(lambda: joiner.store.joined_servers(room) == everyone)
            await wait_until(lambda: creator.store.joined_servers(room) == everyone)
            assert await room_servers(nodes[0], room, everyone) == everyone

            # After its last user leaves, a server drops out of the record.
            await member_a.fed.leave(room, member_a.user("m"))
            remaining = everyone - {member_a.name}
            assert await room_servers(nodes[0], room, remaining) == remaining

            # Public rooms: published by one node, listed by any.
            summary = {"num_joined_members": 3, "world_readable": False, "guest_can_join": False}
            assert await creator.discovery.publish_public_room(room, {**summary, "name": "Ops"}) > 0
            listed = await nodes[12].discovery.public_rooms()
            assert [r.chunk() for r in listed] == [{**summary, "name": "Ops", "room_id": room}]
            assert listed[0].servers == (creator.name,)
            await creator.discovery.unpublish_public_room(room)
            assert await nodes[12].discovery.public_rooms() == []

            nursery.cancel_scope.cancel()
    finally:
        await close_hosts([n.host for n in nodes])
        for node in nodes:
            if node.store is not None:
                node.store.close()
