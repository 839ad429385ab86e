"""Federation: the Server-Server API over the p2p `Network`, and delivery without a full mesh.

- :mod:`.protocol`: method names, body shapes, limits and errcodes (no I/O).
- :mod:`.client`: :class:`FederationClient`, requests to peers (the engine's PeerClient).
- :mod:`.server`: :class:`FederationServer`, the request handler.
- :mod:`.fanout`: which servers a node pushes an event to (per-event tree, bounded fan-out).
- :mod:`.sender`: the persistent outbound queue's delivery, with backoff.
- :mod:`.sync`: pull catch-up by forward-extremity exchange (``room_heads``).
- :mod:`.merging`: reconciling servers that hold the same events yet resolve
  different states (soft-failed extremities).
- :mod:`.membership`: make_join/send_join, make_leave/send_leave, invite.
- :mod:`.queries`: hooks for profile, devices, keys and EDUs.
- :mod:`.federation`: :class:`Federation`, all of it wired to one room engine.
- :mod:`.remote`: :class:`FederationRemote`, the client API's hook for other servers.
"""

from p2pserver.federation.client import FederationClient, FederationError
from p2pserver.federation.federation import Federation, FederationConfig, build_federation
from p2pserver.federation.queries import DefaultQueries, QueryHandler
from p2pserver.federation.remote import FederationRemote
from p2pserver.federation.server import FederationServer

__all__ = [
    "DefaultQueries",
    "Federation",
    "FederationClient",
    "FederationConfig",
    "FederationError",
    "FederationRemote",
    "FederationServer",
    "QueryHandler",
    "build_federation",
]
