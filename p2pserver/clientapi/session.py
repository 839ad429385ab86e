"""Session endpoints: versions, capabilities, login, registration, devices.

Spec: Client-Server API, "API Standards", "Client Authentication",
"Account registration and management", "Capabilities negotiation" and
"Device Management".

Rules:
- Users are ``@localpart:<server_name>``; a new localpart follows the
  grammar of new user IDs (``a-z 0-9 . _ = - / +``) and the whole ID is at
  most 255 bytes, else 400 M_INVALID_USERNAME. A taken one: 400
  M_USER_IN_USE (checked before User-Interactive Authentication, so a
  client learns it at once).
- Registration is open unless the node's configuration closes it (403
  M_FORBIDDEN); guests are not supported (403 M_GUEST_ACCESS_FORBIDDEN).
  Its UIA has one flow, ``m.login.dummy``; a client may send that stage
  with its first request (as matrix-nio does) and is registered at once.
- Login: ``m.login.password`` with an ``m.id.user`` identifier (localpart
  or full user ID) or the legacy top-level ``user``. A wrong user or
  password is the same 403 M_FORBIDDEN, so the answer does not tell which.
- Each login makes (or reuses, with ``device_id``) a device with a fresh
  access token; logout deletes the device, its token and its end-to-end
  keys and messages (:meth:`ClientAPI.delete_devices`, which tells the
  servers tracking the user's devices, as does renaming a device with keys).
- Changing a password and deleting devices need UIA with
  ``m.login.password`` for the requester's own account.

User-Interactive Authentication: :class:`UiaSessions` keeps sessions in
memory (they last :data:`UIA_SESSION_SECONDS`); each is bound to what it
authorises (an operation and user), so a session completed for one request
cannot authorise another.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pserver.clientapi import devicelists
from p2pserver.clientapi.errors import ApiError, UserInteractiveAuth
from p2pserver.clientapi.passwords import MAX_PASSWORD_BYTES, check_password, hash_password
from p2pserver.clientapi.routing import V1_PREFIXES, Ctx, Router
from p2pserver.rooms.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from p2pserver.rooms.validation import is_valid_user_id
from p2pserver.storage.accounts import UserExists

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

# The spec versions whose endpoints we serve (as far as this node implements them).
SPEC_VERSIONS = [
    "r0.5.0",
    "r0.6.0",
    "r0.6.1",
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
    "v1.12",
]

UIA_SESSION_SECONDS = 600
MAX_UIA_SESSIONS = 1000
DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"


def add_routes(router: Router) -> None:
    router.add("GET", "/_matrix/client/versions", versions, auth=False, prefixes=())
    router.add("GET", "/.well-known/matrix/client", well_known, auth=False, prefixes=())
    router.add("GET", "/capabilities", capabilities)
    router.add("GET", "/login", login_flows, auth=False)
    router.add("POST", "/login", login, auth=False)
    router.add("POST", "/register", register, auth=False)
    router.add("GET", "/register/available", register_available, auth=False)
    router.add("POST", "/logout", logout)
    router.add("POST", "/logout/all", logout_all)
    router.add("GET", "/account/whoami", whoami)
    router.add("POST", "/account/password", change_password)
    router.add("GET", "/devices", list_devices)
    router.add("GET", "/devices/{deviceId}", get_device)
    router.add("PUT", "/devices/{deviceId}", update_device)
    router.add("DELETE", "/devices/{deviceId}", delete_device)
    router.add("POST", "/delete_devices", delete_devices)
    router.add("GET", "/auth_metadata", no_oauth, auth=False, prefixes=V1_PREFIXES)


# -- discovery ---------------------------------------------------------------------


async def versions(ctx: Ctx) -> dict[str, Any]:
    return {"versions": SPEC_VERSIONS, "unstable_features": {}}


async def well_known(ctx: Ctx) -> dict[str, Any]:
    host = ctx.request.headers.get("host")
    base_url = f"http://{host}" if host else ctx.api.base_url
    return {"m.homeserver": {"base_url": base_url or ""}}


async def capabilities(ctx: Ctx) -> dict[str, Any]:
    return {
        "capabilities": {
            "m.room_versions": {
                "default": DEFAULT_ROOM_VERSION.identifier,
                "available": dict.fromkeys(KNOWN_ROOM_VERSIONS, "stable"),
            },
            "m.change_password": {"enabled": True},
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            "m.3pid_changes": {"enabled": False},
            "m.get_login_token": {"enabled": False},
        }
    }


async def no_oauth(ctx: Ctx) -> dict[str, Any]:
    # Spec v1.15: servers without OAuth 2.0 answer 404 M_UNRECOGNIZED.
    raise ApiError(404, "M_UNRECOGNIZED", "this server does not use OAuth 2.0")


# -- login -------------------------------------------------------------------------


async def login_flows(ctx: Ctx) -> dict[str, Any]:
    return {"flows": [{"type": PASSWORD}]}


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError.of("M_MISSING_PARAM", f"missing {key}")
        return None
    if not isinstance(value, str):
        raise ApiError.of("M_BAD_JSON", f"{key} must be a string")
    return value


def _user_from_identifier(api: ClientAPI, body: dict[str, Any]) -> str:
    """The user ID a login or UIA password stage names (identifier or legacy ``user``)."""
    identifier = body.get("identifier")
    if identifier is not None:
        if not isinstance(identifier, dict):
            raise ApiError.of("M_BAD_JSON", "identifier must be an object")
        if identifier.get("type") != "m.id.user":
            raise ApiError.of("M_UNKNOWN", "only m.id.user identifiers are supported")
        user = _string(identifier, "user", required=True)
    else:
        user = _string(body, "user", required=True)
    assert user is not None
    return user if user.startswith("@") else f"@{user.lower()}:{api.server_name}"


async def _verify_password(api: ClientAPI, user_id: str, password: str) -> bool:
    record = api.accounts.user(user_id)
    stored = record.password_hash if record is not None else None
    # Hash even for an unknown user so the timing does not tell.
    ok = await trio.to_thread.run_sync(check_password, password, stored or _DUMMY_HASH)
    return ok and stored is not None


_DUMMY_HASH = "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


async def login(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    login_type = body.get("type")
    if login_type != PASSWORD:
        raise ApiError.of("M_UNKNOWN", f"unsupported login type {login_type!r}")
    user_id = _user_from_identifier(ctx.api, body)
    password = _string(body, "password", required=True)
    device_id = _string(body, "device_id")
    display_name = _string(body, "initial_device_display_name")
    assert password is not None
    if not await _verify_password(ctx.api, user_id, password):
        raise ApiError.of("M_FORBIDDEN", "invalid username or password")
    record = ctx.api.accounts.user(user_id)
    if record is not None and record.deactivated:
        raise ApiError.of("M_USER_DEACTIVATED", "this account has been deactivated")
    return ctx.api.login_device(user_id, device_id, display_name, ctx.request.client)


# -- registration ------------------------------------------------------------------


def _new_user_id(api: ClientAPI, localpart: str) -> str:
    user_id = f"@{localpart}:{api.server_name}"
    if localpart.startswith("_") or not is_valid_user_id(user_id, historical=False):
        raise ApiError.of(
            "M_INVALID_USERNAME",
            "user names may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'"
            " (not starting with '_')",
        )
    if api.accounts.user(user_id) is not None:
        raise ApiError.of("M_USER_IN_USE", "that user name is taken")
    return user_id


async def register_available(ctx: Ctx) -> dict[str, Any]:
    username = ctx.query("username")
    if not username:
        raise ApiError.of("M_MISSING_PARAM", "missing username")
    _new_user_id(ctx.api, username)
    return {"available": True}


async def register(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    body = ctx.json()
    kind = ctx.query("kind") or "user"
    if kind == "guest":
        raise ApiError.of("M_GUEST_ACCESS_FORBIDDEN", "guest access is not supported")
    if kind != "user":
        raise ApiError.of("M_INVALID_PARAM", f"unknown kind {kind!r}")
    if not api.registration_open:
        raise ApiError.of("M_FORBIDDEN", "registration is closed on this node")
    username = _string(body, "username")
    password = _string(body, "password")
    device_id = _string(body, "device_id")
    display_name = _string(body, "initial_device_display_name")
    inhibit_login = body.get("inhibit_login", False)
    if not isinstance(inhibit_login, bool):
        raise ApiError.of("M_BAD_JSON", "inhibit_login must be a boolean")
    if password is not None and len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise ApiError.of("M_INVALID_PARAM", f"password longer than {MAX_PASSWORD_BYTES} bytes")
    if username is not None:
        user_id = _new_user_id(api, username.lower())
    await api.uia.check(ctx, "register", [[DUMMY]], user_id=None)
    if username is None:
        user_id = _new_user_id(api, "user" + secrets.token_hex(6))
    password_hash = None
    if password is not None:
        password_hash = await trio.to_thread.run_sync(hash_password, password)
    try:
        # The account and its first login commit together: a crash between
        # them would leave the name taken and the client with no way in.
        with api.accounts.atomic():
            api.accounts.create_user(user_id, password_hash, api.now_ms())
            if inhibit_login:
                return {"user_id": user_id, "home_server": api.server_name}
            return api.login_device(user_id, device_id, display_name, ctx.request.client)
    except UserExists:  # taken while we hashed
        raise ApiError.of("M_USER_IN_USE", "that user name is taken") from None


# -- the session ---------------------------------------------------------------------


async def logout(ctx: Ctx) -> dict[str, Any]:
    ctx.api.delete_devices(ctx.user_id, [ctx.requester.device_id])
    return {}


async def logout_all(ctx: Ctx) -> dict[str, Any]:
    accounts = ctx.api.accounts
    ctx.api.delete_devices(ctx.user_id, [d.device_id for d in accounts.devices(ctx.user_id)])
    return {}


async def whoami(ctx: Ctx) -> dict[str, Any]:
    return {"user_id": ctx.user_id, "device_id": ctx.requester.device_id, "is_guest": False}


async def change_password(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    new_password = _string(body, "new_password", required=True)
    assert new_password is not None
    if len(new_password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise ApiError.of("M_INVALID_PARAM", f"password longer than {MAX_PASSWORD_BYTES} bytes")
    logout_devices = body.get("logout_devices", True)
    if not isinstance(logout_devices, bool):
        raise ApiError.of("M_BAD_JSON", "logout_devices must be a boolean")
    await ctx.api.uia.check(ctx, "password", [[PASSWORD]], user_id=ctx.user_id)
    password_hash = await trio.to_thread.run_sync(hash_password, new_password)
    accounts = ctx.api.accounts
    accounts.set_password_hash(ctx.user_id, password_hash)
    if logout_devices:
        others = [
            d.device_id
            for d in accounts.devices(ctx.user_id)
            if d.device_id != ctx.requester.device_id
        ]
        ctx.api.delete_devices(ctx.user_id, others)
    return {}


# -- devices -----------------------------------------------------------------------


def _device_json(device: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"device_id": device.device_id}
    if device.display_name is not None:
        out["display_name"] = device.display_name
    if device.last_seen_ip is not None:
        out["last_seen_ip"] = device.last_seen_ip
    if device.last_seen_ts is not None:
        out["last_seen_ts"] = device.last_seen_ts
    return out


async def list_devices(ctx: Ctx) -> dict[str, Any]:
    return {"devices": [_device_json(d) for d in ctx.api.accounts.devices(ctx.user_id)]}


def _own_device(ctx: Ctx) -> Any:
    device = ctx.api.accounts.device(ctx.user_id, ctx.params["deviceId"])
    if device is None:
        raise ApiError.of("M_NOT_FOUND", "no such device")
    return device


async def get_device(ctx: Ctx) -> dict[str, Any]:
    return _device_json(_own_device(ctx))


async def update_device(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    device = _own_device(ctx)
    name = _string(body, "display_name")
    if name is not None:
        with ctx.api.e2ee.atomic():
            ctx.api.accounts.rename_device(ctx.user_id, device.device_id, name)
            if ctx.api.e2ee.device_keys(ctx.user_id, [device.device_id]):
                devicelists.devices_changed(ctx.api, ctx.user_id, [device.device_id])
    return {}


async def delete_device(ctx: Ctx) -> dict[str, Any]:
    ctx.json(optional=True)
    device_id = ctx.params["deviceId"]
    if ctx.api.accounts.device(ctx.user_id, device_id) is None:
        raise ApiError.of("M_NOT_FOUND", "no such device")
    await ctx.api.uia.check(ctx, f"delete_device {device_id}", [[PASSWORD]], user_id=ctx.user_id)
    ctx.api.delete_devices(ctx.user_id, [device_id])
    return {}


async def delete_devices(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    devices = body.get("devices")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise ApiError.of("M_BAD_JSON", "devices must be a list of device IDs")
    await ctx.api.uia.check(
        ctx, "delete_devices " + " ".join(sorted(devices)), [[PASSWORD]], user_id=ctx.user_id
    )
    ctx.api.delete_devices(ctx.user_id, devices)
    return {}


# -- User-Interactive Authentication --------------------------------------------------


@dataclass
class UiaSession:
    operation: str
    user_id: str | None
    created: float
    completed: list[str] = field(default_factory=list)


class UiaSessions:
    """In-memory UIA sessions (spec: "User-Interactive Authentication API")."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._sessions: dict[str, UiaSession] = {}

    def _new(self, operation: str, user_id: str | None) -> tuple[str, UiaSession]:
        now = self.clock()
        for sid in [s for s, v in self._sessions.items() if now - v.created > UIA_SESSION_SECONDS]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_UIA_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(16)
        session = self._sessions[sid] = UiaSession(operation, user_id, now)
        return sid, session

    async def check(
        self, ctx: Ctx, operation: str, flows: Sequence[Sequence[str]], *, user_id: str | None
    ) -> None:
        """Return when the request's ``auth`` completes a flow; else raise the 401 answer."""
        body = ctx.json(optional=True)
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise ApiError.of("M_BAD_JSON", "auth must be an object")
        sid = auth.get("session") if auth else None
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is not None and (
            session.operation != operation
            or session.user_id != user_id
            or self.clock() - session.created > UIA_SESSION_SECONDS
        ):
            session = None
        if session is None:
            sid, session = self._new(operation, user_id)
        assert isinstance(sid, str)

        def challenge(errcode: str | None = None, error: str | None = None) -> UserInteractiveAuth:
            answer: dict[str, Any] = {
                "flows": [{"stages": list(f)} for f in flows],
                "params": {},
                "session": sid,
            }
            if session.completed:
                answer["completed"] = list(session.completed)
            if errcode is not None:
                answer["errcode"] = errcode
                answer["error"] = error
            return UserInteractiveAuth(answer)

        if auth is not None:
            stage = auth.get("type")
            allowed = {s for f in flows for s in f}
            if not isinstance(stage, str) or stage not in allowed:
                raise challenge("M_UNRECOGNIZED", f"unsupported authentication stage {stage!r}")
            if stage == PASSWORD:
                await self._password_stage(ctx, auth, user_id, challenge)
            if stage not in session.completed:
                session.completed.append(str(stage))
        for flow in flows:
            if all(s in session.completed for s in flow):
                del self._sessions[sid]
                return
        raise challenge()

    async def _password_stage(
        self,
        ctx: Ctx,
        auth: dict[str, Any],
        user_id: str | None,
        challenge: Callable[[str, str], UserInteractiveAuth],
    ) -> None:
        claimed = _user_from_identifier(ctx.api, auth)
        password = _string(auth, "password", required=True)
        assert password is not None
        if claimed != user_id or not await _verify_password(ctx.api, claimed, password):
            raise challenge("M_FORBIDDEN", "invalid password")
