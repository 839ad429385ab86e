"""/sync and filters: gathering the data and long-polling.

``GET /sync`` reads what the user's rooms and account hold into a
:class:`~p2pserver.clientapi.sync.SyncInput` and lets
:func:`~p2pserver.clientapi.sync.build_sync_response` build the answer.

Which rooms, for a ``since`` token (events position S) or none (initial):
- every room whose current membership is ``join``, on an initial sync or
  ``full_state``; otherwise those with new events after S, new receipts,
  typing changes or room account data. A room the user joined after S is
  sent as on an initial sync (full state, the latest timeline).
- ``invite`` / ``knock``: on an initial sync, or when the membership event
  is after S.
- ``leave`` / ``ban``: when the membership event is after S (incremental),
  or on an initial sync with ``include_leave``. Forgotten rooms never.

Timeline: the latest visible, filter-passing events after S (all history
on an initial sync), at most the filter's limit (default 10); ``limited``
when more lie between S and them, and ``prev_batch`` the point just before
the first one. For a left room, the timeline ends at the leave.

End-to-end encryption: the requesting device's to-device messages after
``since`` (acknowledging those before, :func:`~.todevice.sync_to_device`;
with more waiting than one response holds, ``next_batch``'s account
position stops at the last one given), device-list changes between the
tokens on an incremental sync (:func:`~.devicelists.changes_between`), and
the device's key counts.

Long-poll: with ``since`` and no ``full_state``, an answer with nothing new
(:func:`~p2pserver.clientapi.sync.has_updates`) is not sent; the request
waits until anything /sync may deliver changes (the client API's
:class:`~p2pserver.clientapi.streams.Wakeup`: room events via the engine's
notifier, account data, receipts, typing, presence, to-device messages,
device lists) or ``timeout`` ms pass, and computes again. Typing timeouts
also wake it. Either way ``next_batch`` covers everything looked at.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import trio

from p2pserver.clientapi.devicelists import changes_between
from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.filters import DEFAULT_TIMELINE_LIMIT, Filter, parse_filter
from p2pserver.clientapi.keys import key_counts
from p2pserver.clientapi.pushrules import (
    RoomFacts,
    compile_ruleset,
    count_unread,
    default_ruleset,
)
from p2pserver.clientapi.routing import Ctx, Router, parse_decimal
from p2pserver.clientapi.streams import HISTORY_START, PRESENCE_STATES, STREAM_END, StreamToken
from p2pserver.clientapi.sync import (
    RoomSync,
    SyncEvent,
    SyncInput,
    build_sync_response,
    has_updates,
)
from p2pserver.clientapi.todevice import sync_to_device
from p2pserver.clientapi.views import RoomViews
from p2pserver.rooms.events import STRIPPED_STATE_TYPES, Event
from p2pserver.rooms.power_levels import get_user_power_level
from p2pserver.storage.accounts import Membership
from p2pserver.storage.invites import InviteStates
from p2pserver.storage.knocks import standing_knocks

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

MAX_TIMEOUT_MS = 5 * 60 * 1000
# How many events after the user's read receipt are checked for unread counts.
UNREAD_SCAN = 100


def add_routes(router: Router) -> None:
    router.add("GET", "/sync", sync)
    router.add("POST", "/user/{userId}/filter", create_filter)
    router.add("GET", "/user/{userId}/filter/{filterId}", get_filter)


# -- filters -----------------------------------------------------------------------


def _own_user(ctx: Ctx) -> str:
    if ctx.params["userId"] != ctx.user_id:
        raise ApiError.of("M_FORBIDDEN", "you can only manage your own filters")
    return ctx.user_id


async def create_filter(ctx: Ctx) -> dict[str, Any]:
    user_id = _own_user(ctx)
    body = ctx.json()
    parse_filter(body)  # validate
    return {"filter_id": str(ctx.api.accounts.add_filter(user_id, body))}


async def get_filter(ctx: Ctx) -> dict[str, Any]:
    user_id = _own_user(ctx)
    filter_id = ctx.params["filterId"]
    number = parse_decimal(filter_id)
    stored = ctx.api.accounts.filter(user_id, number) if number is not None else None
    if stored is None:
        raise ApiError.of("M_NOT_FOUND", "no such filter")
    return stored


def _sync_filter(ctx: Ctx) -> Filter:
    value = ctx.query("filter")
    if value is None or value == "":
        return Filter()
    if value.startswith("{"):
        import json

        try:
            data = json.loads(value)
        except ValueError:
            raise ApiError.of("M_INVALID_PARAM", "filter is not valid JSON") from None
        return parse_filter(data)
    number = parse_decimal(value)
    stored = ctx.api.accounts.filter(ctx.user_id, number) if number is not None else None
    if stored is None:
        raise ApiError.of("M_INVALID_PARAM", f"unknown filter {value!r}")
    return parse_filter(stored)


# -- /sync ---------------------------------------------------------------------------


async def sync(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    since_text = ctx.query("since")
    since = StreamToken.parse(since_text, "since") if since_text else None
    timeout_ms = ctx.query_int("timeout", 0, maximum=MAX_TIMEOUT_MS)
    full_state = ctx.query_bool("full_state")
    flt = _sync_filter(ctx)
    set_presence = ctx.query("set_presence") or "online"
    if set_presence not in PRESENCE_STATES:
        raise ApiError.of("M_INVALID_PARAM", f"unknown set_presence {set_presence!r}")
    if set_presence != "offline" and api.presence.set(ctx.user_id, set_presence, keep_msg=True):
        api.poke()
    deadline = trio.current_time() + timeout_ms / 1000
    while True:
        wake = api.wakeup.current()  # before looking, so no change is missed
        if api.typing.expire():
            api.poke()
            wake = api.wakeup.current()
        response = SyncGatherer(api, ctx.user_id, ctx.requester.device_id, flt).sync(
            since, full_state=full_state
        )
        if since is None or full_state or has_updates(response):
            return response
        now = trio.current_time()
        if now >= deadline:
            return response
        until = deadline
        expiry = api.typing.next_expiry()
        if expiry is not None:
            until = min(until, trio.current_time() + max(0.0, expiry - api.typing.clock()))
        with trio.move_on_at(until):
            await wake.wait()


class SyncGatherer:
    """Reads one user's sync data (see the module docstring)."""

    def __init__(self, api: ClientAPI, user_id: str, device_id: str, flt: Filter) -> None:
        self.api = api
        self.user_id = user_id
        self.device_id = device_id
        self.filter = flt
        self.views = RoomViews(api)
        self.store = api.store
        self._rules: list[Any] | None = None

    def sync(self, since: StreamToken | None, *, full_state: bool) -> dict[str, Any]:
        api = self.api
        now = api.current_token()
        initial = since is None
        since_token = since or StreamToken(0, 0, 0)
        # Positions from a restarted ephemeral counter or another node are clamped.
        ephemeral_since = since_token.ephemeral if since_token.ephemeral <= now.ephemeral else 0
        account_changes = api.accounts.account_data_since(
            self.user_id, 0 if initial else since_token.account
        )
        room_data: dict[str, dict[str, Any]] = {}
        global_data: dict[str, Any] = {}
        for room_id, data_type, content in account_changes:
            if room_id is None:
                global_data[data_type] = content
            else:
                room_data.setdefault(room_id, {})[data_type] = content
        if initial and "m.push_rules" not in global_data:
            global_data["m.push_rules"] = default_ruleset(self.user_id)
        changed = set() if initial else api.reads.rooms_changed(since_token.events, now.events)
        receipt_rooms = set() if initial else api.accounts.receipt_rooms_since(since_token.account)
        restored = {} if initial else api.accounts.restored_since(since_token.account)
        forgotten = api.accounts.forgotten_rooms(self.user_id)
        rooms: list[RoomSync] = []
        shared_users: set[str] = {self.user_id}
        memberships = api.reads.memberships(self.user_id)
        # Knocks (and their ends) through other servers stand for the user's
        # membership until the room's own events here catch up with them.
        remote = standing_knocks(self.store, self.user_id)
        for member in memberships:
            if member.room_id in forgotten or not self.filter.room.allows_room(member.room_id):
                continue
            if member.room_id in remote:
                continue
            new = member.stream_ordering is not None and member.stream_ordering > since_token.events
            if member.membership == "join":
                shared_users.update(u for u, m in api.reads.members(member.room_id) if m == "join")
                quiet = not (
                    member.room_id in changed
                    or member.room_id in receipt_rooms
                    or member.room_id in room_data
                    or member.room_id in restored
                    or api.typing.changed_since(member.room_id, ephemeral_since)
                )
                if initial or full_state or new or not quiet:
                    rooms.append(
                        self._joined(
                            member,
                            since=None if (initial or new) else since_token,
                            full_state=full_state,
                            upto=now.events,
                            ephemeral_since=ephemeral_since,
                            room_data=room_data.get(member.room_id, {}),
                            restored=restored.get(member.room_id, set()),
                        )
                    )
            elif member.membership in ("invite", "knock"):
                if initial or new:
                    rooms.append(self._stripped(member))
            elif member.membership in ("leave", "ban") and (
                (new and not initial) or (initial and self.filter.room.include_leave)
            ):
                since_or_none = None if initial else since_token
                rooms.append(self._left(member, since=since_or_none, full_state=full_state))
        for knock in remote.values():
            if knock.room_id in forgotten or not self.filter.room.allows_room(knock.room_id):
                continue
            new = knock.stream > since_token.account
            if knock.membership == "knock" and (initial or new):
                member = Membership(knock.room_id, "knock", knock.event_id, None)
                rooms.append(self._stripped(member))
            elif knock.membership == "leave" and (
                (new and not initial) or (initial and self.filter.room.include_leave)
            ):
                rooms.append(RoomSync(room_id=knock.room_id, membership="leave"))
        presence: dict[str, dict[str, Any]] = {}
        for user_id, record in api.presence.changed_since(
            0 if initial else ephemeral_since
        ).items():
            if user_id in shared_users:
                content = {
                    "presence": record.presence,
                    "last_active_ago": max(0, api.now_ms() - record.last_active_ts),
                    "currently_active": record.presence == "online",
                }
                if record.status_msg is not None:
                    content["status_msg"] = record.status_msg
                presence[user_id] = content
        to_device, account_upto = sync_to_device(
            api, self.user_id, self.device_id, since=since_token.account, upto=now.account
        )
        devices_changed, devices_left = (
            ([], [])
            if initial
            else changes_between(
                api,
                self.user_id,
                since_events=since_token.events,
                since_account=since_token.account,
                upto_events=now.events,
                upto_account=account_upto,
            )
        )
        return build_sync_response(
            SyncInput(
                user_id=self.user_id,
                next_batch=str(StreamToken(now.events, account_upto, now.ephemeral)),
                now_ms=api.now_ms(),
                filter=self.filter,
                rooms=rooms,
                account_data=global_data,
                presence=presence,
                initial=initial,
                to_device=to_device,
                device_lists_changed=devices_changed,
                device_lists_left=devices_left,
                one_time_keys_count=key_counts(api, self.user_id, self.device_id),
                unused_fallback_key_types=api.e2ee.unused_fallback_key_types(
                    self.user_id, self.device_id
                ),
            )
        )

    # -- rooms -----------------------------------------------------------------------

    def _timeline(
        self, room_id: str, *, after: int, upto: int
    ) -> tuple[list[SyncEvent], bool, str]:
        flt = self.filter.room.timeline
        limit = flt.limited_to(DEFAULT_TIMELINE_LIMIT)
        newest, more = self.views.timeline(
            room_id,
            self.user_id,
            self.device_id,
            after=after,
            before=upto + 1,
            limit=limit,
            newest_first=True,
            flt=flt,
        )
        timeline = newest[::-1]
        start = (timeline[0].stream - 1) if timeline else upto
        prev_batch = str(StreamToken(start))
        return timeline, more, prev_batch

    def _state_at_start(
        self, timeline: list[SyncEvent], upto_state: Mapping[Any, str]
    ) -> dict[Any, SyncEvent]:
        """The state before the first timeline event (``upto_state`` if none)."""
        if timeline:
            meta = self.store.event_meta(timeline[0].event.event_id)
            if meta is not None and meta.state_before is not None:
                return self.views.state_events(self.store.state_map(meta.state_before))
        return self.views.state_events(upto_state)

    def _joined(
        self,
        member: Membership,
        *,
        since: StreamToken | None,
        full_state: bool,
        upto: int,
        ephemeral_since: int,
        room_data: Mapping[str, Any],
        restored: Collection[str] = (),
    ) -> RoomSync:
        room_id = member.room_id
        after = since.events if since is not None else HISTORY_START
        timeline, limited, prev_batch = self._timeline(room_id, after=after, upto=upto)
        current = self.store.current_state(room_id)
        state_at_start = self._state_at_start(timeline, current)
        state_at_since = None
        if since is not None and not full_state:
            state_at_since = self.views.state_at_stream(room_id, since.events)
        receipts = self.api.accounts.receipts(room_id, since.account if since else 0)
        receipts = [
            r for r in receipts if r.receipt_type != "m.read.private" or r.user_id == self.user_id
        ]
        typing = None
        if since is None or self.api.typing.changed_since(room_id, ephemeral_since):
            typing = self.api.typing.typers(room_id)
        return RoomSync(
            room_id=room_id,
            membership="join",
            timeline=timeline,
            limited=limited,
            prev_batch=prev_batch,
            state_at_start=state_at_start,
            state_at_since=state_at_since,
            restored=frozenset(restored),
            typing=typing,
            receipts=receipts,
            account_data=room_data,
            unread=self._unread(room_id, current, member.stream_ordering or 0),
            summary=self._summary(room_id, current),
        )

    def _left(self, member: Membership, *, since: StreamToken | None, full_state: bool) -> RoomSync:
        room_id = member.room_id
        upto = member.stream_ordering or 0
        after = since.events if since is not None else HISTORY_START
        timeline, limited, prev_batch = self._timeline(room_id, after=after, upto=upto)
        meta = self.store.event_meta(member.event_id)
        at_leave = self.store.state_map(meta.state_after) if meta and meta.state_after else {}
        state_at_start = self._state_at_start(timeline, at_leave)
        state_at_since = None
        if since is not None and not full_state:
            state_at_since = self.views.state_at_stream(room_id, since.events)
        return RoomSync(
            room_id=room_id,
            membership=member.membership,
            timeline=timeline,
            limited=limited,
            prev_batch=prev_batch,
            state_at_start=state_at_start,
            state_at_since=state_at_since,
        )

    def _stripped(self, member: Membership) -> RoomSync:
        if self.api.server_name not in self.store.joined_servers(member.room_id):
            # Not joined: our copies of the room's state are redacted, so show
            # what the inviting server sent with the invite, and the invite.
            remote = InviteStates(self.store.db).get(member.event_id)
            if remote is not None:
                # Our membership event itself when we hold it (an invite; a
                # knock on a room we hold no DAG of is in the list already).
                own = self.store.load_events([member.event_id])
                shown: list[Event | Mapping[str, Any]] = [
                    e
                    for e in remote
                    if not own or (e["type"], e["state_key"]) != ("m.room.member", self.user_id)
                ]
                shown.extend(own.values())
                return RoomSync(
                    room_id=member.room_id, membership=member.membership, stripped=shown
                )
        current = self.store.current_state(member.room_id)
        ids = [current[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in current]
        events = self.store.load_events([*ids, member.event_id])
        stripped: list[Event] = [events[i] for i in [*ids, member.event_id] if i in events]
        return RoomSync(room_id=member.room_id, membership=member.membership, stripped=stripped)

    def _ruleset(self) -> list[Any]:
        """The user's push rules, compiled once per sync."""
        if self._rules is None:
            stored = self.api.accounts.account_data(self.user_id, None, "m.push_rules")
            ruleset = stored if isinstance(stored, dict) else default_ruleset(self.user_id)
            self._rules = compile_ruleset(ruleset)
        return self._rules

    def _summary(self, room_id: str, current: Mapping[Any, str]) -> dict[str, Any]:
        members = self.api.reads.members(room_id)
        joined = [u for u, m in members if m == "join"]
        invited = [u for u, m in members if m == "invite"]
        heroes = [u for u in joined + invited if u != self.user_id][:5]
        return {
            "m.heroes": heroes,
            "m.joined_member_count": len(joined),
            "m.invited_member_count": len(invited),
        }

    def _unread(self, room_id: str, current: Mapping[Any, str], joined_at: int) -> tuple[int, int]:
        """Counts over the newest UNREAD_SCAN events after the user's read receipt, or join.

        Each event's (notify, highlight) is kept for the room, so while the
        inputs below are unchanged a new event costs one evaluation rather
        than a recount of the whole window (a live conversation syncs after
        every message); the window is the same one a recount would scan.
        """
        accounts = self.api.accounts
        read_after = joined_at
        for receipt in accounts.receipts(room_id):
            if receipt.user_id == self.user_id and receipt.receipt_type in (
                "m.read",
                "m.read.private",
            ):
                meta = self.store.event_meta(receipt.event_id)
                if meta is not None and meta.stream_ordering is not None:
                    read_after = max(read_after, meta.stream_ordering)
        profile = accounts.user(self.user_id)
        display_name = profile.displayname if profile else None
        member_count = sum(1 for _, m in self.api.reads.members(room_id) if m == "join")
        # The counts depend only on these, and on the events after read_after.
        inputs = (
            read_after,
            accounts.account_data_position(self.user_id, None, "m.push_rules"),
            display_name,
            current.get(("m.room.power_levels", "")),
            member_count,
        )
        latest = self.api.reads.latest_stream(room_id)
        cached = self.api.unread_counts.get((self.user_id, room_id))
        window: list[tuple[int, int]] = []  # (notify, highlight) per event, oldest first
        after = read_after
        if cached is not None and cached[0][0] == inputs:
            _, counted_to, window = cached[0]
            if counted_to == latest:
                return cached[1]
            after = counted_to
        window = [*window, *self._unread_flags(room_id, current, after, display_name, member_count)]
        window = window[-UNREAD_SCAN:]
        counts = (sum(n for n, _ in window), sum(h for _, h in window))
        self.api.unread_counts[(self.user_id, room_id)] = ((inputs, latest, window), counts)
        return counts

    def _unread_flags(
        self,
        room_id: str,
        current: Mapping[Any, str],
        after: int,
        display_name: str | None,
        member_count: int,
    ) -> list[tuple[int, int]]:
        """(notify, highlight) of each of the newest UNREAD_SCAN events after ``after``."""
        rows = self.api.reads.room_events(
            room_id, after=after, before=STREAM_END, limit=UNREAD_SCAN, newest_first=True
        )
        if not rows:
            return []
        loaded_events = self.store.load_events(r[0] for r in rows)
        events = [loaded_events.get(r[0]) for r in reversed(rows)]
        ruleset = self._ruleset()
        keys = (("m.room.create", ""), ("m.room.power_levels", ""))
        loaded = self.store.load_events(current[k] for k in keys if k in current)
        auth_state = {k: loaded[current[k]] for k in keys if current.get(k) in loaded}
        power = auth_state.get(("m.room.power_levels", ""))
        notifications = power.content.get("notifications") if power else None
        levels = (
            {k: v for k, v in notifications.items() if type(v) is int}
            if isinstance(notifications, dict)
            else {}
        )
        facts = RoomFacts(
            user_id=self.user_id,
            display_name=display_name,
            member_count=member_count,
            notification_levels=levels,
            power_of=lambda sender: get_user_power_level(sender, auth_state),
        )
        # The user's own events never count.
        return [
            count_unread(ruleset, [e.get_pdu_json() | {"event_id": e.event_id}], room_id, facts)
            if e is not None and e.sender != self.user_id
            else (0, 0)
            for e in events
        ]
