"""How the room engine reaches other servers: the :class:`PeerClient` protocol.

The engine never opens a connection itself. When it must ask a peer for
something (events it is missing, the state at an event, an auth chain) it
calls a :class:`PeerClient`, which the federation layer implements over the
network and tests implement with several engines in one process
(:class:`p2pserver.engine.local.LocalNetwork`).

Rules:
- Each method names the server to ask (``destination``) and mirrors one
  federation endpoint: ``POST /get_missing_events``, ``GET /state_ids``,
  ``GET /event`` and ``GET /event_auth``.
- PDUs come back as untrusted JSON objects; the engine checks them like any
  received PDU.
- Any failure (unreachable, timeout, an error response such as M_NOT_FOUND
  or M_FORBIDDEN) raises :class:`PeerError`; the engine then falls back as
  the spec allows or gives up on the event, and never crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class PeerError(Exception):
    """A request to a peer failed."""

    def __init__(self, message: str, *, errcode: str | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


@dataclass(frozen=True)
class StateIds:
    """A ``/state_ids`` answer: the state *before* an event, and its auth chain."""

    pdu_ids: list[str]
    auth_chain_ids: list[str]


class PeerClient(Protocol):
    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> list[Any]:
        """Events before ``latest_events`` and not before ``earliest_events``."""
        ...

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIds:
        """The state before ``event_id`` (as event IDs) and its auth chain."""
        ...

    async def get_event(self, destination: str, event_id: str) -> Any:
        """One PDU."""
        ...

    async def get_event_auth(self, destination: str, room_id: str, event_id: str) -> list[Any]:
        """The full auth chain of ``event_id``, as PDUs."""
        ...
