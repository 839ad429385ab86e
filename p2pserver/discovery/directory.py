"""Who is around: the peers this node has seen, how, and when (no I/O).

One :class:`KnownPeer` per server name, fed by discovery (mDNS, the DHT,
bootstrap addresses) and by the network's connection events. It answers the
user directory and ``p2pserver peers``:

- ``found_by``: every way the peer was learnt of (``mdns``, ``dht``,
  ``bootstrap``, ``connection``), in the order first seen.
- ``nearby``: the peer is advertising itself on the LAN right now (mDNS),
  at ``lan_addrs`` (its current advertisement; ``addrs`` also keeps older
  addresses, newest first).
- ``connected``: the network has an open connection to it.
- ``last_seen_ms``: the last time any of the above said the peer was there
  (wall clock, milliseconds, for display).
- ``display_names``: display names of the peer's local users, when a higher
  layer (profile lookups, the user directory) tells us with
  :meth:`PeerDirectory.set_display_names`. Discovery itself never learns them.

The directory is bounded (``max_peers``): when full, the peer seen longest
ago that is neither connected nor nearby is forgotten first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HOW_MDNS = "mdns"
HOW_DHT = "dht"
HOW_BOOTSTRAP = "bootstrap"
HOW_CONNECTION = "connection"
HOW = (HOW_MDNS, HOW_DHT, HOW_BOOTSTRAP, HOW_CONNECTION)

MAX_DISPLAY_NAMES = 50
MAX_ADDRS = 16


@dataclass
class KnownPeer:
    server_name: str
    first_seen_ms: int
    last_seen_ms: int
    found_by: list[str] = field(default_factory=list)
    addrs: list[str] = field(default_factory=list)
    nearby: bool = False
    lan_addrs: tuple[str, ...] = ()
    connected: bool = False
    display_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "server_name": self.server_name,
            "found_by": list(self.found_by),
            "addrs": list(self.addrs),
            "nearby": self.nearby,
            "lan_addrs": list(self.lan_addrs),
            "connected": self.connected,
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
            "display_names": list(self.display_names),
        }


class PeerDirectory:
    """The known peers of one node (``own_name`` is never listed)."""

    def __init__(self, own_name: str, *, max_peers: int = 1024) -> None:
        self.own_name = own_name
        self.max_peers = max_peers
        self._peers: dict[str, KnownPeer] = {}

    def saw(
        self, server_name: str, how: str, now_ms: int, addrs: Iterable[str] = ()
    ) -> KnownPeer | None:
        """Record a sighting; ``addrs`` (newest first) replace older ones at the front."""
        if how not in HOW:
            raise ValueError(f"unknown way of finding a peer: {how!r}")
        if server_name == self.own_name:
            return None
        peer = self._peers.get(server_name)
        if peer is None:
            self._make_room()
            peer = self._peers[server_name] = KnownPeer(server_name, now_ms, now_ms)
        if how not in peer.found_by:
            peer.found_by.append(how)
        peer.last_seen_ms = max(peer.last_seen_ms, now_ms)
        new = list(dict.fromkeys(addrs))
        if new:
            peer.addrs = (new + [a for a in peer.addrs if a not in new])[:MAX_ADDRS]
        return peer

    def set_nearby(
        self, server_name: str, nearby: bool, now_ms: int, lan_addrs: Iterable[str] = ()
    ) -> None:
        peer = self._peers.get(server_name)
        if peer is not None:
            peer.nearby = nearby
            peer.lan_addrs = tuple(lan_addrs) if nearby else ()
            peer.last_seen_ms = max(peer.last_seen_ms, now_ms)

    def set_connected(self, server_name: str, connected: bool, now_ms: int) -> None:
        if connected:
            self.saw(server_name, HOW_CONNECTION, now_ms)
        peer = self._peers.get(server_name)
        if peer is not None:
            peer.connected = connected
            peer.last_seen_ms = max(peer.last_seen_ms, now_ms)

    def set_display_names(self, server_name: str, names: Iterable[str]) -> None:
        """The hook for higher layers: display names of ``server_name``'s users."""
        peer = self._peers.get(server_name)
        if peer is not None:
            clean = [n for n in dict.fromkeys(names) if isinstance(n, str) and n]
            peer.display_names = tuple(clean[:MAX_DISPLAY_NAMES])

    def get(self, server_name: str) -> KnownPeer | None:
        return self._peers.get(server_name)

    def peers(self) -> list[KnownPeer]:
        """Everyone known: connected and nearby first, then most recently seen."""
        return sorted(
            self._peers.values(),
            key=lambda p: (not p.connected, not p.nearby, -p.last_seen_ms, p.server_name),
        )

    def nearby(self) -> list[KnownPeer]:
        return [p for p in self.peers() if p.nearby]

    def _make_room(self) -> None:
        if len(self._peers) < self.max_peers:
            return
        idle = [p for p in self._peers.values() if not p.connected and not p.nearby]
        if not idle:
            idle = list(self._peers.values())
        oldest = min(idle, key=lambda p: p.last_seen_ms)
        del self._peers[oldest.server_name]
