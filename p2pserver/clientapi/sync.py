"""The /sync response, computed from data (spec: Client-Server API, "Syncing").

This is the no-I/O core of /sync: :mod:`.syncing` reads the engine and the
account store into a :class:`SyncInput` (which rooms, which timeline
events the user may see, the state at the points that matter, receipts,
typing, account data, presence) and :func:`build_sync_response` turns it
into the response dict. Nothing here reads a database or awaits.

Rules, per room section:

- ``join``: ``timeline`` holds the events (oldest first) with ``limited``
  and ``prev_batch`` as the gatherer found them. ``state`` is "updates to
  the state, between the time indicated by the since parameter, and the
  start of the timeline": every state event at the start of the timeline
  whose event differs from the state at ``since`` (all of them when
  ``state_at_since`` is None: an initial sync, ``full_state``, or a room
  the user joined since), and those ``restored`` since (held stripped
  when the client was last told, whole now: the same event ID, but the
  client holds the stripped content). The state filter applies; with
  ``lazy_load_members`` only the ``m.room.member`` events of the timeline's
  senders (and the user's own) are sent. ``ephemeral`` holds ``m.typing``
  (when it changed) and ``m.receipt`` (receipts since), ``account_data``
  the room's account data that changed, ``unread_notifications`` the
  counts and ``summary`` the heroes and member counts.
- ``leave``: the same timeline and state, up to the leave.
- ``invite`` / ``knock``: ``invite_state`` / ``knock_state``, stripped state.
- A room with nothing to report on an incremental sync is left out.

Global sections: ``account_data`` and ``presence`` (filtered), and the
end-to-end encryption ones as gathered (:mod:`.todevice`,
:mod:`.devicelists`, :mod:`.keys`): ``to_device`` (the device's messages),
``device_lists`` (``changed`` and ``left``), ``device_one_time_keys_count``
and ``device_unused_fallback_key_types``, always present.

:func:`has_updates` says whether a response carries anything new (room
data, account data, presence, to-device messages or device-list changes,
but not key counts, which are always there), which is when a
long-polling /sync returns before its timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pserver.clientapi.filters import EventFilter, Filter, project_fields
from p2pserver.clientapi.formats import client_event, federation_event, stripped_state
from p2pserver.rooms.events import Event, StateKey
from p2pserver.storage.accounts import ReceiptRecord

__all__ = ["RoomSync", "SyncEvent", "SyncInput", "build_sync_response", "has_updates"]

MEMBER = "m.room.member"


@dataclass(frozen=True)
class SyncEvent:
    """An event as the user may see it (redactions applied), with unsigned extras."""

    event: Event
    stream: int
    unsigned: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoomSync:
    room_id: str
    # join, invite, leave, ban or knock (ban goes in the leave section).
    membership: str
    timeline: Sequence[SyncEvent] = ()
    limited: bool = False
    prev_batch: str | None = None
    # The full state before the first timeline event (the current state if
    # the timeline is empty).
    state_at_start: Mapping[StateKey, SyncEvent] = field(default_factory=dict)
    # Event IDs of the state at ``since``; None: send all of state_at_start.
    state_at_since: Mapping[StateKey, str] | None = None
    # Event IDs held whole since ``since`` (sent again even if unchanged).
    restored: frozenset[str] = frozenset()
    # The typing users, or None when typing did not change.
    typing: Sequence[str] | None = None
    receipts: Sequence[ReceiptRecord] = ()
    account_data: Mapping[str, Any] = field(default_factory=dict)
    # (notification_count, highlight_count)
    unread: tuple[int, int] | None = None
    summary: Mapping[str, Any] | None = None
    # Invite and knock sections: stripped state (our events, or stripped events as received).
    stripped: Sequence[Event | Mapping[str, Any]] = ()


@dataclass(frozen=True)
class SyncInput:
    user_id: str
    next_batch: str
    now_ms: int
    filter: Filter
    rooms: Sequence[RoomSync]
    # Global account data: type -> content.
    account_data: Mapping[str, Any] = field(default_factory=dict)
    # user ID -> m.presence content.
    presence: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # True for an initial sync (no since): rooms are sent even when quiet.
    initial: bool = False
    # End-to-end encryption: the device's to-device events, users whose
    # devices changed / who share no encrypted room any more, the device's
    # one-time key counts by algorithm and its unused fallback key algorithms.
    to_device: Sequence[Mapping[str, Any]] = ()
    device_lists_changed: Sequence[str] = ()
    device_lists_left: Sequence[str] = ()
    one_time_keys_count: Mapping[str, int] = field(default_factory=dict)
    unused_fallback_key_types: Sequence[str] = ()


class _Formatter:
    def __init__(self, inp: SyncInput) -> None:
        self.now_ms = inp.now_ms
        self.federation = inp.filter.event_format == "federation"
        self.fields = inp.filter.event_fields

    def event(self, item: SyncEvent) -> dict[str, Any]:
        if self.federation:
            out = federation_event(item.event)
        else:
            out = client_event(
                item.event, now_ms=self.now_ms, with_room_id=False, unsigned=item.unsigned
            )
        return project_fields(out, self.fields) if self.fields is not None else out


def _limit(events: list[dict[str, Any]], flt: EventFilter) -> list[dict[str, Any]]:
    return events if flt.limit is None else events[-flt.limit :]


def _state_section(
    room: RoomSync, flt: EventFilter, fmt: _Formatter, user_id: str
) -> list[dict[str, Any]]:
    since = room.state_at_since
    senders = {item.event.sender for item in room.timeline} | {user_id}
    out: list[dict[str, Any]] = []
    for key, item in room.state_at_start.items():
        unchanged = since is not None and since.get(key) == item.event.event_id
        if unchanged and item.event.event_id not in room.restored:
            continue
        if flt.lazy_load_members and key[0] == MEMBER and key[1] not in senders:
            continue
        if not flt.allows(item.event.type, item.event.sender, item.event.content):
            continue
        out.append(fmt.event(item))
    return _limit(out, flt)


def _receipt_event(receipts: Sequence[ReceiptRecord]) -> dict[str, Any] | None:
    if not receipts:
        return None
    content: dict[str, Any] = {}
    for r in receipts:
        data: dict[str, Any] = {"ts": r.ts}
        if r.thread_id:
            data["thread_id"] = r.thread_id
        content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = data
    return {"type": "m.receipt", "content": content}


def _account_data_events(data: Mapping[str, Any], flt: EventFilter) -> list[dict[str, Any]]:
    events = [{"type": t, "content": c} for t, c in data.items() if flt.allows_type(t)]
    return _limit(events, flt)


def _joined_or_left(room: RoomSync, inp: SyncInput, fmt: _Formatter) -> dict[str, Any] | None:
    rf = inp.filter.room
    timeline = [fmt.event(i) for i in room.timeline if rf.timeline.allows_event(i.event)]
    section: dict[str, Any] = {
        "timeline": {"events": timeline, "limited": room.limited},
        "state": {"events": _state_section(room, rf.state, fmt, inp.user_id)},
        "account_data": {"events": _account_data_events(room.account_data, rf.account_data)},
    }
    if room.prev_batch is not None:
        section["timeline"]["prev_batch"] = room.prev_batch
    quiet = not (timeline or section["state"]["events"] or section["account_data"]["events"])
    if room.membership == "join":
        ephemeral: list[dict[str, Any]] = []
        if room.typing is not None and rf.ephemeral.allows_type("m.typing"):
            ephemeral.append({"type": "m.typing", "content": {"user_ids": list(room.typing)}})
        receipt = _receipt_event(room.receipts)
        if receipt is not None and rf.ephemeral.allows_type("m.receipt"):
            ephemeral.append(receipt)
        section["ephemeral"] = {"events": _limit(ephemeral, rf.ephemeral)}
        quiet = quiet and not ephemeral
        if room.unread is not None:
            section["unread_notifications"] = {
                "notification_count": room.unread[0],
                "highlight_count": room.unread[1],
            }
        if room.summary is not None:
            section["summary"] = dict(room.summary)
    if quiet and not inp.initial and room.state_at_since is not None:
        return None
    return section


def build_sync_response(inp: SyncInput) -> dict[str, Any]:
    fmt = _Formatter(inp)
    rf = inp.filter.room
    join: dict[str, Any] = {}
    leave: dict[str, Any] = {}
    invite: dict[str, Any] = {}
    knock: dict[str, Any] = {}
    for room in inp.rooms:
        if not rf.allows_room(room.room_id):
            continue
        if room.membership in ("join", "leave", "ban"):
            section = _joined_or_left(room, inp, fmt)
            if section is not None:
                (join if room.membership == "join" else leave)[room.room_id] = section
        elif room.membership == "invite":
            invite[room.room_id] = {
                "invite_state": {"events": [stripped_state(e) for e in room.stripped]}
            }
        elif room.membership == "knock":
            knock[room.room_id] = {
                "knock_state": {"events": [stripped_state(e) for e in room.stripped]}
            }
    response: dict[str, Any] = {"next_batch": inp.next_batch}
    rooms = {
        k: v
        for k, v in (("join", join), ("invite", invite), ("leave", leave), ("knock", knock))
        if v
    }
    if rooms:
        response["rooms"] = rooms
    account_data = _account_data_events(inp.account_data, inp.filter.account_data)
    if account_data:
        response["account_data"] = {"events": account_data}
    presence_filter = inp.filter.presence
    presence = [
        {"type": "m.presence", "sender": user_id, "content": dict(content)}
        for user_id, content in sorted(inp.presence.items())
        if presence_filter.allows("m.presence", user_id)
    ]
    if presence:
        response["presence"] = {"events": _limit(presence, presence_filter)}
    response["to_device"] = {"events": [dict(e) for e in inp.to_device]}
    response["device_lists"] = {
        "changed": list(inp.device_lists_changed),
        "left": list(inp.device_lists_left),
    }
    response["device_one_time_keys_count"] = dict(inp.one_time_keys_count)
    response["device_unused_fallback_key_types"] = list(inp.unused_fallback_key_types)
    return response


def has_updates(response: Mapping[str, Any]) -> bool:
    """Whether a response tells the client anything new (else a long-poll waits)."""
    device_lists = response.get("device_lists", {})
    return bool(
        response.get("rooms")
        or response.get("account_data")
        or response.get("presence")
        or response.get("to_device", {}).get("events")
        or device_lists.get("changed")
        or device_lists.get("left")
    )
