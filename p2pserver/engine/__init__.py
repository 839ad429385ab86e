"""The room engine: receiving, creating and serving room events.

- :mod:`.engine`: :class:`RoomEngine`, the checks on receipt of a PDU in
  the spec's order, local events, history visibility, serving peers.
- :mod:`.peers`: :class:`PeerClient`, how the engine reaches other servers.
- :mod:`.local`: :class:`LocalNetwork`, several engines in one process
  (tests, simulations).
- :mod:`.notifier`: room updates for /sync and the federation sender.
- :mod:`.visibility`: the history visibility rules.

No network code lives here; storage is :mod:`p2pserver.storage`.
"""

from p2pserver.engine.engine import Forbidden, NotFound, PduResult, RoomEngine
from p2pserver.engine.notifier import Notifier, RoomUpdate
from p2pserver.engine.peers import PeerClient, PeerError, StateIds

__all__ = [
    "Forbidden",
    "NotFound",
    "Notifier",
    "PduResult",
    "PeerClient",
    "PeerError",
    "RoomEngine",
    "RoomUpdate",
    "StateIds",
]
