"""What the client API asks of other nodes, answered by federation plus discovery.

:class:`NodeRemote` is :class:`~p2pserver.federation.remote.FederationRemote`
with the node's discovery behind it. Joining a room needs servers that are in
it; a version 12 room ID names none, and the servers a client passes may be
gone. So when no server is given, or none of those given lets us join, the
room's servers come from discovery (the DHT room records, connected and
nearby servers first). Rooms other nodes list in the shared directory (DHT
public-room records) feed ``/publicRooms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from p2pserver.federation import Federation
from p2pserver.federation.remote import FederationRemote
from p2pserver.rooms.errors import MatrixError

if TYPE_CHECKING:  # discovery (zeroconf, libp2p) loads after the client API is up
    from p2pserver.discovery import Discovery


class NodeRemote(FederationRemote):
    def __init__(self, federation: Federation, discovery: Discovery) -> None:
        super().__init__(federation)
        self.discovery = discovery

    async def join(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> str:
        first_error: MatrixError | None = None
        if via:
            try:
                return await super().join(room_id, user_id, via, content)
            except MatrixError as exc:
                first_error = exc
        found = [s for s in await self.discovery.find_room_servers(room_id) if s not in via]
        if not found:
            raise first_error or MatrixError(
                f"no server in {room_id} could be found", errcode="M_NOT_FOUND"
            )
        return await super().join(room_id, user_id, found, content)

    async def directory_rooms(self, server: str | None = None) -> list[dict[str, Any]]:
        rooms = await self.discovery.public_rooms()
        return [r.chunk() for r in rooms if server is None or server in r.servers]
