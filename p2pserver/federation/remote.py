"""The client API's :class:`~p2pserver.clientapi.remote.Remote`, over federation.

:class:`FederationRemote` is what a node passes to
:func:`p2pserver.clientapi.serve_client_api` so that joins through other
servers, invites of their users and their profiles go over federation.
Failures reach the client as :class:`MatrixError` with the remote
server's errcode when it sent one, else the errcode the spec gives for a
server that cannot be reached (M_NOT_FOUND for lookups and knocks,
M_UNABLE_TO_GRANT_JOIN for joins). Another server's room alias is resolved
by asking that server (the part after ':'), federation ``query_directory``.
Older history a client pages back to is backfilled from the room's servers
(:meth:`~p2pserver.federation.sync.RoomSync.backfill`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from p2pserver.engine.peers import PeerError
from p2pserver.federation.federation import Federation
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import sender_server


def _as_matrix_error(exc: PeerError, fallback: str) -> MatrixError:
    return MatrixError(str(exc), errcode=exc.errcode or fallback)


class FederationRemote:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    async def join(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> str:
        try:
            return await self.federation.join(room_id, user_id, via=via, content=content)
        except PeerError as exc:
            raise _as_matrix_error(exc, "M_UNABLE_TO_GRANT_JOIN") from None

    async def invite(self, room_id: str, sender: str, target: str, reason: str | None) -> str:
        return await self.federation.invite(room_id, sender, target, reason=reason)

    async def knock(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[str, str, list[dict[str, Any]]]:
        try:
            return await self.federation.knock(room_id, user_id, via=via, content=content)
        except PeerError as exc:
            raise _as_matrix_error(exc, "M_NOT_FOUND") from None

    async def leave(self, room_id: str, user_id: str, via: Sequence[str]) -> str:
        try:
            return await self.federation.leave(room_id, user_id, via=via)
        except PeerError as exc:
            raise _as_matrix_error(exc, "M_NOT_FOUND") from None

    async def query_alias(self, alias: str) -> tuple[str, list[str]]:
        server = alias.partition(":")[2]
        try:
            answer = await self.federation.client.query_directory(server, alias)
        except PeerError as exc:
            raise _as_matrix_error(exc, "M_NOT_FOUND") from None
        room_id, servers = answer.get("room_id"), answer.get("servers")
        # The answer is another server's word: check its shape before use.
        if not (
            isinstance(room_id, str)
            and room_id.startswith("!")
            and isinstance(servers, list)
            and all(isinstance(s, str) and s for s in servers)
        ):
            raise MatrixError(f"{server} answered {alias} malformed", errcode="M_NOT_FOUND")
        return room_id, servers

    async def query_profile(self, user_id: str) -> dict[str, Any]:
        try:
            return await self.federation.client.query_profile(sender_server(user_id), user_id)
        except PeerError as exc:
            raise _as_matrix_error(exc, "M_NOT_FOUND") from None

    async def backfill(self, room_id: str, limit: int) -> int:
        return await self.federation.sync.backfill(room_id, limit)

    async def directory_rooms(self, server: str | None = None) -> list[dict[str, Any]]:
        # Federation alone has no shared directory; the node adds discovery's.
        return []
