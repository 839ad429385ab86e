"""Discovery: finding peers with no configuration, on the LAN and beyond.

:class:`Discovery` is what the node runs (``await nursery.start(discovery.run)``
once its network is running). It combines:

- **mDNS** (:mod:`.mdns`): advertise this node on the LAN, and for every
  neighbour that advertises itself, give its addresses to the network and
  connect to it at once. Off with ``DiscoveryConfig(mdns=False)``.
- **Bootstrap peers**: the node dials them itself; it tells discovery
  (:meth:`Discovery.note_bootstrap_peer`) so "who is around" says how they
  were found. Once connected they seed the DHT like any connection.
- **The DHT** (:mod:`p2pserver.dht`): peer routing, room records and the
  public-room directory, on the network's own libp2p host (or ``dht_host``,
  for tests that run the network in memory). Every connection the network
  makes is handed to the DHT's routing table.
- **Who is around** (:mod:`.directory`): every peer seen, how and when.

Order of questions (the DHT is the last resort, and costs seconds of CPU):
``find_peer`` answers from connected peers and LAN neighbours first, and
asks the DHT only for a peer neither knows. ``find_room_servers`` and
``public_rooms`` can only be answered by the DHT (records of rooms);
callers use them when joining by room ID or alias, or when a room's known
servers are unreachable. Anything learnt from the DHT is given to the
network (``add_peer_address``) so a request can follow.

Publishing: ``publish_room`` while joined (the DHT republishes it until
``unpublish_room``), ``publish_public_room`` for rooms in the room directory.
The node need not call the first two itself: :meth:`Discovery.follow_rooms`
watches the room engine and publishes or withdraws this server's entry as
its first user joins or its last user leaves (:meth:`set_room_joined`
queues the change; a background task talks to the DHT, which takes
seconds).
Both are signed by this node's key; entries read back are verified, so a
peer cannot publish for another server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pserver.discovery.directory import (
    HOW_BOOTSTRAP,
    HOW_DHT,
    HOW_MDNS,
    KnownPeer,
    PeerDirectory,
)
from p2pserver.rooms.signing import SigningKey
from p2pserver.transport.network import Network, NetworkError, PeerEvent

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from p2pserver.dht.service import DhtConfig, DhtService
    from p2pserver.discovery.mdns import LanPeer, Mdns

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoveryConfig:
    """``mdns``/``dht``: switch either off."""

    mdns: bool = True
    dht: bool = True
    dht_config: DhtConfig | None = None
    mdns_ttl: int = 120
    mdns_recheck_interval: float = 5.0
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class PublicRoom:
    """A room in the DHT's directory: its newest summary and who publishes it."""

    room_id: str
    summary: Mapping[str, Any]
    servers: tuple[str, ...]
    ts: int = field(compare=False, default=0)

    def chunk(self) -> dict[str, Any]:
        """The room as a ``PublicRoomsChunk`` of ``GET /publicRooms``."""
        return {**self.summary, "room_id": self.room_id}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Discovery:
    """Peer discovery for one node. See the module docstring.

    ``network`` must be running before :meth:`run` starts. The DHT runs on
    ``dht_host`` if given, else on ``network.host`` (a Libp2pNetwork); with
    neither, the DHT is off.
    """

    def __init__(
        self,
        network: Network,
        signing_key: SigningKey,
        config: DiscoveryConfig | None = None,
        *,
        dht_host: IHost | None = None,
    ) -> None:
        if signing_key.server_name != network.server_name:
            raise ValueError("the signing key is not the network's identity")
        self.network = network
        self.signing_key = signing_key
        self.server_name = signing_key.server_name
        self.config = config or DiscoveryConfig()
        self.directory = PeerDirectory(self.server_name)
        self._dht_host = dht_host
        self.dht: DhtService | None = None
        self.mdns: Mdns | None = None
        self._nursery: trio.Nursery | None = None
        self._dialling: set[str] = set()
        self._rooms_wanted: dict[str, bool] = {}  # room -> joined, not yet told the DHT
        self._rooms_changed = trio.Event()

    # --- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run discovery until cancelled. Reports started once mDNS advertises
        (if on) and the DHT answers requests (if on)."""
        events = self.network.subscribe_peer_events()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self._follow_connections, events)
                if self.config.dht:
                    await self._start_dht(nursery)
                    nursery.start_soon(self._publish_room_changes)
                for name in self.network.connected_peers():
                    self._on_connected(name)
                if self.config.mdns:
                    await self._start_mdns(nursery)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _start_dht(self, nursery: trio.Nursery) -> None:
        host = self._dht_host or getattr(self.network, "host", None)
        if host is None:
            logger.info("no libp2p host: the DHT is off")
            return
        from p2pserver.dht.service import DhtService

        self.dht = DhtService(
            host,
            self.signing_key,
            config=self.config.dht_config,
            addresses=self._dht_addresses if self._dht_host is None else None,
        )
        await nursery.start(self.dht.run)

    def _dht_addresses(self) -> list[str]:
        return self.network.listen_addresses()

    async def _start_mdns(self, nursery: trio.Nursery) -> None:
        from p2pserver.discovery.mdns import Mdns
        from p2pserver.transport.libp2p_network import interface_ipv4_addresses

        self.mdns = Mdns(
            self.signing_key,
            self.network.listen_addresses,
            on_found=self._on_lan_peer,
            on_lost=self._on_lan_peer_lost,
            interface_ips=interface_ipv4_addresses,
            ttl=self.config.mdns_ttl,
            recheck_interval=self.config.mdns_recheck_interval,
        )
        await nursery.start(self.mdns.run)

    # --- who is around ---------------------------------------------------------------

    def peers(self) -> list[KnownPeer]:
        """Every peer known: connected and nearby first, then by last seen."""
        return self.directory.peers()

    def peers_nearby(self) -> list[KnownPeer]:
        """Peers advertising themselves on the LAN right now."""
        return self.directory.nearby()

    def note_bootstrap_peer(self, server_name: str, addrs: Sequence[str] = ()) -> None:
        """The node was configured with ``server_name`` as a bootstrap peer."""
        self.directory.saw(server_name, HOW_BOOTSTRAP, _now_ms(), addrs)

    def set_display_names(self, server_name: str, names: Iterable[str]) -> None:
        """Hook: tell the directory the display names of ``server_name``'s users."""
        self.directory.set_display_names(server_name, names)

    # --- questions --------------------------------------------------------------------

    async def find_peer(self, server_name: str) -> list[str]:
        """Addresses of ``server_name``, made known to the network.

        Answered without the DHT when the peer is connected or on the LAN
        (then the addresses are those already known, possibly none for a
        peer that connected to us).
        """
        if server_name == self.server_name:
            return self.network.listen_addresses()
        known = self.directory.get(server_name)
        if server_name in self.network.connected_peers() or (known is not None and known.nearby):
            return list(known.addrs) if known is not None else []
        if self.dht is None:
            return list(known.addrs) if known is not None else []
        addrs = await self.dht.find_peer(server_name)
        return self._learn(server_name, HOW_DHT, addrs) if addrs else []

    async def find_room_servers(self, room_id: str) -> list[str]:
        """Servers that say they are in ``room_id`` (never this one), connected
        and nearby ones first; their addresses are given to the network."""
        if self.dht is None:
            return []
        entries = await self.dht.find_room_servers(room_id)
        servers = []
        for entry in entries:
            if entry.server_name == self.server_name:
                continue
            self._learn(entry.server_name, HOW_DHT, entry.addrs)
            servers.append(entry.server_name)
        return self._by_reachability(servers)

    async def public_rooms(self) -> list[PublicRoom]:
        """The DHT's public-room directory, one item per room, newest summary."""
        if self.dht is None:
            return []
        by_room: dict[str, list[Any]] = {}
        for entry in await self.dht.public_rooms():
            by_room.setdefault(entry.room_id, []).append(entry)
            if entry.server_name != self.server_name:
                self._learn(entry.server_name, HOW_DHT, entry.addrs)
        rooms = []
        for room_id, entries in by_room.items():
            newest = max(entries, key=lambda e: e.ts)
            servers = self._by_reachability([e.server_name for e in entries])
            rooms.append(PublicRoom(room_id, dict(newest.summary or {}), tuple(servers), newest.ts))
        return sorted(
            rooms, key=lambda r: (-int(r.summary.get("num_joined_members", 0)), r.room_id)
        )

    # --- publishing -------------------------------------------------------------------

    async def publish_room(self, room_id: str) -> int:
        """We joined ``room_id``: publish (and keep republishing) our room entry.
        Returns how many DHT nodes took it (0 with the DHT off or alone)."""
        return await self.dht.publish_room(room_id) if self.dht is not None else 0

    async def unpublish_room(self, room_id: str) -> int:
        """We left ``room_id``: publish a tombstone and stop republishing."""
        return await self.dht.unpublish_room(room_id) if self.dht is not None else 0

    def set_room_joined(self, room_id: str, joined: bool) -> None:
        """This server is (or no longer is) in ``room_id``; published soon after.

        Never blocks: safe in an engine notifier listener.
        """
        self._rooms_wanted[room_id] = joined
        self._rooms_changed.set()

    def follow_rooms(self, engine: Any) -> Callable[[], None]:
        """Keep our room entries in line with ``engine``'s rooms (a RoomEngine):
        every room we are joined to now, then every membership change.
        Returns the function that stops following."""
        store = engine.store

        def check(room_id: str) -> None:
            joined = self.server_name in store.joined_servers(room_id)
            if self._rooms_wanted.get(room_id) != joined:
                self.set_room_joined(room_id, joined)

        for room_id in store.room_ids():
            check(room_id)

        def on_update(update: Any) -> None:
            if any(kind == "m.room.member" for kind, _ in update.state_delta):
                check(update.room_id)

        remove: Callable[[], None] = engine.notifier.add_listener(on_update)
        return remove

    async def _publish_room_changes(self) -> None:
        assert self.dht is not None
        published: dict[str, bool] = {}
        while True:
            await self._rooms_changed.wait()
            self._rooms_changed = trio.Event()
            for room_id, joined in list(self._rooms_wanted.items()):
                if published.get(room_id, False) == joined:
                    continue
                try:
                    if joined:
                        await self.dht.publish_room(room_id)
                    else:
                        await self.dht.unpublish_room(room_id)
                except Exception as e:  # the DHT republishes; try again on the next change
                    logger.warning("publishing %s to the DHT failed: %s", room_id, e)
                    continue
                published[room_id] = joined

    async def publish_public_room(self, room_id: str, summary: Mapping[str, Any]) -> int:
        """List ``room_id`` in the directory; ``summary`` is its PublicRoomsChunk
        without room_id (``num_joined_members``, ``world_readable`` and
        ``guest_can_join`` are required)."""
        if self.dht is None:
            return 0
        return await self.dht.publish_public_room(room_id, summary)

    async def unpublish_public_room(self, room_id: str) -> int:
        return await self.dht.unpublish_public_room(room_id) if self.dht is not None else 0

    # --- feeding the network and the directory ----------------------------------------

    def _learn(self, server_name: str, how: str, addrs: Sequence[str]) -> list[str]:
        """Give ``addrs`` to the network (those it accepts) and the directory."""
        accepted = []
        for addr in addrs:
            try:
                self.network.add_peer_address(server_name, [addr])
            except ValueError:
                continue
            accepted.append(addr)
        self.directory.saw(server_name, how, _now_ms(), accepted)
        return accepted

    def _by_reachability(self, servers: Iterable[str]) -> list[str]:
        connected = self.network.connected_peers()

        def rank(name: str) -> tuple[bool, bool]:
            peer = self.directory.get(name)
            return (name not in connected, not (peer is not None and peer.nearby))

        return sorted(dict.fromkeys(servers), key=rank)

    async def _follow_connections(self, events: trio.MemoryReceiveChannel[PeerEvent]) -> None:
        async with events:
            async for event in events:
                if event.connected:
                    self._on_connected(event.server_name)
                else:
                    self.directory.set_connected(event.server_name, False, _now_ms())

    def _on_connected(self, server_name: str) -> None:
        self.directory.set_connected(server_name, True, _now_ms())
        if self.dht is not None and self._nursery is not None:
            peer = self.directory.get(server_name)
            addrs = list(peer.addrs) if peer is not None else []
            self._nursery.start_soon(self.dht.add_peer, server_name, addrs)

    def _on_lan_peer(self, peer: LanPeer) -> None:
        """mDNS found or updated a neighbour: learn it and connect."""
        accepted = self._learn(peer.server_name, HOW_MDNS, peer.addrs)
        self.directory.set_nearby(peer.server_name, True, _now_ms(), peer.addrs)
        logger.info("mDNS: %s is nearby at %s", peer.server_name[:8], accepted)
        if accepted and peer.server_name not in self.network.connected_peers():
            self._dial_soon(peer.server_name)

    def _on_lan_peer_lost(self, server_name: str) -> None:
        logger.info("mDNS: %s left the LAN", server_name[:8])
        self.directory.set_nearby(server_name, False, _now_ms())

    def _dial_soon(self, server_name: str) -> None:
        if self._nursery is None or server_name in self._dialling:
            return
        self._dialling.add(server_name)
        self._nursery.start_soon(self._dial, server_name)

    async def _dial(self, server_name: str) -> bool:
        try:
            await self.network.connect(server_name, timeout=self.config.connect_timeout)
            return True
        except NetworkError as e:
            logger.info("cannot connect to %s: %s", server_name[:8], e)
            return False
        finally:
            self._dialling.discard(server_name)
