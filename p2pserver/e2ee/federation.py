"""The client API's end-to-end encryption over a node's federation.

:class:`FederationE2ee` implements :class:`~p2pserver.clientapi.remote.E2eeRemote`
with the federation layer's client (``user_devices``, ``keys_query``,
``keys_claim``) and its sender (woken when to-device or device-list EDUs
were queued). Failures become :class:`~p2pserver.rooms.errors.MatrixError`
with the remote errcode, or ``M_UNKNOWN`` for a server that could not be
reached or did not answer in time.

:func:`connect` is the whole wiring a node needs, once both its client API
and its federation exist (the federation may already be running):

1. the client API answers the federation's queries (profiles, devices,
   keys): it becomes the server's :class:`~p2pserver.federation.QueryHandler`;
2. the federation hands it the EDUs it takes (typing, receipts, presence,
   ``m.direct_to_device``, ``m.device_list_update``,
   ``m.signing_key_update``);
3. the client API reaches other servers' keys through :class:`FederationE2ee`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from p2pserver.clientapi.server import ClientAPI
from p2pserver.engine.peers import PeerError
from p2pserver.federation.federation import Federation
from p2pserver.rooms.errors import MatrixError

__all__ = ["FederationE2ee", "connect"]


def _as_matrix_error(exc: PeerError) -> MatrixError:
    return MatrixError(str(exc), errcode=exc.errcode or "M_UNKNOWN")


class FederationE2ee:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    async def user_devices(self, server: str, user_id: str) -> dict[str, Any]:
        try:
            return await self.federation.client.user_devices(server, user_id)
        except PeerError as exc:
            raise _as_matrix_error(exc) from None

    async def keys_query(
        self, server: str, device_keys: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        try:
            return await self.federation.client.keys_query(server, device_keys)
        except PeerError as exc:
            raise _as_matrix_error(exc) from None

    async def keys_claim(
        self, server: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        try:
            return await self.federation.client.keys_claim(server, one_time_keys)
        except PeerError as exc:
            raise _as_matrix_error(exc) from None

    def edus_queued(self) -> None:
        self.federation.sender.wake()


def connect(api: ClientAPI, federation: Federation) -> None:
    """Wire a node's client API and federation to each other (see the module docstring)."""
    federation.server.queries = api
    for edu_type, handler in {**api.edu_handlers(), **api.e2ee_edu_handlers()}.items():
        federation.on_edu(edu_type, handler)
    api.e2ee_remote = FederationE2ee(federation)
