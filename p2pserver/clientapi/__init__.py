"""The Matrix Client-Server API of a node: unmodified clients talk to their own node.

- :mod:`.server`: :class:`ClientAPI` (the application) and
  :func:`serve_client_api`, the entry point a node starts.
- :mod:`.http`: the HTTP/1.1 server (trio + h11), limits and CORS.
- :mod:`.routing`: paths, prefixes (v3, r0, v1) and what a handler gets.
- :mod:`.errors`: errcodes and HTTP statuses.
- Endpoints: :mod:`.session` (login, registration, devices), :mod:`.rooms`,
  :mod:`.syncing` (/sync and filters over :mod:`.sync`, the pure sync
  computation), :mod:`.startup` (profiles, account data, push rules,
  presence and the other start-up calls), :mod:`.directory` (aliases,
  /publicRooms, user directory).
- End-to-end encryption: :mod:`.keys` (device, one-time, fallback and
  cross-signing keys), :mod:`.todevice` (send-to-device, exactly once),
  :mod:`.devicelists` (device-list updates to and from other servers, and
  for clients), :mod:`.backup` (``/room_keys``).
- :mod:`.remote`: the hooks through which the federation layer serves what
  needs other nodes (:class:`~.remote.Remote`, :class:`~.remote.E2eeRemote`;
  :func:`p2pserver.e2ee.connect` wires them).

Accounts are stored by :mod:`p2pserver.storage.accounts` and end-to-end
keys and messages by :mod:`p2pserver.storage.e2ee`, in the node's one
database. Nothing here imports libp2p or the federation layer: a node can
answer clients before its network is up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI, ClientApiHandle, serve_client_api

__all__ = ["ClientAPI", "ClientApiHandle", "serve_client_api"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import p2pserver.clientapi` stays cheap until a server is built.
    if name in __all__:
        from p2pserver.clientapi import server

        return getattr(server, name)
    raise AttributeError(name)
