"""Directories: room aliases, the public room list, the user directory.

Spec sections "Room aliases", "Listing rooms" and "User directory".

Rules:
- Aliases are ``#localpart:<server_name>``; this node creates only its own
  (400 M_INVALID_PARAM for another server's), for rooms it holds (404
  M_NOT_FOUND), and a taken one is 409 M_UNKNOWN. Another server's alias
  resolves through the :class:`Remote` hook.
- An alias is deleted by its creator or by a member whose power level
  allows sending ``m.room.canonical_alias`` (403 otherwise).
- A room is listed in /publicRooms when published (createRoom with
  ``visibility: public`` or ``PUT /directory/list/room``); publishing needs
  the user to be joined. Entries are the spec's ``PublishedRoomsChunk``,
  largest rooms first; ``since`` / ``next_batch`` are offsets (``o<n>``).
  ``generic_search_term`` matches name, topic and canonical alias.
  ``server`` naming another server asks it through the :class:`Remote` hook.
- /user_directory/search covers this node's users: ID or display name
  containing the term, case-insensitive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.routing import Ctx, Router, parse_decimal
from p2pserver.rooms.power_levels import get_required_power_level, get_user_power_level
from p2pserver.storage.accounts import AliasInUse

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

MAX_PUBLIC_ROOMS = 500


def add_routes(router: Router) -> None:
    router.add("PUT", "/directory/room/{roomAlias}", put_alias)
    router.add("GET", "/directory/room/{roomAlias}", get_alias, auth=False)
    router.add("DELETE", "/directory/room/{roomAlias}", delete_alias)
    router.add("GET", "/directory/list/room/{roomId}", get_visibility, auth=False)
    router.add("PUT", "/directory/list/room/{roomId}", put_visibility)
    router.add("GET", "/publicRooms", public_rooms_get, auth=False)
    router.add("POST", "/publicRooms", public_rooms_post)
    router.add("POST", "/user_directory/search", user_directory_search)


def _alias(ctx: Ctx) -> str:
    alias = ctx.params["roomAlias"]
    localpart, sep, server = alias[1:].partition(":")
    if not alias.startswith("#") or not sep or not localpart or not server or "\x00" in alias:
        raise ApiError.of("M_INVALID_PARAM", f"invalid room alias {alias!r}")
    if len(alias.encode("utf-8")) > 255:
        raise ApiError.of("M_INVALID_PARAM", "room alias is longer than 255 bytes")
    return alias


async def put_alias(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    alias = _alias(ctx)
    if alias.partition(":")[2] != api.server_name:
        raise ApiError.of("M_INVALID_PARAM", "this server can only create its own aliases")
    body = ctx.json()
    room_id = body.get("room_id")
    if not isinstance(room_id, str):
        raise ApiError.of("M_BAD_JSON", "room_id must be a string")
    if api.store.room(room_id) is None:
        raise ApiError.of("M_NOT_FOUND", f"room {room_id} is not known to this server")
    try:
        api.accounts.create_alias(alias, room_id, ctx.user_id)
    except AliasInUse:
        raise ApiError(409, "M_UNKNOWN", f"room alias {alias} already exists") from None
    return {}


async def get_alias(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    alias = _alias(ctx)
    local = api.accounts.alias(alias)
    if local is not None:
        servers = sorted(api.store.joined_servers(local[0]) | {api.server_name})
        return {"room_id": local[0], "servers": servers}
    if alias.partition(":")[2] != api.server_name and api.remote is not None:
        room_id, servers = await api.remote.query_alias(alias)
        return {"room_id": room_id, "servers": servers}
    raise ApiError.of("M_NOT_FOUND", f"room alias {alias} not found")


def _state_events(api: ClientAPI, room_id: str, keys: list[tuple[str, str]]) -> dict[Any, Any]:
    state = api.store.current_state(room_id)
    ids = {k: state[k] for k in keys if k in state}
    events = api.store.load_events(ids.values())
    return {k: events[i] for k, i in ids.items() if i in events}


def _may_manage(api: ClientAPI, room_id: str, user_id: str, event_type: str) -> bool:
    if api.store.current_membership(room_id, user_id) != "join":
        return False
    auth = _state_events(api, room_id, [("m.room.create", ""), ("m.room.power_levels", "")])
    return get_user_power_level(user_id, auth) >= get_required_power_level(auth, event_type, "")


async def delete_alias(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    alias = _alias(ctx)
    local = api.accounts.alias(alias)
    if local is None:
        raise ApiError.of("M_NOT_FOUND", f"room alias {alias} not found")
    room_id, creator = local
    if creator != ctx.user_id and not _may_manage(
        api, room_id, ctx.user_id, "m.room.canonical_alias"
    ):
        raise ApiError.of("M_FORBIDDEN", "you may not delete this alias")
    api.accounts.delete_alias(alias)
    return {}


async def get_visibility(ctx: Ctx) -> dict[str, Any]:
    room_id = ctx.params["roomId"]
    if ctx.api.store.room(room_id) is None:
        raise ApiError.of("M_NOT_FOUND", "room not found")
    return {"visibility": ctx.api.accounts.room_visibility(room_id)}


async def put_visibility(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = ctx.params["roomId"]
    if api.store.room(room_id) is None:
        raise ApiError.of("M_NOT_FOUND", "room not found")
    body = ctx.json()
    visibility = body.get("visibility", "public")
    if visibility not in ("public", "private"):
        raise ApiError.of("M_INVALID_PARAM", "visibility must be 'public' or 'private'")
    if not _may_manage(api, room_id, ctx.user_id, "m.room.canonical_alias"):
        raise ApiError.of("M_FORBIDDEN", "you may not change this room's visibility")
    api.accounts.set_room_visibility(room_id, visibility)
    return {}


# -- /publicRooms ------------------------------------------------------------------------


def public_room_chunk(api: ClientAPI, room_id: str) -> dict[str, Any]:
    """The ``PublicRoomsChunk`` of a room we hold (also what the node publishes)."""
    keys = [
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.avatar", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
        ("m.room.create", ""),
    ]
    events = _state_events(api, room_id, keys)

    def value(event_type: str, key: str) -> Any:
        event = events.get((event_type, ""))
        return event.content.get(key) if event is not None else None

    chunk: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": len(api.store.joined_members(room_id)),
        "world_readable": value("m.room.history_visibility", "history_visibility")
        == "world_readable",
        "guest_can_join": value("m.room.guest_access", "guest_access") == "can_join",
    }
    for out_key, (event_type, key) in {
        "name": ("m.room.name", "name"),
        "topic": ("m.room.topic", "topic"),
        "canonical_alias": ("m.room.canonical_alias", "alias"),
        "avatar_url": ("m.room.avatar", "url"),
        "join_rule": ("m.room.join_rules", "join_rule"),
        "room_type": ("m.room.create", "type"),
    }.items():
        found = value(event_type, key)
        if isinstance(found, str):
            chunk[out_key] = found
    return chunk


def _matches(chunk: Mapping[str, Any], term: str | None) -> bool:
    if not term:
        return True
    term = term.lower()
    return any(
        isinstance(chunk.get(k), str) and term in chunk[k].lower()
        for k in ("name", "topic", "canonical_alias")
    )


async def _public_rooms(
    ctx: Ctx, *, limit: int | None, since: str | None, server: str | None, term: str | None
) -> dict[str, Any]:
    api = ctx.api
    offset = 0
    if since:
        number = parse_decimal(since[1:]) if since.startswith("o") else None
        if number is None:
            raise ApiError.of("M_INVALID_PARAM", f"invalid since token {since!r}")
        offset = number
    if server is not None and server != api.server_name:
        # Another node's rooms: what it lists in the shared directory.
        if api.remote is None:
            raise ApiError.of("M_NOT_FOUND", f"server {server} cannot be reached")
        chunks = await api.remote.directory_rooms(server)
    else:
        chunks = [
            public_room_chunk(api, r) for r in api.accounts.public_room_ids() if api.store.room(r)
        ]
        if api.remote is not None:
            # Rooms other nodes list in the shared directory; ours take precedence.
            ours = {c["room_id"] for c in chunks}
            chunks += [c for c in await api.remote.directory_rooms() if c["room_id"] not in ours]
    chunks = [c for c in chunks if _matches(c, term)]
    chunks.sort(key=lambda c: (-c["num_joined_members"], c["room_id"]))
    size = min(limit, MAX_PUBLIC_ROOMS) if limit is not None else MAX_PUBLIC_ROOMS
    page = chunks[offset : offset + size]
    out: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(chunks)}
    if offset + size < len(chunks):
        out["next_batch"] = f"o{offset + size}"
    if offset > 0:
        out["prev_batch"] = f"o{max(0, offset - size)}"
    return out


async def public_rooms_get(ctx: Ctx) -> dict[str, Any]:
    limit = ctx.query("limit")
    return await _public_rooms(
        ctx,
        limit=ctx.query_int("limit", MAX_PUBLIC_ROOMS, minimum=0) if limit else None,
        since=ctx.query("since"),
        server=ctx.query("server"),
        term=None,
    )


async def public_rooms_post(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json(optional=True)
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ApiError.of("M_BAD_JSON", "limit must be a non-negative integer")
    since = body.get("since")
    if since is not None and not isinstance(since, str):
        raise ApiError.of("M_BAD_JSON", "since must be a string")
    flt = body.get("filter") or {}
    if not isinstance(flt, dict):
        raise ApiError.of("M_BAD_JSON", "filter must be an object")
    term = flt.get("generic_search_term")
    if term is not None and not isinstance(term, str):
        raise ApiError.of("M_BAD_JSON", "generic_search_term must be a string")
    server = body.get("server", ctx.query("server"))
    if server is not None and not isinstance(server, str):
        raise ApiError.of("M_BAD_JSON", "server must be a string")
    return await _public_rooms(ctx, limit=limit, since=since, server=server, term=term)


# -- user directory ---------------------------------------------------------------------


async def user_directory_search(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    term = body.get("search_term")
    if not isinstance(term, str):
        raise ApiError.of("M_BAD_JSON", "search_term must be a string")
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ApiError.of("M_BAD_JSON", "limit must be a non-negative integer")
    found = ctx.api.accounts.search_users(term, min(limit, 100) + 1)
    results = []
    for user in found[:limit]:
        entry: dict[str, Any] = {"user_id": user.user_id}
        if user.displayname is not None:
            entry["display_name"] = user.displayname
        if user.avatar_url is not None:
            entry["avatar_url"] = user.avatar_url
        results.append(entry)
    return {"results": results, "limited": len(found) > limit}
