"""Filters (spec: Client-Server API, "Filtering"): parsing and matching.

A filter is stored by ``POST /user/{userId}/filter`` and named by its ID in
/sync, or given inline as JSON in /sync's ``filter`` parameter or
/messages' ``filter``. :func:`parse_filter` validates the spec's ``Filter``
(and :func:`parse_room_event_filter` a ``RoomEventFilter``) into frozen
objects; a malformed one is 400 M_BAD_JSON naming the field.

Matching rules (an event passes an :class:`EventFilter` if all hold):
1. its ``type`` matches one of ``types`` (when given) and none of
   ``not_types``; ``*`` in a pattern matches any run of characters;
2. its ``sender`` is in ``senders`` (when given) and not in ``not_senders``;
3. for room event filters, its room is in ``rooms`` (when given) and not in
   ``not_rooms``, and ``contains_url`` (when given) says whether its content
   must have a ``url`` key.
``not_*`` always wins. ``limit`` is the most events of the section.

Pure code: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from p2pserver.clientapi.errors import ApiError
from p2pserver.rooms.events import Event

__all__ = [
    "DEFAULT_TIMELINE_LIMIT",
    "EventFilter",
    "Filter",
    "RoomFilter",
    "parse_filter",
    "parse_room_event_filter",
    "project_fields",
]

DEFAULT_TIMELINE_LIMIT = 10
MAX_LIMIT = 1000


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _type_matches(event_type: str, patterns: Sequence[str]) -> bool:
    return any(_glob(p).fullmatch(event_type) for p in patterns)


@dataclass(frozen=True)
class EventFilter:
    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    # Room event filters only:
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False

    def allows_type(self, event_type: str) -> bool:
        if self.not_types and _type_matches(event_type, self.not_types):
            return False
        return self.types is None or _type_matches(event_type, self.types)

    def allows_sender(self, sender: str) -> bool:
        if sender in self.not_senders:
            return False
        return self.senders is None or sender in self.senders

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def allows(
        self, event_type: str, sender: str, content: Mapping[str, Any] | None = None
    ) -> bool:
        """Rules 1-2 (and ``contains_url``) for one event's fields."""
        if not self.allows_type(event_type) or not self.allows_sender(sender):
            return False
        if self.contains_url is not None:
            has_url = isinstance(content, Mapping) and "url" in content
            if has_url != self.contains_url:
                return False
        return True

    def allows_event(self, event: Event) -> bool:
        return self.allows_room(event.room_id) and self.allows(
            event.type, event.sender, event.content
        )

    def limited_to(self, default: int) -> int:
        return self.limit if self.limit is not None else default


@dataclass(frozen=True)
class RoomFilter:
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms


@dataclass(frozen=True)
class Filter:
    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    room: RoomFilter = field(default_factory=RoomFilter)


def _bad(where: str, what: str) -> ApiError:
    return ApiError.of("M_BAD_JSON", f"filter: {where} must be {what}")


def _strings(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(where, "a list of strings")
    return tuple(value)


def _bool(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(where, "a boolean")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(where, "an object")
    return value


def _event_filter(value: Any, where: str, *, room: bool) -> EventFilter:
    data = _object(value, where)
    limit = data.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _bad(f"{where}.limit", "a positive integer")
        limit = min(limit, MAX_LIMIT)
    kwargs: dict[str, Any] = {
        "limit": limit,
        "types": _strings(data.get("types"), f"{where}.types"),
        "not_types": _strings(data.get("not_types"), f"{where}.not_types") or (),
        "senders": _strings(data.get("senders"), f"{where}.senders"),
        "not_senders": _strings(data.get("not_senders"), f"{where}.not_senders") or (),
    }
    if room:
        kwargs.update(
            rooms=_strings(data.get("rooms"), f"{where}.rooms"),
            not_rooms=_strings(data.get("not_rooms"), f"{where}.not_rooms") or (),
            contains_url=_bool(data.get("contains_url"), f"{where}.contains_url"),
            lazy_load_members=bool(
                _bool(data.get("lazy_load_members"), f"{where}.lazy_load_members")
            ),
            include_redundant_members=bool(
                _bool(data.get("include_redundant_members"), f"{where}.include_redundant_members")
            ),
        )
    return EventFilter(**kwargs)


def parse_room_event_filter(value: Any, where: str = "filter") -> EventFilter:
    """A ``RoomEventFilter`` (as /messages and /context take)."""
    return _event_filter(value, where, room=True)


def parse_filter(value: Any) -> Filter:
    """The spec's ``Filter`` object; raises 400 M_BAD_JSON if malformed."""
    data = _object(value, "the filter")
    event_format = data.get("event_format", "client")
    if event_format not in ("client", "federation"):
        raise _bad("event_format", "'client' or 'federation'")
    room = _object(data.get("room"), "room")
    return Filter(
        event_fields=_strings(data.get("event_fields"), "event_fields"),
        event_format=event_format,
        presence=_event_filter(data.get("presence"), "presence", room=False),
        account_data=_event_filter(data.get("account_data"), "account_data", room=False),
        room=RoomFilter(
            rooms=_strings(room.get("rooms"), "room.rooms"),
            not_rooms=_strings(room.get("not_rooms"), "room.not_rooms") or (),
            include_leave=bool(_bool(room.get("include_leave"), "room.include_leave")),
            timeline=_event_filter(room.get("timeline"), "room.timeline", room=True),
            state=_event_filter(room.get("state"), "room.state", room=True),
            ephemeral=_event_filter(room.get("ephemeral"), "room.ephemeral", room=True),
            account_data=_event_filter(room.get("account_data"), "room.account_data", room=True),
        ),
    )


def _split_field(path: str) -> list[str]:
    # "A literal '.' character in a field name may be escaped using a '\'."
    parts = re.split(r"(?<!\\)\.", path)
    return [p.replace("\\.", ".") for p in parts]


def project_fields(event: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Only the listed (dotted) fields of a formatted event (``event_fields``)."""
    out: dict[str, Any] = {}
    for path in fields:
        keys = _split_field(path)
        source: Any = event
        for key in keys:
            if not isinstance(source, dict) or key not in source:
                break
            source = source[key]
        else:
            target = out
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = source
    return out
