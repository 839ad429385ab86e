"""What the client API asks of other nodes: the :class:`Remote` hook.

The client API serves one node's users from the local room engine. Some
requests need other nodes: joining a room that no local user is in
(make_join / send_join), knocking on one (make_knock / send_knock),
inviting a user of another node (``/invite``, which the invitee's server
co-signs), another node's profiles, aliases and room directory, and room
history older than any the node holds (paging back with /messages). The
federation layer implements :class:`Remote` and passes it to :func:`p2pserver.clientapi.serve_client_api`; without one, those
requests fail with the errcode the spec gives for an unreachable server
(M_NOT_FOUND for lookups, M_UNABLE_TO_GRANT_JOIN / M_FORBIDDEN for joins
and invites) and everything local keeps working.

Rules for implementations:
- Each method raises :class:`~p2pserver.rooms.errors.MatrixError` with the
  errcode the client should see (the remote server's own, when it sent
  one); any other exception is treated as a bug (500).
- ``join`` returns the join event's ID once the room is stored locally
  (the engine holds the state from send_join), so the client's next /sync
  shows the room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Remote(Protocol):
    async def join(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> str:
        """Join ``room_id`` through one of ``via`` (make_join, then send_join)."""
        ...

    async def invite(self, room_id: str, sender: str, target: str, reason: str | None) -> str:
        """Invite a user of another server (federation ``/invite``); the event ID."""
        ...

    async def knock(
        self, room_id: str, user_id: str, via: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[str, str, list[dict[str, Any]]]:
        """Knock on a room only other servers hold (make_knock, then send_knock).

        Returns the knock's event ID, the server it went through, and the
        room's stripped state that server answered.
        """
        ...

    async def leave(self, room_id: str, user_id: str, via: Sequence[str]) -> str:
        """Leave (withdraw a knock on) a room only other servers hold, through one of ``via``."""
        ...

    async def query_alias(self, alias: str) -> tuple[str, list[str]]:
        """Resolve another server's alias: (room ID, servers to join through)."""
        ...

    async def query_profile(self, user_id: str) -> dict[str, Any]:
        """Another server's user's profile: ``displayname`` and ``avatar_url`` keys."""
        ...

    async def backfill(self, room_id: str, limit: int) -> int:
        """Fetch up to ``limit`` events older than any held; how many were stored (0: none).

        Never raises for an unreachable server: having no older history to
        show is an answer.
        """
        ...

    async def directory_rooms(self, server: str | None = None) -> list[dict[str, Any]]:
        """Rooms other nodes list in the shared directory, as ``PublicRoomsChunk``s
        (only those ``server`` lists, if given)."""
        ...


class E2eeRemote(Protocol):
    """What end-to-end encryption asks of other nodes (:mod:`.keys`, :mod:`.devicelists`).

    The federation layer's implementation is
    :class:`p2pserver.e2ee.federation.FederationE2ee`. Each request raises
    :class:`~p2pserver.rooms.errors.MatrixError` when the server refuses
    (its errcode) or cannot be reached (``M_UNKNOWN``); the client API
    bounds each call with its own timeout.
    """

    async def user_devices(self, server: str, user_id: str) -> dict[str, Any]:
        """Federation ``/user/devices/{userId}``: ``{user_id, stream_id, devices, ...}``."""
        ...

    async def keys_query(
        self, server: str, device_keys: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        """Federation ``/user/keys/query`` for that server's users."""
        ...

    async def keys_claim(
        self, server: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        """Federation ``/user/keys/claim`` for that server's users."""
        ...

    def edus_queued(self) -> None:
        """EDUs were put on the outbound queue: deliver them soon."""
        ...
