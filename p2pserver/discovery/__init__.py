"""Zero-configuration discovery: mDNS on the LAN, the DHT beyond it, and who is around.

- :mod:`.discovery`: :class:`Discovery`, what the node runs.
- :mod:`.mdns`: advertising and browsing with zeroconf, bridged to trio.
- :mod:`.directory`: the known peers (pure data).
- :mod:`.probe`: a discovery-only node printing JSON lines (tests, benchmarks).

The DHT itself (records, KadDHT) lives in :mod:`p2pserver.dht`.
"""

from p2pserver.discovery.directory import KnownPeer, PeerDirectory
from p2pserver.discovery.discovery import (
    Discovery,
    DiscoveryConfig,
    PublicRoom,
)

__all__ = [
    "Discovery",
    "DiscoveryConfig",
    "KnownPeer",
    "PeerDirectory",
    "PublicRoom",
]
