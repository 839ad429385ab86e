"""Peer-to-peer transport: the `Network` interface and its implementations.

- :mod:`.network`: the interface, its errors and events (what protocol code uses).
- :mod:`.framing`: length-prefixed CBOR frames and envelopes (sans-I/O).
- :mod:`.memory`: an in-memory network for tests and simulations (MockClock-friendly).
- :mod:`.libp2p_network`: TCP + Noise + Yamux with py-libp2p. Imported lazily,
  since importing libp2p costs 1-2 s and ~57 MB.
- :mod:`.ratelimit`: token buckets and penalties.
"""

from p2pserver.transport.framing import FrameError, FrameTooLarge
from p2pserver.transport.memory import MemoryHub, MemoryNetwork
from p2pserver.transport.network import (
    DEFAULT_TIMEOUT,
    Network,
    NetworkError,
    PeerEvent,
    PeerUnreachable,
    RemoteError,
    RequestHandler,
    RequestTimeout,
    TrafficCounters,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "FrameError",
    "FrameTooLarge",
    "MemoryHub",
    "MemoryNetwork",
    "Network",
    "NetworkError",
    "PeerEvent",
    "PeerUnreachable",
    "RemoteError",
    "RequestHandler",
    "RequestTimeout",
    "TrafficCounters",
]
