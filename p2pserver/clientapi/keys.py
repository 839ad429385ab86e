"""End-to-end encryption keys: upload, query, claim, changes and cross-signing.

Spec: Client-Server API, "End-to-End Encryption" (``/keys/upload``,
``/keys/query``, ``/keys/claim``, ``/keys/changes``,
``/keys/device_signing/upload``, ``/keys/signatures/upload``) and
Server-Server API, "End-to-End Encryption" (``/user/keys/query``,
``/user/keys/claim``) and "Device Management" (``/user/devices``), whose
answers for local users are :func:`federation_keys_query`,
:func:`federation_keys_claim` and :func:`federation_user_devices`.

Rules:
- Upload: ``device_keys`` must name the requester and the requesting
  device (400 M_INVALID_PARAM). One-time and fallback keys are named
  ``<algorithm>:<key_id>``; a one-time key ID stored with other contents
  is 400 M_INVALID_PARAM, and at most one fallback key per algorithm may
  be given. Everything of one upload is stored or nothing is. New or
  changed device keys are a device-list change (:mod:`.devicelists`). The
  answer counts the device's one-time keys per algorithm, with
  ``signed_curve25519`` always present (clients take its absence as "this
  server counts nothing").
- Query: local users from the store; remote users sharing a room with one
  of ours from the cached device list (fetched with ``user_devices`` when
  missing or stale); other remote users by ``/user/keys/query``. Each
  server is asked once, all at the same time, within the request's
  ``timeout`` (ms, default 10 s, at most :data:`MAX_TIMEOUT_MS`); a server
  that fails or is too slow is named in ``failures``, with what the cache
  holds for it still answered. Only well-formed keys of that server's own
  users are taken from an answer. Master keys carry the requester's own
  signatures of them (made with their user-signing key); a user's
  user-signing key is shown to that user only.
- Claim: one key per device and algorithm, local ones atomically
  (:meth:`~p2pserver.storage.e2ee.E2eeStore.claim_keys`: a one-time key
  is never handed out twice; without one, the fallback key), remote ones
  by ``/user/keys/claim`` under the same timeout and ``failures`` rule.
- Cross-signing upload uses User-Interactive Authentication
  (``m.login.password``) except when the user has no master key yet or
  the request holds exactly the keys already stored (spec v1.11, MSC3967).
  Each key must name the user, have its usage and exactly one
  ``ed25519:<key>`` public key; the self-signing and user-signing keys
  must be signed by the master key (given or stored; none: 400
  M_MISSING_PARAM; a bad signature: 400 M_INVALID_SIGNATURE), and no
  public key may equal one of the user's device IDs (403 M_FORBIDDEN).
- Signature upload: the signed object must equal the stored key (but for
  ``signatures`` and ``unsigned``). The user's own devices take signatures
  by their self-signing key, their own master key signatures by one of
  their devices, and other users' master keys signatures by their
  user-signing key (kept for the signer alone). Each signature is
  verified; failures are reported per key in ``failures``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import nacl.signing
import trio

from p2pserver.clientapi import devicelists
from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.routing import Ctx, Router
from p2pserver.clientapi.session import PASSWORD
from p2pserver.clientapi.streams import StreamToken
from p2pserver.rooms.base64 import decode_base64
from p2pserver.rooms.errors import MatrixError, SignatureError
from p2pserver.rooms.events import sender_server
from p2pserver.rooms.signing import verify_json
from p2pserver.rooms.validation import is_valid_user_id
from p2pserver.storage.e2ee import KeyConflict

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "federation_keys_claim",
    "federation_keys_query",
    "federation_user_devices",
    "key_counts",
]

DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
SIGNED_CURVE25519 = "signed_curve25519"


def add_routes(router: Router) -> None:
    router.add("POST", "/keys/upload", upload)
    router.add("POST", "/keys/query", query)
    router.add("POST", "/keys/claim", claim)
    router.add("GET", "/keys/changes", changes)
    router.add("POST", "/keys/device_signing/upload", device_signing_upload)
    router.add("POST", "/keys/signatures/upload", signatures_upload)


# -- shapes ------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError.of("M_BAD_JSON", f"{what} must be an object")
    return value


def _key_name(name: str) -> tuple[str, str]:
    algorithm, sep, key_id = name.partition(":")
    if not sep or not algorithm or not key_id:
        raise ApiError.of("M_BAD_JSON", f"key name {name!r} is not <algorithm>:<key_id>")
    return algorithm, key_id


def _check_key(name: str, key: Any) -> None:
    if isinstance(key, str):
        return
    if not isinstance(key, dict) or not isinstance(key.get("key"), str):
        raise ApiError.of("M_BAD_JSON", f"key {name!r} must be a string or a signed key object")


def _check_device_keys(keys: Any, user_id: str, device_id: str) -> dict[str, Any]:
    keys = _object(keys, "device_keys")
    if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        raise ApiError.of("M_INVALID_PARAM", "device_keys must be for your user and device")
    algorithms, public = keys.get("algorithms"), keys.get("keys")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise ApiError.of("M_BAD_JSON", "device_keys.algorithms must be a list of strings")
    if not isinstance(public, dict) or not all(isinstance(v, str) for v in public.values()):
        raise ApiError.of("M_BAD_JSON", "device_keys.keys must map key IDs to keys")
    if not isinstance(keys.get("signatures"), dict):
        raise ApiError.of("M_BAD_JSON", "device_keys.signatures must be an object")
    return keys


def _timeout(body: Mapping[str, Any]) -> float:
    value = body.get("timeout", DEFAULT_TIMEOUT_MS)
    if type(value) is not int:
        raise ApiError.of("M_BAD_JSON", "timeout must be an integer")
    return max(0, min(value, MAX_TIMEOUT_MS)) / 1000


def _unsigned(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a signature covers: all but ``signatures`` and ``unsigned``."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def public_key(key: Mapping[str, Any]) -> str | None:
    """A cross-signing key's public key: its one ``ed25519:<key>`` entry, else None."""
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None
    ((key_id, value),) = keys.items()
    return value if isinstance(value, str) and key_id == f"ed25519:{value}" else None


def _signed_by(obj: Mapping[str, Any], user_id: str, key_id: str, key: str) -> bool:
    """Whether ``obj`` carries a valid signature of ``user_id`` by ed25519 ``key`` (``key_id``)."""
    try:
        verify_key = nacl.signing.VerifyKey(decode_base64(key))
        verify_json(obj, user_id, {key_id: verify_key})
    except (SignatureError, ValueError):
        return False
    return True


def key_counts(api: ClientAPI, user_id: str, device_id: str) -> dict[str, int]:
    counts = api.e2ee.one_time_key_counts(user_id, device_id)
    counts.setdefault(SIGNED_CURVE25519, 0)
    return counts


# -- upload ------------------------------------------------------------------------------


async def upload(ctx: Ctx) -> dict[str, Any]:
    api, user_id, device_id = ctx.api, ctx.user_id, ctx.requester.device_id
    body = ctx.json()
    device_keys = body.get("device_keys")
    if device_keys is not None:
        device_keys = _check_device_keys(device_keys, user_id, device_id)
    one_time: list[tuple[str, str, Any]] = []
    for name, key in _object(body.get("one_time_keys", {}), "one_time_keys").items():
        _check_key(name, key)
        one_time.append((*_key_name(name), key))
    fallback: dict[str, tuple[str, Any]] = {}
    for name, key in _object(body.get("fallback_keys", {}), "fallback_keys").items():
        _check_key(name, key)
        algorithm, key_id = _key_name(name)
        if algorithm in fallback:
            raise ApiError.of("M_INVALID_PARAM", f"more than one {algorithm} fallback key")
        fallback[algorithm] = (key_id, key)
    with api.e2ee.atomic():
        changed = device_keys is not None and api.e2ee.set_device_keys(
            user_id, device_id, device_keys
        )
        try:
            api.e2ee.add_one_time_keys(user_id, device_id, one_time)
        except KeyConflict as exc:
            raise ApiError.of("M_INVALID_PARAM", str(exc)) from None
        for algorithm, (key_id, key) in fallback.items():
            api.e2ee.set_fallback_key(user_id, device_id, algorithm, key_id, key)
        if changed:
            devicelists.devices_changed(api, user_id, [device_id])
    return {"one_time_key_counts": key_counts(api, user_id, device_id)}


# -- query -------------------------------------------------------------------------------


def _with_name(keys: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    out = dict(keys)
    if name is not None:
        out["unsigned"] = {**(out.get("unsigned") or {}), "device_display_name": name}
    return out


class _KeysAnswer:
    """A /keys/query answer being put together."""

    def __init__(self, api: ClientAPI, requester: str | None) -> None:
        self.api = api
        self.requester = requester
        self.device_keys: dict[str, dict[str, Any]] = {}
        self.master_keys: dict[str, Any] = {}
        self.self_signing_keys: dict[str, Any] = {}
        self.user_signing_keys: dict[str, Any] = {}
        self.failures: dict[str, Any] = {}

    def cross_signing(self, user_id: str, keys: Mapping[str, Any]) -> None:
        master = keys.get("master")
        if master is not None:
            self.master_keys[user_id] = self._with_private_signatures(user_id, master)
        if keys.get("self_signing") is not None:
            self.self_signing_keys[user_id] = keys["self_signing"]
        if keys.get("user_signing") is not None and user_id == self.requester:
            self.user_signing_keys[user_id] = keys["user_signing"]

    def _with_private_signatures(self, user_id: str, master: Any) -> Any:
        """The master key with the requester's own signatures of it."""
        pub = public_key(master)
        if self.requester is None or self.requester == user_id or pub is None:
            return master
        signatures = self.api.e2ee.signatures_by(self.requester, user_id).get(pub)
        if not signatures:
            return master
        out = copy.deepcopy(master)
        out.setdefault("signatures", {}).setdefault(self.requester, {}).update(signatures)
        return out

    def local(self, user_id: str, device_ids: Sequence[str]) -> None:
        api = self.api
        if api.accounts.user(user_id) is None:
            return
        names = {d.device_id: d.display_name for d in api.accounts.devices(user_id)}
        self.device_keys[user_id] = {
            d: _with_name(k, names[d])
            for d, k in api.e2ee.device_keys(user_id, device_ids).items()
            if d in names
        }
        self.cross_signing(user_id, api.e2ee.cross_signing_keys(user_id))

    def cached(self, user_id: str, device_ids: Sequence[str]) -> bool:
        listed = self.api.e2ee.remote_device_list(user_id)
        if listed is None:
            return False
        self.device_keys[user_id] = {
            d: _with_name(keys, name)
            for d, (name, keys) in listed.devices.items()
            if keys is not None and (not device_ids or d in device_ids)
        }
        self.cross_signing(user_id, self.api.e2ee.cross_signing_keys(user_id))
        return True

    def remote(self, server: str, asked: Mapping[str, Sequence[str]], answer: Any) -> None:
        """Take a server's /user/keys/query answer: well-formed keys of its users asked for."""
        if not isinstance(answer, dict):
            return
        devices = answer.get("device_keys")
        for user_id, by_device in devices.items() if isinstance(devices, dict) else ():
            if user_id not in asked or sender_server(user_id) != server:
                continue
            wanted = asked[user_id]
            self.device_keys[user_id] = {
                d: k
                for d, k in (by_device.items() if isinstance(by_device, dict) else ())
                if devicelists.device_keys_of(user_id, d, k) and (not wanted or d in wanted)
            }
        for kind, usage in (("master_keys", "master"), ("self_signing_keys", "self_signing")):
            keys = answer.get(kind)
            for user_id, key in keys.items() if isinstance(keys, dict) else ():
                if (
                    user_id in asked
                    and sender_server(user_id) == server
                    and devicelists.cross_signing_key_of(user_id, key, usage)
                ):
                    self.cross_signing(user_id, {usage: key})

    def body(self, *, federation: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_keys": self.device_keys,
            "master_keys": self.master_keys,
            "self_signing_keys": self.self_signing_keys,
        }
        if not federation:
            out["user_signing_keys"] = self.user_signing_keys
            out["failures"] = self.failures
        return out


def _by_server(api: ClientAPI, users: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``users`` (valid user IDs only) into local and ``{server: {user: ...}}``."""
    local: dict[str, Any] = {}
    remote: dict[str, dict[str, Any]] = {}
    for user_id, value in users.items():
        if not is_valid_user_id(user_id):
            continue
        if api.is_local_user(user_id):
            local[user_id] = value
        else:
            remote.setdefault(sender_server(user_id), {})[user_id] = value
    return local, remote


def _failure(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


async def _ask_servers(
    servers: Sequence[str],
    ask: Any,
    failures: dict[str, Any],
    timeout: float,
) -> None:
    """Run ``await ask(server)`` for every server at once; name the slow ones in ``failures``."""

    async def one(server: str) -> None:
        with trio.move_on_after(timeout) as scope:
            await ask(server)
        if scope.cancelled_caught:
            failures[server] = _failure(504, "timed out")

    async with trio.open_nursery() as nursery:
        for server in servers:
            nursery.start_soon(one, server)


async def query(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    body = ctx.json()
    if "device_keys" not in body:
        raise ApiError.of("M_MISSING_PARAM", "missing device_keys")
    asked = _object(body["device_keys"], "device_keys")
    for devices in asked.values():
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise ApiError.of("M_BAD_JSON", "device_keys maps user IDs to lists of device IDs")
    timeout = _timeout(body)
    answer = _KeysAnswer(api, ctx.user_id)
    local, remote = _by_server(api, asked)
    for user_id, devices in local.items():
        answer.local(user_id, devices)

    async def ask(server: str) -> None:
        users = remote[server]
        failed = api.e2ee_remote is None
        others: dict[str, list[str]] = {}
        for user_id, devices in users.items():
            if not devicelists.shares_room(api, user_id):
                others[user_id] = devices
                continue
            listed = api.e2ee.remote_device_list(user_id)
            if (listed is None or listed.stale) and not await devicelists.refresh(api, user_id):
                failed = True
            answer.cached(user_id, devices)
        if others and api.e2ee_remote is not None:
            try:
                answer.remote(server, others, await api.e2ee_remote.keys_query(server, others))
            except MatrixError:
                failed = True
        if failed:
            answer.failures[server] = _failure(503, f"{server} could not be reached")

    await _ask_servers(sorted(remote), ask, answer.failures, timeout)
    return answer.body()


def federation_keys_query(
    api: ClientAPI, device_keys: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """The federation ``/user/keys/query`` answer for local users."""
    answer = _KeysAnswer(api, None)
    for user_id, devices in device_keys.items():
        if api.is_local_user(user_id):
            answer.local(user_id, devices)
    return answer.body(federation=True)


def federation_user_devices(api: ClientAPI, user_id: str) -> dict[str, Any]:
    """The federation ``/user/devices/{userId}`` answer for a local user (M_NOT_FOUND if none)."""
    if not api.is_local_user(user_id) or api.accounts.user(user_id) is None:
        raise ApiError.of("M_NOT_FOUND", f"no user {user_id} here")
    names = {d.device_id: d.display_name for d in api.accounts.devices(user_id)}
    devices = []
    for device_id, keys in api.e2ee.device_keys(user_id).items():
        if device_id not in names:
            continue
        item: dict[str, Any] = {"device_id": device_id, "keys": keys}
        if names[device_id] is not None:
            item["device_display_name"] = names[device_id]
        devices.append(item)
    out: dict[str, Any] = {
        "user_id": user_id,
        "stream_id": api.e2ee.device_list_stream_id(user_id),
        "devices": devices,
    }
    cross_signing = api.e2ee.cross_signing_keys(user_id)
    for key_type in ("master", "self_signing"):
        if key_type in cross_signing:
            out[f"{key_type}_key"] = cross_signing[key_type]
    return out


# -- claim -------------------------------------------------------------------------------


def _claim_local(
    api: ClientAPI, asked: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, dict[str, Any]]]:
    requests = [
        (user_id, device_id, algorithm)
        for user_id, devices in asked.items()
        if api.is_local_user(user_id)
        for device_id, algorithm in devices.items()
    ]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (user_id, device_id), (name, key) in api.e2ee.claim_keys(requests).items():
        out.setdefault(user_id, {})[device_id] = {name: key}
    return out


async def claim(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    body = ctx.json()
    if "one_time_keys" not in body:
        raise ApiError.of("M_MISSING_PARAM", "missing one_time_keys")
    asked = _object(body["one_time_keys"], "one_time_keys")
    for devices in asked.values():
        if not isinstance(devices, dict) or not all(isinstance(a, str) for a in devices.values()):
            raise ApiError.of("M_BAD_JSON", "one_time_keys maps user IDs to {device ID: algorithm}")
    timeout = _timeout(body)
    local, remote = _by_server(api, asked)
    keys = _claim_local(api, local)
    failures: dict[str, Any] = {}

    async def ask(server: str) -> None:
        if api.e2ee_remote is None:
            failures[server] = _failure(503, "other servers are out of reach")
            return
        try:
            answer = await api.e2ee_remote.keys_claim(server, remote[server])
        except MatrixError:
            failures[server] = _failure(503, f"{server} could not be reached")
            return
        claimed = answer.get("one_time_keys") if isinstance(answer, dict) else None
        for user_id, by_device in claimed.items() if isinstance(claimed, dict) else ():
            if user_id in remote[server] and isinstance(by_device, dict):
                keys[user_id] = {
                    d: k
                    for d, k in by_device.items()
                    if d in remote[server][user_id] and isinstance(k, dict)
                }

    await _ask_servers(sorted(remote), ask, failures, timeout)
    return {"one_time_keys": keys, "failures": failures}


def federation_keys_claim(
    api: ClientAPI, one_time_keys: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The federation ``/user/keys/claim`` answer for local users."""
    return {"one_time_keys": _claim_local(api, one_time_keys)}


# -- changes -----------------------------------------------------------------------------


async def changes(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    tokens = []
    for name in ("from", "to"):
        text = ctx.query(name)
        if not text:
            raise ApiError.of("M_MISSING_PARAM", f"missing {name}")
        tokens.append(StreamToken.parse(text, name))
    since, upto = tokens
    now = api.current_token()
    changed, left = devicelists.changes_between(
        api,
        ctx.user_id,
        since_events=since.events,
        since_account=since.account,
        upto_events=min(upto.events, now.events),
        upto_account=min(upto.account, now.account),
    )
    return {"changed": changed, "left": left}


# -- cross-signing -----------------------------------------------------------------------


def _check_cross_signing_key(key: Any, user_id: str, usage: str) -> dict[str, Any]:
    key = _object(key, f"{usage}_key")
    if key.get("user_id") != user_id:
        raise ApiError.of("M_INVALID_PARAM", f"the {usage} key must be for your user")
    if not isinstance(key.get("usage"), list) or usage not in key["usage"]:
        raise ApiError.of("M_INVALID_PARAM", f"the {usage} key must have usage {usage}")
    if public_key(key) is None:
        raise ApiError.of("M_INVALID_PARAM", f"the {usage} key needs exactly one ed25519 key")
    return key


async def device_signing_upload(ctx: Ctx) -> dict[str, Any]:
    api, user_id = ctx.api, ctx.user_id
    body = ctx.json()
    given = {
        key_type: _check_cross_signing_key(body[f"{key_type}_key"], user_id, key_type)
        for key_type in ("master", "self_signing", "user_signing")
        if body.get(f"{key_type}_key") is not None
    }
    stored = api.e2ee.cross_signing_keys(user_id)
    if "master" in stored and any(stored.get(t) != k for t, k in given.items()):
        await api.uia.check(ctx, "device_signing_upload", [[PASSWORD]], user_id=user_id)
    master = given.get("master", stored.get("master"))
    master_pub = public_key(master) if master is not None else None
    for key_type in ("self_signing", "user_signing"):
        if key_type not in given:
            continue
        if master_pub is None:
            raise ApiError.of("M_MISSING_PARAM", "no master key is available")
        if not _signed_by(given[key_type], user_id, f"ed25519:{master_pub}", master_pub):
            raise ApiError.of(
                "M_INVALID_SIGNATURE", f"the {key_type} key is not signed by the master key"
            )
    device_ids = {d.device_id for d in api.accounts.devices(user_id)}
    if any(public_key(k) in device_ids for k in given.values()):
        raise ApiError.of("M_FORBIDDEN", "a cross-signing key may not be one of your device IDs")
    new = {t: k for t, k in given.items() if stored.get(t) != k}
    if new:
        with api.e2ee.atomic():
            for key_type, key in new.items():
                api.e2ee.set_cross_signing_key(user_id, key_type, key)
            devicelists.signing_keys_changed(
                api, user_id, public=bool(new.keys() & {"master", "self_signing"})
            )
    return {}


def _merge_signatures(key: dict[str, Any], signer: str, signatures: Mapping[str, str]) -> None:
    key.setdefault("signatures", {}).setdefault(signer, {}).update(signatures)


async def signatures_upload(ctx: Ctx) -> dict[str, Any]:
    api, requester = ctx.api, ctx.user_id
    body = ctx.json()
    failures: dict[str, dict[str, Any]] = {}

    def fail(user_id: str, key_id: str, errcode: str, error: str) -> None:
        failures.setdefault(user_id, {})[key_id] = {"errcode": errcode, "error": error}

    own = api.e2ee.cross_signing_keys(requester)
    self_signing = public_key(own["self_signing"]) if "self_signing" in own else None
    user_signing = public_key(own["user_signing"]) if "user_signing" in own else None
    devices_signed: list[str] = []
    master_signed = others_signed = False
    with api.e2ee.atomic():
        for user_id, by_key in _object(body, "body").items():
            for key_id, signed in _object(by_key, user_id).items():
                if not isinstance(signed, dict) or not isinstance(signed.get("signatures"), dict):
                    fail(user_id, key_id, "M_BAD_JSON", "not a signed object")
                    continue
                new = signed["signatures"].get(requester)
                if not isinstance(new, dict):
                    fail(user_id, key_id, "M_INVALID_SIGNATURE", "no signature of yours")
                    continue
                if user_id == requester:
                    devices = api.e2ee.device_keys(requester, [key_id])
                    if key_id in devices:
                        target = devices[key_id]
                        signers = {f"ed25519:{self_signing}": self_signing} if self_signing else {}
                    elif "master" in own and public_key(own["master"]) == key_id:
                        target = own["master"]
                        signers = {
                            f"ed25519:{d}": k["keys"].get(f"ed25519:{d}")
                            for d, k in api.e2ee.device_keys(requester).items()
                        }
                    else:
                        fail(user_id, key_id, "M_NOT_FOUND", "no such key")
                        continue
                else:
                    master = api.e2ee.cross_signing_keys(user_id).get("master")
                    if master is None or public_key(master) != key_id:
                        fail(user_id, key_id, "M_NOT_FOUND", "no such master key")
                        continue
                    target = master
                    signers = {f"ed25519:{user_signing}": user_signing} if user_signing else {}
                if _unsigned(signed) != _unsigned(target):
                    fail(user_id, key_id, "M_INVALID_PARAM", "the object differs from the key")
                    continue
                valid = {
                    sig_id: sig
                    for sig_id, sig in new.items()
                    if isinstance(sig, str)
                    and isinstance(signers.get(sig_id), str)
                    and _signed_by(signed, requester, sig_id, signers[sig_id])
                }
                if not valid:
                    fail(user_id, key_id, "M_INVALID_SIGNATURE", "invalid signature")
                    continue
                if user_id != requester:
                    for sig_id, sig in valid.items():
                        api.e2ee.add_signature(requester, user_id, key_id, sig_id, sig)
                    others_signed = True
                elif key_id in api.e2ee.device_keys(requester, [key_id]):
                    _merge_signatures(target, requester, valid)
                    api.e2ee.set_device_keys(requester, key_id, target)
                    devices_signed.append(key_id)
                else:
                    _merge_signatures(target, requester, valid)
                    api.e2ee.set_cross_signing_key(requester, "master", target)
                    master_signed = True
        if devices_signed:
            devicelists.devices_changed(api, requester, devices_signed)
        if master_signed or others_signed:
            devicelists.signing_keys_changed(api, requester, public=master_signed)
    return {"failures": failures}
