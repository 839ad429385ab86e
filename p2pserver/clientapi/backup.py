"""Server-side key backup: ``/room_keys`` (spec: Client-Server API, "Server-side key backups").

The server keeps, per user, numbered backup versions and in each the
encrypted room keys clients put there; it cannot read them.

Rules:
- Versions: ``POST /room_keys/version`` makes a new version, which is the
  *current* one (the latest not deleted); versions are numbered 1, 2, ...
  and never reused. ``GET`` of the current version with none: 404
  M_NOT_FOUND. ``PUT`` changes only ``auth_data``: the ``algorithm`` must
  be the version's and a ``version`` in the body must be the path's (400
  M_INVALID_PARAM). ``DELETE`` removes a version and its keys, and
  succeeds again on a version deleted before; a version that never
  existed is 404 M_NOT_FOUND.
- Keys: every call names its ``version``. Storing keys needs the current
  version (else 403 M_WRONG_ROOM_KEYS_VERSION with ``current_version``);
  reading and deleting work on any live version. A deleted or unknown
  version is 404 M_NOT_FOUND, and so is a single session that is not
  there; a room or the whole backup without keys is ``{"sessions": {}}``
  / ``{"rooms": {}}``.
- A key for a session that is already stored replaces it only if it is
  better, by the spec's order: ``is_verified`` true wins; then the lower
  ``first_message_index``; then the lower ``forwarded_count``
  (:func:`is_better`).
- ``etag`` changes whenever the version's keys change and ``count`` is how
  many it holds; both are in every answer that changes keys and in the
  version's description.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeGuard

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.routing import Ctx, Router, parse_decimal
from p2pserver.rooms.canonical_json import MAX_SAFE_INTEGER
from p2pserver.storage.e2ee import BackupKey, BackupVersion

__all__ = ["is_better"]

MEGOLM_BACKUP_V1 = "m.megolm_backup.v1.curve25519-aes-sha2"


def add_routes(router: Router) -> None:
    router.add("POST", "/room_keys/version", create_version)
    router.add("GET", "/room_keys/version", get_current_version)
    router.add("GET", "/room_keys/version/{version}", get_version)
    router.add("PUT", "/room_keys/version/{version}", update_version)
    router.add("DELETE", "/room_keys/version/{version}", delete_version)
    for path in (
        "/room_keys/keys",
        "/room_keys/keys/{roomId}",
        "/room_keys/keys/{roomId}/{sessionId}",
    ):
        router.add("PUT", path, put_keys)
        router.add("GET", path, get_keys)
        router.add("DELETE", path, delete_keys)


def is_better(new: BackupKey, old: BackupKey) -> bool:
    """Whether ``new`` should replace ``old`` for the same session (the spec's order)."""
    if new.is_verified != old.is_verified:
        return new.is_verified
    if new.first_message_index != old.first_message_index:
        return new.first_message_index < old.first_message_index
    return new.forwarded_count < old.forwarded_count


def _version_number(text: str | None) -> int | None:
    return parse_decimal(text) if text is not None else None


def _describe(version: BackupVersion) -> dict[str, Any]:
    return {
        "algorithm": version.algorithm,
        "auth_data": version.auth_data,
        "count": version.count,
        "etag": str(version.etag),
        "version": str(version.version),
    }


def _algorithm_and_auth_data(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    algorithm, auth_data = body.get("algorithm"), body.get("auth_data")
    if algorithm is None or auth_data is None:
        raise ApiError.of("M_MISSING_PARAM", "algorithm and auth_data are required")
    if not isinstance(algorithm, str) or not isinstance(auth_data, dict):
        raise ApiError.of("M_BAD_JSON", "algorithm must be a string and auth_data an object")
    return algorithm, auth_data


# -- versions ----------------------------------------------------------------------------


async def create_version(ctx: Ctx) -> dict[str, Any]:
    algorithm, auth_data = _algorithm_and_auth_data(ctx.json())
    if algorithm != MEGOLM_BACKUP_V1:
        raise ApiError.of("M_INVALID_PARAM", f"unsupported backup algorithm {algorithm!r}")
    return {"version": str(ctx.api.e2ee.create_backup(ctx.user_id, algorithm, auth_data))}


async def get_current_version(ctx: Ctx) -> dict[str, Any]:
    version = ctx.api.e2ee.backup_version(ctx.user_id)
    if version is None:
        raise ApiError.of("M_NOT_FOUND", "no current backup version")
    return _describe(version)


def _live_version(ctx: Ctx, text: str | None) -> BackupVersion:
    number = _version_number(text)
    version = ctx.api.e2ee.backup_version(ctx.user_id, number) if number is not None else None
    if version is None:
        raise ApiError.of("M_NOT_FOUND", "unknown backup version")
    return version


async def get_version(ctx: Ctx) -> dict[str, Any]:
    return _describe(_live_version(ctx, ctx.params["version"]))


async def update_version(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    version = _live_version(ctx, ctx.params["version"])
    algorithm, auth_data = _algorithm_and_auth_data(body)
    if algorithm != version.algorithm:
        raise ApiError.of("M_INVALID_PARAM", "the algorithm does not match the backup's")
    if "version" in body and body["version"] != str(version.version):
        raise ApiError.of("M_INVALID_PARAM", "the version does not match the path")
    ctx.api.e2ee.update_backup(ctx.user_id, version.version, auth_data)
    return {}


async def delete_version(ctx: Ctx) -> dict[str, Any]:
    number = _version_number(ctx.params["version"])
    if number is None or not ctx.api.e2ee.backup_existed(ctx.user_id, number):
        raise ApiError.of("M_NOT_FOUND", "unknown backup version")
    ctx.api.e2ee.delete_backup(ctx.user_id, number)
    return {}


# -- keys --------------------------------------------------------------------------------


def _is_count(value: Any) -> TypeGuard[int]:
    """A JSON integer >= 0 (the parser takes any size; SQLite stores 63 bits)."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER


def _key(value: Any, where: str) -> BackupKey:
    if not isinstance(value, dict):
        raise ApiError.of("M_BAD_JSON", f"{where} must be a key backup object")
    first, forwarded = value.get("first_message_index"), value.get("forwarded_count")
    verified, data = value.get("is_verified"), value.get("session_data")
    if not (_is_count(first) and _is_count(forwarded)):
        raise ApiError.of(
            "M_BAD_JSON",
            f"{where}: first_message_index and forwarded_count are non-negative integers",
        )
    if not isinstance(verified, bool) or not isinstance(data, dict):
        raise ApiError.of(
            "M_BAD_JSON", f"{where}: is_verified is a boolean, session_data an object"
        )
    return BackupKey(first, forwarded, verified, data)


def _sessions(value: Any, room_id: str) -> dict[str, BackupKey]:
    if not isinstance(value, dict) or not isinstance(value.get("sessions"), dict):
        raise ApiError.of("M_BAD_JSON", f'{room_id}: expected {{"sessions": {{...}}}}')
    return {s: _key(k, f"{room_id}/{s}") for s, k in value["sessions"].items()}


def _given_keys(ctx: Ctx) -> list[tuple[str, str, BackupKey]]:
    body = ctx.json()
    room_id, session_id = ctx.params.get("roomId"), ctx.params.get("sessionId")
    if room_id is not None and session_id is not None:
        return [(room_id, session_id, _key(body, session_id))]
    if room_id is not None:
        return [(room_id, s, k) for s, k in _sessions(body, room_id).items()]
    rooms = body.get("rooms")
    if not isinstance(rooms, dict):
        raise ApiError.of("M_BAD_JSON", "rooms must be an object")
    return [(r, s, k) for r, value in rooms.items() for s, k in _sessions(value, r).items()]


def _better_only(
    ctx: Ctx, version: int, given: Iterable[tuple[str, str, BackupKey]]
) -> list[tuple[str, str, BackupKey]]:
    out = []
    for room_id, session_id, key in given:
        stored = ctx.api.e2ee.backup_keys(ctx.user_id, version, room_id, session_id)
        old = stored.get(room_id, {}).get(session_id)
        if old is None or is_better(key, old):
            out.append((room_id, session_id, key))
    return out


def _counts(ctx: Ctx, version: int) -> dict[str, Any]:
    described = _live_version(ctx, str(version))
    return {"etag": str(described.etag), "count": described.count}


async def put_keys(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    given = _given_keys(ctx)
    number = _version_number(ctx.query("version"))
    current = api.e2ee.backup_version(ctx.user_id)
    if current is None:
        raise ApiError.of("M_NOT_FOUND", "no backup version exists")
    if number != current.version:
        raise ApiError(
            403,
            "M_WRONG_ROOM_KEYS_VERSION",
            "wrong backup version",
            current_version=str(current.version),
        )
    with api.e2ee.atomic():
        api.e2ee.put_backup_keys(
            ctx.user_id, current.version, _better_only(ctx, current.version, given)
        )
    return _counts(ctx, current.version)


async def get_keys(ctx: Ctx) -> dict[str, Any]:
    version = _live_version(ctx, ctx.query("version"))
    room_id, session_id = ctx.params.get("roomId"), ctx.params.get("sessionId")
    stored = ctx.api.e2ee.backup_keys(ctx.user_id, version.version, room_id, session_id)
    if session_id is not None:
        key = stored.get(room_id or "", {}).get(session_id)
        if key is None:
            raise ApiError.of("M_NOT_FOUND", "no such key in the backup")
        return key.as_json()
    rooms = {
        r: {"sessions": {s: k.as_json() for s, k in sessions.items()}}
        for r, sessions in stored.items()
    }
    if room_id is not None:
        return rooms.get(room_id, {"sessions": {}})
    return {"rooms": rooms}


async def delete_keys(ctx: Ctx) -> dict[str, Any]:
    version = _live_version(ctx, ctx.query("version"))
    ctx.api.e2ee.delete_backup_keys(
        ctx.user_id, version.version, ctx.params.get("roomId"), ctx.params.get("sessionId")
    )
    return _counts(ctx, version.version)
