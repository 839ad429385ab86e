"""The client API application and its entry point, :func:`serve_client_api`.

:class:`ClientAPI` turns an HTTP :class:`~p2pserver.clientapi.http.Request`
into a :class:`~p2pserver.clientapi.http.Response`:

1. ``OPTIONS`` on any path: 200 with the CORS headers (browsers preflight).
2. Route the path (:mod:`.routing`): 404 / 405 M_UNRECOGNIZED otherwise.
3. Authenticate: the access token from ``Authorization: Bearer`` or the
   deprecated ``access_token`` query parameter (matrix-nio sends that).
   None on a route that needs one: 401 M_MISSING_TOKEN; one we do not
   know: 401 M_UNKNOWN_TOKEN. A route that does not need a token still
   checks one that is given.
4. Call the endpoint; its dict is the 200 JSON body, or it returns
   ``(status, body)``.
5. Errors: :class:`MatrixError` -> its status and ``{errcode, error}``;
   :class:`UserInteractiveAuth` -> 401 with its body; anything else is a
   bug: logged, 500 M_UNKNOWN.

It holds what the endpoints share: the room engine, the account store,
the end-to-end encryption store, typing and presence (in memory), UIA
sessions, and the :class:`Wakeup` that long-polling /sync waits on (poked
by the engine's notifier and by every account-stream, to-device,
device-list or ephemeral write).

Toward the federation layer it is the node's
:class:`~p2pserver.federation.queries.QueryHandler` (:meth:`ClientAPI.query_profile`,
:meth:`~ClientAPI.user_devices`, :meth:`~ClientAPI.keys_query`,
:meth:`~ClientAPI.keys_claim`, :meth:`~ClientAPI.query_directory`) and gives the handlers of the EDUs it takes
(:meth:`~ClientAPI.edu_handlers`, :meth:`~ClientAPI.e2ee_edu_handlers`);
it reaches other nodes through the :class:`Remote` and
:class:`E2eeRemote` hooks. :func:`p2pserver.e2ee.federation.connect`
wires all of it to a node's federation.

Start-up cost matters (a node must answer /versions within a second), so
this package imports nothing heavy: no libp2p, no federation code.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pserver.clientapi.errors import ApiError, UserInteractiveAuth, error_body, status_for
from p2pserver.clientapi.http import HttpServer, Request, Response
from p2pserver.clientapi.remote import E2eeRemote, Remote
from p2pserver.clientapi.routing import Ctx, Requester, Router, json_bytes
from p2pserver.clientapi.streams import EphemeralCounter, Presence, StreamToken, Typing, Wakeup
from p2pserver.engine.engine import RoomEngine
from p2pserver.engine.notifier import RoomUpdate
from p2pserver.rooms.errors import MatrixError
from p2pserver.storage.accounts import AccountStore, RoomReads
from p2pserver.storage.e2ee import E2eeStore

if TYPE_CHECKING:
    from p2pserver.node.config import NodeConfig

logger = logging.getLogger(__name__)

__all__ = ["ClientAPI", "ClientApiHandle", "hash_token", "serve_client_api"]


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _random_id(length: int) -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(length))


class ClientAPI:
    def __init__(
        self,
        engine: RoomEngine,
        accounts: AccountStore | None = None,
        *,
        registration_open: bool = True,
        remote: Remote | None = None,
        e2ee_remote: E2eeRemote | None = None,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.accounts = accounts or AccountStore(engine.store.db)
        self.reads = RoomReads(engine.store.db)
        self.e2ee = E2eeStore(engine.store.db)
        self.server_name = engine.server_name
        self.registration_open = registration_open
        self.remote = remote
        self.e2ee_remote = e2ee_remote
        self.base_url = base_url
        self.clock = clock
        self.wakeup = Wakeup()
        self.ephemeral = EphemeralCounter(clock)
        self.typing = Typing(self.ephemeral)
        self.presence = Presence(self.ephemeral, clock)
        from p2pserver.clientapi.session import UiaSessions

        self.uia = UiaSessions(clock)
        self.router = build_router()
        # (user, room) -> (the inputs of its unread counts, the counts); see syncing.
        self.unread_counts: dict[tuple[str, str], tuple[Any, tuple[int, int]]] = {}
        engine.notifier.add_listener(self._on_room_update)
        from p2pserver.clientapi import devicelists

        engine.notifier.add_listener(lambda update: devicelists.on_room_update(self, update))

    # -- shared helpers ----------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def poke(self) -> None:
        """Something /sync may deliver changed: wake long-polls."""
        self.wakeup.poke()

    def _on_room_update(self, update: RoomUpdate) -> None:
        if update.restored is not None:
            meta = self.store.event_meta(update.restored)
            if meta is not None and meta.state_key is not None:
                # Clients may hold its stripped copy: /sync sends it again.
                self.accounts.add_restored(update.room_id, update.restored)
        self.poke()

    def e2ee_changed(self, *, edus: bool = False) -> None:
        """To-device messages or device lists changed; ``edus``: EDUs were queued for others."""
        self.poke()
        if edus and self.e2ee_remote is not None:
            self.e2ee_remote.edus_queued()

    def receive_edu(self, origin: str, edu: Any) -> None:
        """An EDU from ``origin`` (typing, receipts, presence); see :mod:`.edus`."""
        from p2pserver.clientapi.edus import receive_edu

        receive_edu(self, origin, edu)

    def edu_handlers(self) -> dict[str, Callable[[str, Mapping[str, Any]], Awaitable[None]]]:
        """``{edu_type: async handler(origin, content)}``, for ``Federation.on_edu``."""

        def handler(edu_type: str) -> Callable[[str, Mapping[str, Any]], Awaitable[None]]:
            async def handle(origin: str, content: Mapping[str, Any]) -> None:
                self.receive_edu(origin, {"edu_type": edu_type, "content": content})

            return handle

        return {t: handler(t) for t in ("m.typing", "m.receipt", "m.presence")}

    def e2ee_edu_handlers(self) -> dict[str, Callable[[str, Mapping[str, Any]], Awaitable[None]]]:
        """``{edu_type: async handler(origin, content)}`` of end-to-end encryption."""
        from p2pserver.clientapi import devicelists, todevice

        receivers = {
            "m.direct_to_device": todevice.receive_direct_to_device,
            "m.device_list_update": devicelists.receive_device_list_update,
            "m.signing_key_update": devicelists.receive_signing_key_update,
        }

        def handler(
            receive: Callable[[ClientAPI, str, Mapping[str, Any]], Awaitable[None]],
        ) -> Callable[[str, Mapping[str, Any]], Awaitable[None]]:
            async def handle(origin: str, content: Mapping[str, Any]) -> None:
                await receive(self, origin, content)

            return handle

        return {t: handler(r) for t, r in receivers.items()}

    async def user_devices(self, origin: str, user_id: str) -> dict[str, Any]:
        """Federation ``/user/devices`` for a local user (M_NOT_FOUND if none)."""
        from p2pserver.clientapi.keys import federation_user_devices

        return federation_user_devices(self, user_id)

    async def keys_query(self, origin: str, device_keys: Mapping[str, list[str]]) -> dict[str, Any]:
        """Federation ``/user/keys/query`` for local users."""
        from p2pserver.clientapi.keys import federation_keys_query

        return federation_keys_query(self, device_keys)

    async def keys_claim(
        self, origin: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        """Federation ``/user/keys/claim`` for local users."""
        from p2pserver.clientapi.keys import federation_keys_claim

        return federation_keys_claim(self, one_time_keys)

    async def query_profile(self, origin: str, user_id: str, field: str | None) -> dict[str, Any]:
        """Federation ``/query/profile`` for a local user (M_NOT_FOUND if none)."""
        record = self.accounts.user(user_id) if self.is_local_user(user_id) else None
        if record is None or record.deactivated:
            raise ApiError.of("M_NOT_FOUND", f"no profile for {user_id}")
        profile = {
            k: v
            for k, v in (("displayname", record.displayname), ("avatar_url", record.avatar_url))
            if v is not None
        }
        if field is not None:
            if field not in profile:
                raise ApiError.of("M_NOT_FOUND", f"{user_id} has no {field}")
            return {field: profile[field]}
        return profile

    async def query_directory(self, origin: str, alias: str) -> dict[str, Any]:
        """Federation ``/query/directory`` for a local alias: the room and its servers, ours first."""
        local = self.accounts.alias(alias)
        if local is None:
            raise ApiError.of("M_NOT_FOUND", f"room alias {alias} not found")
        room_id = local[0]
        others = sorted(self.store.joined_servers(room_id) - {self.server_name})
        return {"room_id": room_id, "servers": [self.server_name, *others]}

    def current_token(self) -> StreamToken:
        return StreamToken(
            self.engine.notifier.position, self.accounts.stream_position(), self.ephemeral.position
        )

    def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> None:
        """Delete devices with their tokens and keys, telling whoever tracks the user."""
        from p2pserver.clientapi import devicelists

        with self.e2ee.atomic():
            self.accounts.delete_devices(user_id, device_ids)
            announced = [d for d in device_ids if self.e2ee.delete_device(user_id, d)]
            if announced:
                devicelists.devices_changed(self, user_id, announced, deleted=True)

    def is_local_user(self, user_id: str) -> bool:
        return user_id.startswith("@") and user_id.partition(":")[2] == self.server_name

    def login_device(
        self, user_id: str, device_id: str | None, display_name: str | None, ip: str
    ) -> dict[str, Any]:
        """Create or reuse a device, give it a new access token; the login response."""
        device_id = device_id or _random_id(10)
        token = "p2p_" + secrets.token_urlsafe(32)
        self.accounts.add_device(
            user_id, device_id, display_name, hash_token(token), self.now_ms(), ip
        )
        return {
            "user_id": user_id,
            "access_token": token,
            "device_id": device_id,
            "home_server": self.server_name,
        }

    def authenticate(self, request: Request, *, required: bool) -> Requester | None:
        token = None
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError.of(
                    "M_UNKNOWN_TOKEN", "unrecognised Authorization header", soft_logout=False
                )
            token = value.strip()
        else:
            token = request.query_value("access_token")
        if not token:
            if required:
                raise ApiError.of("M_MISSING_TOKEN", "missing access token")
            return None
        owner = self.accounts.token_owner(hash_token(token))
        if owner is None:
            raise ApiError.of("M_UNKNOWN_TOKEN", "unknown access token", soft_logout=False)
        return Requester(*owner)

    # -- the request pipeline ----------------------------------------------------

    async def handle(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(200, b"{}")
        try:
            route, params = self.router.resolve(request.method, request.path)
            requester = self.authenticate(request, required=route.auth)
            result = await route.endpoint(Ctx(self, request, params, requester))
            status, body = result if isinstance(result, tuple) else (200, result)
            return Response(status, b"" if request.method == "HEAD" else json_bytes(body))
        except UserInteractiveAuth as exc:
            return Response(401, json_bytes(exc.body))
        except MatrixError as exc:
            return Response(status_for(exc), json_bytes(error_body(exc)))
        except Exception:
            logger.exception("client API: %s %s failed", request.method, request.path)
            return Response(
                500, json_bytes({"errcode": "M_UNKNOWN", "error": "internal server error"})
            )


def build_router() -> Router:
    from p2pserver.clientapi import (
        backup,
        directory,
        keys,
        rooms,
        session,
        startup,
        syncing,
        todevice,
    )

    router = Router()
    for module in (session, rooms, syncing, startup, directory, keys, todevice, backup):
        module.add_routes(router)
    return router


@dataclass(frozen=True)
class ClientApiHandle:
    """What :func:`serve_client_api` hands its caller once it listens."""

    api: ClientAPI
    url: str
    host: str
    port: int


async def serve_client_api(
    engine: RoomEngine,
    accounts: AccountStore | None,
    config: NodeConfig,
    *,
    remote: Remote | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the client API on ``config.client_listen`` until cancelled.

    Binding a non-loopback address needs ``config.allow_remote_clients``
    (else :class:`~p2pserver.node.config.ConfigError`) and logs a warning.
    Use with ``await nursery.start(serve_client_api, engine, None, config)``:
    it reports a :class:`ClientApiHandle` once the socket listens; port 0
    picks a free port (the handle has the real one).
    """
    from p2pserver.node.config import ConfigError, is_loopback_host, parse_host_port

    host, port = parse_host_port(config.client_listen)
    if not is_loopback_host(host):
        if not config.allow_remote_clients:
            raise ConfigError(
                f"client_listen {config.client_listen} is not a loopback address: set "
                "allow_remote_clients to let other machines reach this node's client API"
            )
        logger.warning(
            "the client API listens on %s: other machines can reach it (allow_remote_clients)",
            config.client_listen,
        )
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = int(listeners[0].socket.getsockname()[1])
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{bound_port}"
    api = ClientAPI(
        engine,
        accounts,
        registration_open=config.registration_open,
        remote=remote,
        base_url=url,
    )
    server = HttpServer(api.handle)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        logger.info("client API ready at %s (server name %s)", url, engine.server_name)
        task_status.started(ClientApiHandle(api, url, host, bound_port))
