"""What the client API asks of other nodes, answered by federation plus discovery.

:class:`NodeRemote` is :class:`~p2pserver.federation.remote.FederationRemote`
with the node's discovery behind it. Joining or knocking on a room needs
servers that are in it; a version 12 room ID names none, and the servers a
client passes may be gone. So when no server is given, or none of those
given lets us in, the room's servers come from discovery (the DHT room records, connected and
nearby servers first). Rooms other nodes list in the shared directory (DHT
public-room records) feed ``/publicRooms``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from p2pserver.federation import Federation
from p2pserver.federation.remote import FederationRemote
from p2pserver.rooms.errors import MatrixError

if TYPE_CHECKING:  # discovery (zeroconf, libp2p) loads after the client API is up
    from p2pserver.discovery import Discovery

T = TypeVar("T")


class NodeRemote(FederationRemote):
    def __init__(self, federation: Federation, discovery: Discovery) -> None:
        super().__init__(federation)
        self.discovery = discovery

    async def join(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> str:
        async def join_through(servers: Sequence[str]) -> str:
            return await super(NodeRemote, self).join(room_id, user_id, servers, content)

        return await self._through_room_servers(room_id, via, join_through)

    async def knock(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[str, str, list[dict[str, Any]]]:
        async def knock_through(servers: Sequence[str]) -> tuple[str, str, list[dict[str, Any]]]:
            return await super(NodeRemote, self).knock(room_id, user_id, servers, content)

        return await self._through_room_servers(room_id, via, knock_through)

    async def _through_room_servers(
        self, room_id: str, via: Sequence[str], attempt: Callable[[Sequence[str]], Awaitable[T]]
    ) -> T:
        """``attempt`` through ``via``; failing that, through the servers discovery finds."""
        first_error: MatrixError | None = None
        if via:
            try:
                return await attempt(via)
            except MatrixError as exc:
                first_error = exc
        found = [s for s in await self.discovery.find_room_servers(room_id) if s not in via]
        if not found:
            raise first_error or MatrixError(
                f"no server in {room_id} could be found", errcode="M_NOT_FOUND"
            )
        return await attempt(found)

    async def directory_rooms(self, server: str | None = None) -> list[dict[str, Any]]:
        rooms = await self.discovery.public_rooms()
        return [r.chunk() for r in rooms if server is None or server in r.servers]
