"""Peer-to-peer transport: the `Network` interface and its implementations.

- :mod:`.network`: the interface, its errors and events (what protocol code uses).
- :mod:`.framing`: length-prefixed CBOR frames and envelopes (sans-I/O).
- :mod:`.memory`: an in-memory network for tests and simulations (MockClock-friendly).
- :mod:`.libp2p_network`: TCP + Noise + Yamux with py-libp2p. Imported lazily
  (the node does it in a worker thread): even slim (see :mod:`.libp2p_slim`),
  py-libp2p with cryptography and protobuf adds ~15 MiB, and ~0.1 s to start-up
  (more on a first run, while the byte-code caches are written).
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
