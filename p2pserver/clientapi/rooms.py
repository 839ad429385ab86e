"""Room endpoints: create, membership, send, state, redact, read (spec: "Rooms").

Every write goes through the room engine
(:class:`~p2pserver.engine.engine.RoomEngine`), which builds, authorises
(the room version's auth rules: M_FORBIDDEN if refused), stores and queues
the event; reads go through :class:`~p2pserver.clientapi.views.RoomViews`
(history visibility, redactions).

Rules beyond the engine's:
- ``PUT .../send/{type}/{txnId}`` and ``.../redact/{eventId}/{txnId}`` are
  idempotent per device: a repeated transaction ID answers the first event
  ID without sending again (spec: "Transaction identifiers"). The
  transaction ID is recorded in the transaction that stores the event, so
  a client retrying after a crash that cut off its answer gets that event,
  never a second one.
- createRoom: an alias from ``room_alias_name`` must be free before the
  room is made (400 M_ROOM_IN_USE); it is then stored, and ``visibility:
  public`` publishes the room in the directory.
- Joins: by room ID or alias (local, else through the :class:`Remote`
  hook). A room this node does not hold, or that refuses a local join
  because only other servers can admit the user, is joined through the
  hook (make_join/send_join) when there is one.
- ``m.room.canonical_alias`` may only name local aliases that point at the
  room (400 M_BAD_ALIAS), as the spec asks of servers.
- ``/messages`` paginates by stream position (``dir`` b or f, ``from`` /
  ``to`` tokens as issued by /sync and /messages), skipping events the user
  may not see; ``end`` is left out when no further events exist (nor can
  be fetched from other servers). Paging
  back past the oldest event held asks other servers for older history
  first (:meth:`Remote.backfill`, at most :data:`BACKFILL_ROUNDS` times per
  request), so a room joined late shows what came before.
- Knocks: on a room this node is in, a local event; on a room only other
  servers are in, through one of them (``via`` / ``server_name``, an
  alias's servers, else discovery) with make_knock/send_knock. The room's
  stripped state it answers is kept with the knock
  (:mod:`p2pserver.storage.knocks`) for /sync's ``knock`` section; leaving
  the room withdraws such a knock through the same server.
- Typing, receipts and read markers need the user to be joined.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from p2pserver.clientapi.edus import queue_receipt, queue_typing
from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.filters import EventFilter, parse_room_event_filter
from p2pserver.clientapi.formats import client_event
from p2pserver.clientapi.routing import Ctx, Router
from p2pserver.clientapi.streams import HISTORY_START, STREAM_END, StreamToken
from p2pserver.clientapi.sync import SyncEvent
from p2pserver.clientapi.views import RoomViews
from p2pserver.rooms.errors import AuthError, MatrixError
from p2pserver.rooms.validation import is_valid_user_id
from p2pserver.storage.accounts import AliasInUse
from p2pserver.storage.invites import InviteStates
from p2pserver.storage.knocks import RemoteKnock, RemoteKnocks, standing_knocks

if TYPE_CHECKING:
    from p2pserver.clientapi.remote import Remote
    from p2pserver.clientapi.server import ClientAPI

MAX_TYPING_TIMEOUT_MS = 120_000
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")
# /messages: how often one request may fetch older history from other servers.
BACKFILL_ROUNDS = 3


def add_routes(router: Router) -> None:
    router.add("POST", "/createRoom", create_room)
    router.add("POST", "/join/{roomIdOrAlias}", join_by_id_or_alias)
    router.add("POST", "/rooms/{roomId}/join", join_room)
    router.add("POST", "/knock/{roomIdOrAlias}", knock)
    router.add("POST", "/rooms/{roomId}/invite", invite)
    router.add("POST", "/rooms/{roomId}/leave", leave)
    router.add("POST", "/rooms/{roomId}/forget", forget)
    router.add("POST", "/rooms/{roomId}/kick", kick)
    router.add("POST", "/rooms/{roomId}/ban", ban)
    router.add("POST", "/rooms/{roomId}/unban", unban)
    router.add("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", send)
    router.add("GET", "/rooms/{roomId}/state", get_state)
    router.add("GET", "/rooms/{roomId}/state/{eventType}", get_state_event)
    router.add("GET", "/rooms/{roomId}/state/{eventType}/{stateKey}", get_state_event)
    router.add("PUT", "/rooms/{roomId}/state/{eventType}", put_state)
    router.add("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}", put_state)
    router.add("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}", redact)
    router.add("GET", "/rooms/{roomId}/messages", messages)
    router.add("GET", "/rooms/{roomId}/context/{eventId}", context)
    router.add("GET", "/rooms/{roomId}/event/{eventId}", get_event)
    router.add("GET", "/rooms/{roomId}/members", members)
    router.add("GET", "/rooms/{roomId}/joined_members", joined_members)
    router.add("GET", "/joined_rooms", joined_rooms)
    router.add("PUT", "/rooms/{roomId}/typing/{userId}", typing)
    router.add("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", receipt)
    router.add("POST", "/rooms/{roomId}/read_markers", read_markers)
    router.add("GET", "/rooms/{roomId}/aliases", room_aliases)


# -- helpers ----------------------------------------------------------------------


def _profile(api: ClientAPI, user_id: str) -> dict[str, str]:
    record = api.accounts.user(user_id)
    out: dict[str, str] = {}
    if record is not None and record.displayname is not None:
        out["displayname"] = record.displayname
    if record is not None and record.avatar_url is not None:
        out["avatar_url"] = record.avatar_url
    return out


def _target_user(body: dict[str, Any]) -> str:
    user_id = body.get("user_id")
    if not isinstance(user_id, str):
        raise ApiError.of("M_BAD_JSON", "user_id must be a string")
    if not is_valid_user_id(user_id):
        raise ApiError.of("M_INVALID_PARAM", f"invalid user ID {user_id!r}")
    return user_id


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ApiError.of("M_BAD_JSON", "reason must be a string")
    return reason


def _room_id(ctx: Ctx) -> str:
    room_id = ctx.params["roomId"]
    if not room_id.startswith("!"):
        raise ApiError.of("M_INVALID_PARAM", f"invalid room ID {room_id!r}")
    return room_id


def _require_joined(ctx: Ctx, room_id: str) -> None:
    if ctx.api.store.current_membership(room_id, ctx.user_id) != "join":
        raise ApiError.of("M_FORBIDDEN", "you are not joined to this room")


def _check_alias_syntax(alias: str) -> None:
    localpart, sep, server = alias[1:].partition(":")
    if not alias.startswith("#") or not sep or not localpart or not server or "\x00" in alias:
        raise ApiError.of("M_INVALID_PARAM", f"invalid room alias {alias!r}")
    if len(alias.encode("utf-8")) > 255:
        raise ApiError.of("M_INVALID_PARAM", "room alias is longer than 255 bytes")


# -- creating and joining ------------------------------------------------------------


async def create_room(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    body = ctx.json()
    alias_name = body.get("room_alias_name")
    if isinstance(alias_name, str):
        alias = f"#{alias_name}:{api.server_name}"
        if api.accounts.alias(alias) is not None:
            raise ApiError.of("M_ROOM_IN_USE", f"room alias {alias} is taken")
    room_id = await api.engine.create_room(
        ctx.user_id, body, creator_profile=_profile(api, ctx.user_id)
    )
    out: dict[str, Any] = {"room_id": room_id}
    if isinstance(alias_name, str):
        alias = f"#{alias_name}:{api.server_name}"
        try:
            api.accounts.create_alias(alias, room_id, ctx.user_id)
            out["room_alias"] = alias
        except AliasInUse:
            pass  # taken while the room was made; the room stands without it
    if body.get("visibility") == "public":
        api.accounts.set_room_visibility(room_id, "public")
    return out


async def _resolve_alias(api: ClientAPI, alias: str) -> tuple[str, list[str]]:
    _check_alias_syntax(alias)
    local = api.accounts.alias(alias)
    if local is not None:
        return local[0], [api.server_name]
    if alias.partition(":")[2] != api.server_name and api.remote is not None:
        return await api.remote.query_alias(alias)
    raise ApiError.of("M_NOT_FOUND", f"room alias {alias} not found")


async def _join(ctx: Ctx, room_id: str, via: list[str]) -> dict[str, Any]:
    api = ctx.api
    body = ctx.json(optional=True)
    content = _profile(api, ctx.user_id)
    reason = _reason(body)
    if reason is not None:
        content["reason"] = reason
    held = api.store.room(room_id) is not None and bool(api.store.forward_extremities(room_id))
    if held:
        try:
            await api.engine.join(room_id, ctx.user_id, content)
        except AuthError:
            if api.remote is None or not _others_in_room(api, room_id):
                raise
            await api.remote.join(
                room_id, ctx.user_id, via or _others_in_room(api, room_id), content
            )
    elif api.remote is not None:
        servers = via or _named_server(room_id)
        await api.remote.join(room_id, ctx.user_id, servers, content)
    else:
        raise ApiError.of("M_NOT_FOUND", f"room {room_id} is not known to this server")
    api.accounts.set_forgotten(ctx.user_id, room_id, False)
    return {"room_id": room_id}


def _named_server(room_id: str) -> list[str]:
    """The server a room ID names (before version 12), to go through when no other is known."""
    return [room_id.partition(":")[2]] if ":" in room_id else []


def _others_in_room(api: ClientAPI, room_id: str) -> list[str]:
    return sorted(api.store.joined_servers(room_id) - {api.server_name})


async def join_by_id_or_alias(ctx: Ctx) -> dict[str, Any]:
    target = ctx.params["roomIdOrAlias"]
    via = ctx.request.query.get("via", []) + ctx.request.query.get("server_name", [])
    if target.startswith("#"):
        room_id, servers = await _resolve_alias(ctx.api, target)
        return await _join(ctx, room_id, via or servers)
    if not target.startswith("!"):
        raise ApiError.of("M_INVALID_PARAM", f"{target!r} is neither a room ID nor an alias")
    return await _join(ctx, target, via)


async def join_room(ctx: Ctx) -> dict[str, Any]:
    return await _join(ctx, _room_id(ctx), [])


async def knock(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    target = ctx.params["roomIdOrAlias"]
    via = ctx.request.query.get("via", []) + ctx.request.query.get("server_name", [])
    if target.startswith("#"):
        room_id, servers = await _resolve_alias(api, target)
        via = via or servers
    elif target.startswith("!"):
        room_id = target
    else:
        raise ApiError.of("M_INVALID_PARAM", f"{target!r} is neither a room ID nor an alias")
    body = ctx.json(optional=True)
    content: dict[str, Any] = {"membership": "knock", **_profile(api, ctx.user_id)}
    reason = _reason(body)
    if reason is not None:
        content["reason"] = reason
    if api.server_name in api.store.joined_servers(room_id) or api.remote is None:
        await api.engine.send_state(room_id, ctx.user_id, "m.room.member", ctx.user_id, content)
        return {"room_id": room_id}
    # Only other servers are in the room: knock through one of them.
    servers = via or _named_server(room_id)
    event_id, server, state = await api.remote.knock(room_id, ctx.user_id, servers, content)
    own = {"type": "m.room.member", "state_key": ctx.user_id, "content": content}
    with api.store.transaction():
        InviteStates(api.store.db).put(event_id, room_id, [*state, {**own, "sender": ctx.user_id}])
        knock = RemoteKnock(room_id, event_id, "knock", server, api.accounts.next_stream())
        RemoteKnocks(api.store.db).put(ctx.user_id, knock)
    api.accounts.set_forgotten(ctx.user_id, room_id, False)
    api.poke()
    return {"room_id": room_id}


async def invite(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    body = ctx.json()
    room_id = _room_id(ctx)
    target = _target_user(body)
    reason = _reason(body)
    if not api.is_local_user(target) and api.remote is not None:
        await api.remote.invite(room_id, ctx.user_id, target, reason)
    else:
        await api.engine.invite(room_id, ctx.user_id, target, reason)
    return {}


async def leave(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    body = ctx.json(optional=True)
    knocked = standing_knocks(api.store, ctx.user_id).get(room_id)
    if knocked is not None and knocked.membership == "knock" and api.remote is not None:
        await _withdraw_knock(api, api.remote, ctx.user_id, knocked)
        return {}
    await api.engine.leave(room_id, ctx.user_id, _reason(body))
    return {}


async def _withdraw_knock(
    api: ClientAPI, remote: Remote, user_id: str, knocked: RemoteKnock
) -> None:
    """Withdraw a knock made through another server, through that server.

    M_FORBIDDEN or M_NOT_FOUND from it means the knock is over already (the
    room refused it, or let the user in or out since): the user is out
    either way. Anything else (unreachable) is the client's to retry.
    """
    room_id = knocked.room_id
    event_id = knocked.event_id
    try:
        event_id = await remote.leave(room_id, user_id, [knocked.via])
    except MatrixError as exc:
        if exc.errcode not in ("M_FORBIDDEN", "M_NOT_FOUND"):
            raise
    with api.store.transaction():
        left = RemoteKnock(room_id, event_id, "leave", knocked.via, api.accounts.next_stream())
        RemoteKnocks(api.store.db).put(user_id, left)
    api.poke()


async def forget(ctx: Ctx) -> dict[str, Any]:
    room_id = _room_id(ctx)
    knocked = standing_knocks(ctx.api.store, ctx.user_id).get(room_id)
    if knocked is not None:
        if knocked.membership == "knock":
            raise ApiError.of("M_UNKNOWN", "withdraw the knock before forgetting the room")
        with ctx.api.store.transaction():
            RemoteKnocks(ctx.api.store.db).remove(ctx.user_id, room_id)
        ctx.api.accounts.set_forgotten(ctx.user_id, room_id, True)
        return {}
    membership = ctx.api.store.current_membership(room_id, ctx.user_id)
    if membership is None:
        raise ApiError.of("M_NOT_FOUND", "you were never in this room")
    if membership in ("join", "invite", "knock"):
        raise ApiError.of("M_UNKNOWN", "leave the room before forgetting it")
    ctx.api.accounts.set_forgotten(ctx.user_id, room_id, True)
    return {}


async def kick(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    await ctx.api.engine.kick(_room_id(ctx), ctx.user_id, _target_user(body), _reason(body))
    return {}


async def ban(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    await ctx.api.engine.ban(_room_id(ctx), ctx.user_id, _target_user(body), _reason(body))
    return {}


async def unban(ctx: Ctx) -> dict[str, Any]:
    body = ctx.json()
    await ctx.api.engine.unban(_room_id(ctx), ctx.user_id, _target_user(body), _reason(body))
    return {}


# -- sending --------------------------------------------------------------------------


async def send(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    txn_id = ctx.params["txnId"]
    device_id = ctx.requester.device_id
    previous = api.accounts.txn_event(ctx.user_id, device_id, txn_id)
    if previous is not None:
        return {"event_id": previous}
    content = ctx.json()
    event_id = await api.engine.send_event(
        room_id,
        ctx.user_id,
        ctx.params["eventType"],
        content,
        in_commit=_record_txn(api, ctx.user_id, device_id, txn_id),
    )
    return {"event_id": event_id}


def _record_txn(api: ClientAPI, user_id: str, device_id: str, txn_id: str) -> Callable[[str], None]:
    """What records ``txn_id`` -> the event, inside the transaction that stores the event."""
    return lambda event_id: api.accounts.record_txn(
        user_id, device_id, txn_id, event_id, api.now_ms()
    )


async def put_state(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    event_type = ctx.params["eventType"]
    state_key = ctx.params.get("stateKey", "")
    content = ctx.json()
    if event_type == "m.room.canonical_alias":
        _check_canonical_alias(api, room_id, content)
    event_id = await api.engine.send_state(room_id, ctx.user_id, event_type, state_key, content)
    return {"event_id": event_id}


def _check_canonical_alias(api: ClientAPI, room_id: str, content: dict[str, Any]) -> None:
    aliases: list[Any] = []
    if content.get("alias") is not None:
        aliases.append(content["alias"])
    alt = content.get("alt_aliases")
    if alt is not None:
        if not isinstance(alt, list):
            raise ApiError.of("M_INVALID_PARAM", "alt_aliases must be a list")
        aliases += alt
    for alias in aliases:
        if not isinstance(alias, str):
            raise ApiError.of("M_INVALID_PARAM", "aliases must be strings")
        _check_alias_syntax(alias)
        if alias.partition(":")[2] != api.server_name:
            continue  # another server's alias: its server would have to confirm it
        local = api.accounts.alias(alias)
        if local is None or local[0] != room_id:
            raise ApiError.of("M_BAD_ALIAS", f"{alias} does not point at this room")


async def redact(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    txn_id = "redact:" + ctx.params["txnId"]
    device_id = ctx.requester.device_id
    previous = api.accounts.txn_event(ctx.user_id, device_id, txn_id)
    if previous is not None:
        return {"event_id": previous}
    body = ctx.json(optional=True)
    event_id = await api.engine.redact(
        room_id,
        ctx.user_id,
        ctx.params["eventId"],
        _reason(body),
        in_commit=_record_txn(api, ctx.user_id, device_id, txn_id),
    )
    return {"event_id": event_id}


# -- reading ----------------------------------------------------------------------------


async def get_state(ctx: Ctx) -> tuple[int, list[dict[str, Any]]]:
    api = ctx.api
    views = RoomViews(api)
    state = views.readable_state(_room_id(ctx), ctx.user_id)
    now = api.now_ms()
    return 200, [client_event(i.event, now_ms=now) for i in views.state_events(state).values()]


async def get_state_event(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    views = RoomViews(api)
    key = (ctx.params["eventType"], ctx.params.get("stateKey", ""))
    state = views.readable_state(_room_id(ctx), ctx.user_id)
    event_id = state.get(key)
    event = api.store.load_event(event_id) if event_id else None
    if event is None:
        raise ApiError.of("M_NOT_FOUND", "no such state event")
    served = api.engine.event_for_serving(event)
    if ctx.query("format") == "event":
        return client_event(served, now_ms=api.now_ms())
    return served.content


def _event_filter(ctx: Ctx) -> EventFilter | None:
    value = ctx.query("filter")
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        raise ApiError.of("M_INVALID_PARAM", "filter is not valid JSON") from None
    return parse_room_event_filter(data)


def _may_read(ctx: Ctx, room_id: str) -> RoomViews:
    views = RoomViews(ctx.api)
    views.readable_state(room_id, ctx.user_id)  # 403 for strangers
    return views


def _lazy_members(
    ctx: Ctx, views: RoomViews, room_id: str, items: list[SyncEvent], flt: EventFilter | None
) -> list[dict[str, Any]]:
    """Member events of the senders, for ``lazy_load_members`` (current state's)."""
    if flt is None or not flt.lazy_load_members:
        return []
    state = views.readable_state(room_id, ctx.user_id)
    senders = sorted({i.event.sender for i in items})
    ids = [state[("m.room.member", s)] for s in senders if ("m.room.member", s) in state]
    now = ctx.api.now_ms()
    return [
        client_event(i.event, now_ms=now)
        for i in views.serve(ids, ctx.user_id, None, check_visibility=False, prev_content=False)
    ]


async def messages(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    views = _may_read(ctx, room_id)
    direction = ctx.query("dir") or "b"
    if direction not in ("b", "f"):
        raise ApiError.of("M_INVALID_PARAM", "dir must be 'b' or 'f'")
    limit = ctx.query_int("limit", 10, minimum=0, maximum=1000)
    flt = _event_filter(ctx)
    from_text = ctx.query("from")
    to_text = ctx.query("to")
    if from_text:
        start = StreamToken.parse(from_text, "from").events
    else:
        start = api.engine.notifier.position if direction == "b" else HISTORY_START
    to = StreamToken.parse(to_text, "to").events if to_text else None
    backwards = direction == "b"
    if backwards:
        after, before = (to if to is not None else HISTORY_START), start + 1
    else:
        after, before = start, (to + 1 if to is not None else STREAM_END)
    rounds = 0
    while True:
        items, more = views.timeline(
            room_id,
            ctx.user_id,
            ctx.requester.device_id,
            after=after,
            before=before,
            limit=limit,
            newest_first=backwards,
            flt=flt,
        )
        # Ran out of held history before ``limit``: older may be elsewhere.
        if not backwards or more or len(items) >= limit or to is not None:
            break
        if api.remote is None or rounds == BACKFILL_ROUNDS:
            break
        rounds += 1
        if not await api.remote.backfill(room_id, max(limit - len(items), 10)):
            break
    now = api.now_ms()
    out: dict[str, Any] = {
        "start": str(StreamToken(start)),
        "chunk": [client_event(i.event, now_ms=now, unsigned=i.unsigned) for i in items],
    }
    # Older history may still be had from other servers: let the client ask.
    held_back = backwards and api.remote is not None and api.engine.backward_extremities(room_id)
    if items and (more or held_back):
        last = items[-1].stream
        out["end"] = str(StreamToken(last - 1 if backwards else last))
    state = _lazy_members(ctx, views, room_id, items, flt)
    if state:
        out["state"] = state
    return out


async def context(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    views = _may_read(ctx, room_id)
    event_id = ctx.params["eventId"]
    limit = ctx.query_int("limit", 10, minimum=0, maximum=100)
    flt = _event_filter(ctx)
    found = views.serve([event_id], ctx.user_id, ctx.requester.device_id)
    if not found or found[0].event.room_id != room_id:
        raise ApiError.of("M_NOT_FOUND", "event not found")
    center = found[0]
    before_n, after_n = limit // 2, limit - limit // 2
    before_items, _ = views.timeline(
        room_id,
        ctx.user_id,
        ctx.requester.device_id,
        after=HISTORY_START,
        before=center.stream,
        limit=before_n,
        newest_first=True,
        flt=flt,
    )
    after_items, _ = views.timeline(
        room_id,
        ctx.user_id,
        ctx.requester.device_id,
        after=center.stream,
        before=STREAM_END,
        limit=after_n,
        newest_first=False,
        flt=flt,
    )
    now = api.now_ms()
    last = after_items[-1] if after_items else center
    meta = api.store.event_meta(last.event.event_id)
    state_map = api.store.state_map(meta.state_after) if meta and meta.state_after else {}
    state_items = list(views.state_events(state_map).values())
    if flt is not None and flt.lazy_load_members:
        senders = {i.event.sender for i in [center, *before_items, *after_items]}
        state_items = [
            i
            for i in state_items
            if i.event.type != "m.room.member" or i.event.state_key in senders
        ]
    return {
        "event": client_event(center.event, now_ms=now, unsigned=center.unsigned),
        "events_before": [
            client_event(i.event, now_ms=now, unsigned=i.unsigned) for i in before_items
        ],
        "events_after": [
            client_event(i.event, now_ms=now, unsigned=i.unsigned) for i in after_items
        ],
        "start": str(StreamToken((before_items[-1].stream if before_items else center.stream) - 1)),
        "end": str(StreamToken(last.stream)),
        "state": [client_event(i.event, now_ms=now) for i in state_items],
    }


async def get_event(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    found = RoomViews(api).serve([ctx.params["eventId"]], ctx.user_id, ctx.requester.device_id)
    if not found or found[0].event.room_id != room_id:
        raise ApiError.of("M_NOT_FOUND", "event not found")
    return client_event(found[0].event, now_ms=api.now_ms(), unsigned=found[0].unsigned)


async def members(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    views = RoomViews(api)
    state = views.readable_state(room_id, ctx.user_id)
    at = ctx.query("at")
    if at:
        position = StreamToken.parse(at, "at").events
        event_id = api.reads.last_event_at(room_id, position)
        meta = api.store.event_meta(event_id) if event_id else None
        if meta is not None and meta.state_after is not None:
            state = api.store.state_map(meta.state_after)
    wanted = ctx.query("membership")
    unwanted = ctx.query("not_membership")
    ids = [e for (t, _), e in state.items() if t == "m.room.member"]
    now = api.now_ms()
    chunk = []
    for item in views.serve(ids, ctx.user_id, None, check_visibility=False, prev_content=False):
        membership = item.event.membership
        if wanted is not None and membership != wanted:
            continue
        if unwanted is not None and membership == unwanted:
            continue
        chunk.append(client_event(item.event, now_ms=now))
    return {"chunk": chunk}


async def joined_members(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    state = RoomViews(api).readable_state(room_id, ctx.user_id)
    ids = [e for (t, _), e in state.items() if t == "m.room.member"]
    joined: dict[str, Any] = {}
    for event in api.store.load_events(ids).values():
        if event.membership == "join" and event.state_key is not None:
            entry: dict[str, Any] = {}
            for key, out_key in (("displayname", "display_name"), ("avatar_url", "avatar_url")):
                value = event.content.get(key)
                if isinstance(value, str):
                    entry[out_key] = value
            joined[event.state_key] = entry
    return {"joined": joined}


async def joined_rooms(ctx: Ctx) -> dict[str, Any]:
    rooms = [m.room_id for m in ctx.api.reads.memberships(ctx.user_id) if m.membership == "join"]
    return {"joined_rooms": rooms}


# -- ephemeral: typing, receipts, read markers --------------------------------------------


async def typing(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    room_id = _room_id(ctx)
    if ctx.params["userId"] != ctx.user_id:
        raise ApiError.of("M_FORBIDDEN", "you can only set your own typing state")
    body = ctx.json()
    is_typing = body.get("typing")
    if not isinstance(is_typing, bool):
        raise ApiError.of("M_BAD_JSON", "typing must be a boolean")
    timeout = body.get("timeout", 30_000)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise ApiError.of("M_BAD_JSON", "timeout must be a non-negative integer")
    _require_joined(ctx, room_id)
    if api.typing.set(room_id, ctx.user_id, is_typing, min(timeout, MAX_TYPING_TIMEOUT_MS)):
        queue_typing(api, room_id, ctx.user_id, is_typing)
        api.poke()
    return {}


def _store_receipt(
    ctx: Ctx, room_id: str, receipt_type: str, event_id: str, thread_id: str | None
) -> None:
    api = ctx.api
    meta = api.store.event_meta(event_id)
    if (
        meta is None
        or meta.room_id != room_id
        or not api.engine.may_user_see_event(ctx.user_id, event_id)
    ):
        raise ApiError.of("M_NOT_FOUND", "event not found")
    if receipt_type == "m.fully_read":
        api.accounts.set_account_data(ctx.user_id, room_id, "m.fully_read", {"event_id": event_id})
    else:
        now = api.now_ms()
        api.accounts.set_receipt(room_id, receipt_type, ctx.user_id, thread_id, event_id, now)
        if receipt_type == "m.read":  # private receipts never leave the node
            queue_receipt(api, room_id, ctx.user_id, event_id, now, thread_id)
    api.poke()


async def receipt(ctx: Ctx) -> dict[str, Any]:
    room_id = _room_id(ctx)
    receipt_type = ctx.params["receiptType"]
    if receipt_type not in RECEIPT_TYPES:
        raise ApiError.of("M_INVALID_PARAM", f"unknown receipt type {receipt_type!r}")
    body = ctx.json(optional=True)
    thread_id = body.get("thread_id")
    if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
        raise ApiError.of("M_INVALID_PARAM", "thread_id must be a non-empty string")
    if thread_id is not None and receipt_type == "m.fully_read":
        raise ApiError.of("M_INVALID_PARAM", "m.fully_read receipts cannot be threaded")
    _require_joined(ctx, room_id)
    _store_receipt(ctx, room_id, receipt_type, ctx.params["eventId"], thread_id)
    return {}


async def read_markers(ctx: Ctx) -> dict[str, Any]:
    room_id = _room_id(ctx)
    body = ctx.json()
    _require_joined(ctx, room_id)
    for receipt_type in ("m.fully_read", "m.read", "m.read.private"):
        event_id = body.get(receipt_type)
        if event_id is None:
            continue
        if not isinstance(event_id, str):
            raise ApiError.of("M_BAD_JSON", f"{receipt_type} must be an event ID")
        _store_receipt(ctx, room_id, receipt_type, event_id, None)
    return {}


async def room_aliases(ctx: Ctx) -> dict[str, Any]:
    room_id = _room_id(ctx)
    RoomViews(ctx.api).readable_state(room_id, ctx.user_id)
    return {"aliases": ctx.api.accounts.aliases_of(room_id)}
