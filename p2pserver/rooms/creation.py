"""The initial events of a new room (Client-Server API ``POST /createRoom``).

:func:`create_room_events` turns a createRoom request body into the room ID
and the ordered list of signed events that found the room. It is pure: the
caller supplies the clock, the key and the randomness, and stores, publishes
and sends the result.

Rules (spec: Client-Server API, "Create a new room"; room versions 10-12).
The events are made in the spec's order, each by the creator:

1. ``m.room.create``. Content is ``creation_content`` with ``room_version``
   set by us; ``creator`` is set in v10 and removed in v11+ (MSC2175: the
   sender is the creator). Room ID: in v12 (MSC4291) the event has no
   ``room_id`` and the room ID is ``!`` + its reference hash; before v12 it is
   ``!<18 random letters>:<server_name>``.
2. The creator's ``m.room.member`` join (content: membership plus profile).
3. ``m.room.power_levels``: the default content below, then the top-level
   keys of ``power_level_content_override`` applied on top.
4. ``m.room.canonical_alias`` ``#<room_alias_name>:<server_name>``, if asked.
5. The preset's ``m.room.join_rules``, ``m.room.history_visibility`` and
   ``m.room.guest_access``. The preset defaults from ``visibility``
   (``public`` -> ``public_chat``, otherwise ``private_chat``).
6. ``initial_state``, in listed order.
7. ``m.room.name`` and ``m.room.topic`` from ``name`` and ``topic``.
8. An ``m.room.member`` invite per ``invite`` user, with ``is_direct: true``
   when ``is_direct`` is set. ``invite_3pid`` is ignored (no identity
   servers in a P2P network).

Precedence, as the spec words it ("initial_state takes precedence over events
set by preset, but gets overridden by name and topic"): the alias and preset
events are left out when ``initial_state`` sets the same ``(type,
state_key)``, and ``initial_state``'s name and topic when ``name`` or
``topic`` is given. A repeated ``initial_state`` key is one event, at its
first position, with its last content. An ``initial_state``
``m.room.power_levels`` replaces the default content of step 3 (and the
override still applies on top), so the room never carries two power levels.

Power levels. Default content: ``users_default`` 0, ``events_default`` 0,
``state_default`` 50, ``ban``/``kick``/``redact`` 50, the usual per-type
levels (name, alias and avatar 50; power levels, history visibility, server
ACL, encryption and tombstone 100). ``invite`` is 0 in the two private presets
(an invite-only room grows only by invites) and 50 in ``public_chat`` (anyone
may join, so inviting is moderation). Per room version:

- v10/v11: the creator is in ``users`` at 100; with ``trusted_private_chat``
  so is every invitee ("the same power level as the room creator").
- v12 (MSC4289): creators have infinite power and may not appear in
  ``users``, which starts empty. With ``trusted_private_chat`` the invitees
  join ``creation_content.additional_creators`` (deduplicated) instead.
  ``m.room.tombstone`` needs 150, above ``state_default``.

Every event's ``prev_events`` is the event before it; its ``auth_events``
are the spec's auth-events selection against the state so far
(:func:`p2pserver.rooms.auth.select_auth_event_ids`). Each event is then
checked against those auth events with the room version's authorization
rules, as every receiving server will check it ("The server MUST apply the
normal state resolution rules ... including checking power levels for each
event"), so a request that would lock the creator out fails here.

Errors (:class:`MatrixError` with the spec's errcode): a malformed body or
field -> ``M_BAD_JSON``; a malformed user ID or alias -> ``M_INVALID_PARAM``;
an unknown room version -> ``M_UNSUPPORTED_ROOM_VERSION``; a request whose
events cannot all be authorised -> ``M_INVALID_ROOM_STATE``. A ``creator``
who is not a user of ``server_name`` is the caller's bug: ValueError.
"""

from __future__ import annotations

import copy
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pserver.rooms.auth import (
    check_auth_events,
    check_auth_rules,
    is_valid_user_id,
    select_auth_event_ids,
)
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.errors import AuthError, BadJSON, MatrixError
from p2pserver.rooms.events import Event, StateKey, sender_server
from p2pserver.rooms.room_versions import DEFAULT_ROOM_VERSION, RoomVersion, get_room_version
from p2pserver.rooms.signing import SigningKey

__all__ = ["PRESETS", "CreatedRoom", "Preset", "create_room_events"]


@dataclass(frozen=True, slots=True)
class Preset:
    join_rule: str
    history_visibility: str
    guest_access: str
    invite_level: int
    # "All invitees are given the same power level as the room creator."
    invitees_are_creator_peers: bool


PRESETS: dict[str, Preset] = {
    "private_chat": Preset("invite", "shared", "can_join", 0, False),
    "trusted_private_chat": Preset("invite", "shared", "can_join", 0, True),
    "public_chat": Preset("public", "shared", "forbidden", 50, False),
}


@dataclass(frozen=True)
class CreatedRoom:
    """What createRoom produced; the caller persists and publishes it."""

    room_id: str
    room_version: RoomVersion
    events: tuple[Event, ...]
    # The room state after the last event: (type, state_key) -> event ID.
    state: dict[StateKey, str]
    # The full alias to map to the room (from room_alias_name), if any.
    alias: str | None
    # "public" means: publish in the room directory.
    visibility: str


def create_room_events(
    room_version: RoomVersion | None,
    *,
    creator: str,
    signing_key: SigningKey,
    request: Mapping[str, Any],
    server_name: str,
    origin_server_ts: int,
    rng: random.Random | None = None,
    creator_profile: Mapping[str, Any] | None = None,
) -> CreatedRoom:
    """Build the signed events for a createRoom request body.

    ``room_version`` is the server's default, used when the request names
    none (None: room version 12). ``creator`` must be a user of
    ``server_name``, which signs the events with ``signing_key``. ``rng``
    draws the opaque part of pre-v12 room IDs (default: the OS's randomness).
    ``creator_profile`` (``displayname``/``avatar_url``) goes into the join.
    """
    if not is_valid_user_id(creator, historical=False) or sender_server(creator) != server_name:
        raise ValueError(f"creator {creator!r} is not a user of {server_name!r}")
    req = _parse_request(request, room_version or DEFAULT_ROOM_VERSION, creator, server_name)
    version = req.room_version
    writer = _RoomWriter(version, creator, signing_key, server_name, origin_server_ts)

    # 1. m.room.create
    create_content = dict(req.creation_content)
    create_content["room_version"] = version.identifier
    if version.use_room_create_sender:
        create_content.pop("creator", None)
    else:
        create_content["creator"] = creator
    if version.privileged_creators and req.preset.invitees_are_creator_peers and req.invite:
        # MSC4289: the union of creation_content's and the invite list.
        extra = list(create_content.get("additional_creators", []))
        extra += [user for user in req.invite if user not in extra]
        create_content["additional_creators"] = extra
    if not version.room_id_is_create_event_hash:  # v12: the create event names the room
        writer.room_id = _random_room_id(rng or random.SystemRandom(), server_name)
    writer.send("m.room.create", "", create_content)

    # 2. the creator's join
    join_content: dict[str, Any] = {"membership": "join"}
    join_content.update(_profile(creator_profile))
    writer.send("m.room.member", creator, join_content)

    # Later steps that set a key win over earlier ones (see the docstring).
    initial_state = dict(req.initial_state)
    explicit = {("m.room.name", ""): req.name, ("m.room.topic", ""): req.topic}
    for key, value in explicit.items():
        if value is not None:
            initial_state.pop(key, None)

    # 3. m.room.power_levels
    pl_content = initial_state.pop(("m.room.power_levels", ""), None)
    if pl_content is None:
        pl_content = _default_power_levels(version, creator, req)
    pl_content = {**pl_content, **req.power_level_content_override}
    writer.send("m.room.power_levels", "", pl_content)

    # 4. m.room.canonical_alias
    if req.alias is not None and ("m.room.canonical_alias", "") not in initial_state:
        writer.send("m.room.canonical_alias", "", {"alias": req.alias})

    # 5. the preset's events
    preset_events = (
        ("m.room.join_rules", {"join_rule": req.preset.join_rule}),
        ("m.room.history_visibility", {"history_visibility": req.preset.history_visibility}),
        ("m.room.guest_access", {"guest_access": req.preset.guest_access}),
    )
    for event_type, content in preset_events:
        if (event_type, "") not in initial_state:
            writer.send(event_type, "", content)

    # 6. initial_state
    for (event_type, state_key), content in initial_state.items():
        writer.send(event_type, state_key, content)

    # 7. name and topic
    if req.name is not None:
        writer.send("m.room.name", "", {"name": req.name})
    if req.topic is not None:
        # MSC3765 / spec v1.15: the plain topic plus a text/plain m.topic block.
        topic_block = {"m.text": [{"mimetype": "text/plain", "body": req.topic}]}
        writer.send("m.room.topic", "", {"topic": req.topic, "m.topic": topic_block})

    # 8. invites
    for invitee in req.invite:
        invite_content: dict[str, Any] = {"membership": "invite"}
        if req.is_direct:
            invite_content["is_direct"] = True
        writer.send("m.room.member", invitee, invite_content)

    assert writer.room_id is not None
    return CreatedRoom(
        room_id=writer.room_id,
        room_version=version,
        events=tuple(writer.events),
        state=dict(writer.state),
        alias=req.alias,
        visibility=req.visibility,
    )


# -- building events in order -------------------------------------------------


class _RoomWriter:
    """Appends events one after another, tracking state and the DAG tip."""

    def __init__(
        self,
        room_version: RoomVersion,
        sender: str,
        signing_key: SigningKey,
        server_name: str,
        origin_server_ts: int,
    ) -> None:
        self.room_version = room_version
        self.sender = sender
        self.signing_key = signing_key
        self.server_name = server_name
        self.origin_server_ts = origin_server_ts
        self.room_id: str | None = None
        self.events: list[Event] = []
        self.state: dict[StateKey, str] = {}
        self.by_id: dict[str, Event] = {}

    def send(self, event_type: str, state_key: str, content: dict[str, Any]) -> Event:
        auth_event_ids = select_auth_event_ids(
            self.room_version, event_type, self.sender, state_key, content, self.state
        )
        event = build_event(
            self.room_version,
            signing_key=self.signing_key,
            sender=self.sender,
            type=event_type,
            content=content,
            room_id=self.room_id,
            prev_events=self.events[-1:],
            auth_events=auth_event_ids,
            state_key=state_key,
            origin_server_ts=self.origin_server_ts,
            server_name=self.server_name,
        )
        self._authorise(event)
        if self.room_id is None:  # the v12 create event names the room
            self.room_id = event.room_id
        self.events.append(event)
        self.state[(event_type, state_key)] = event.event_id
        self.by_id[event.event_id] = event
        return event

    def _authorise(self, event: Event) -> None:
        """Check the event as every receiving server will ("MUST apply ...
        checking power levels for each event")."""
        # Its auth events, plus the create event that v12 does not list.
        known = [self.by_id[event_id] for event_id in event.auth_event_ids]
        known.extend(self.events[:1])
        try:
            check_auth_rules(event, check_auth_events(event, known, ()))
        except AuthError as exc:
            raise MatrixError(
                f"the requested initial state is not allowed: {event.type} "
                f"{event.state_key!r}: {exc.message}",
                errcode="M_INVALID_ROOM_STATE",
            ) from exc


# -- the request ----------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    room_version: RoomVersion
    preset: Preset
    visibility: str
    creation_content: dict[str, Any]
    initial_state: dict[StateKey, dict[str, Any]]
    invite: list[str]
    is_direct: bool
    name: str | None
    topic: str | None
    alias: str | None
    power_level_content_override: dict[str, Any]


def _parse_request(
    request: Mapping[str, Any], default_version: RoomVersion, creator: str, server_name: str
) -> _Request:
    if not isinstance(request, Mapping):
        raise BadJSON("the createRoom body must be a JSON object")

    version_id = request.get("room_version")
    if version_id is None:
        room_version = default_version
    elif isinstance(version_id, str):
        room_version = get_room_version(version_id)
    else:
        raise BadJSON("room_version must be a string")

    visibility = _optional(request, "visibility", str) or "private"
    if visibility not in ("public", "private"):
        raise BadJSON(f"visibility must be 'public' or 'private', not {visibility!r}")
    preset_name = _optional(request, "preset", str)
    if preset_name is None:
        preset_name = "public_chat" if visibility == "public" else "private_chat"
    preset = PRESETS.get(preset_name)
    if preset is None:
        raise BadJSON(f"unknown preset {preset_name!r} (known: {', '.join(PRESETS)})")

    creation_content = _copy_object(_optional(request, "creation_content", Mapping))
    if room_version.privileged_creators and "additional_creators" in creation_content:
        extra = creation_content["additional_creators"]
        if not isinstance(extra, list) or not all(isinstance(u, str) for u in extra):
            raise BadJSON("creation_content.additional_creators must be a list of user IDs")
        _check_user_ids(extra, "creation_content.additional_creators")

    invite_list = _optional(request, "invite", list) or []
    if not all(isinstance(user, str) for user in invite_list):
        raise BadJSON("invite must be a list of user IDs")
    _check_user_ids(invite_list, "invite")
    if creator in invite_list:
        raise MatrixError("the room creator cannot invite themselves", errcode="M_INVALID_PARAM")
    invite = list(dict.fromkeys(invite_list))  # drop repeats, keep order

    alias = None
    alias_name = _optional(request, "room_alias_name", str)
    if alias_name is not None:
        alias = f"#{alias_name}:{server_name}"
        # Appendix "Room aliases": any localpart but ':' and NUL, 255 bytes in all.
        if not alias_name or ":" in alias_name or "\x00" in alias_name:
            raise MatrixError(f"invalid room_alias_name {alias_name!r}", errcode="M_INVALID_PARAM")
        if len(alias.encode("utf-8")) > 255:
            raise MatrixError("room alias is longer than 255 bytes", errcode="M_INVALID_PARAM")

    return _Request(
        room_version=room_version,
        preset=preset,
        visibility=visibility,
        creation_content=creation_content,
        initial_state=_parse_initial_state(request.get("initial_state")),
        invite=invite,
        is_direct=_optional(request, "is_direct", bool) or False,
        name=_optional(request, "name", str),
        topic=_optional(request, "topic", str),
        alias=alias,
        power_level_content_override=_copy_object(
            _optional(request, "power_level_content_override", Mapping)
        ),
    )


def _parse_initial_state(value: Any) -> dict[StateKey, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise BadJSON("initial_state must be a list of state events")
    events: dict[StateKey, dict[str, Any]] = {}
    for index, item in enumerate(value):
        where = f"initial_state[{index}]"
        if not isinstance(item, Mapping):
            raise BadJSON(f"{where} must be an object")
        event_type = item.get("type")
        state_key = item.get("state_key", "")
        content = item.get("content")
        if not isinstance(event_type, str):
            raise BadJSON(f"{where}.type must be a string")
        if not isinstance(state_key, str):
            raise BadJSON(f"{where}.state_key must be a string")
        if not isinstance(content, Mapping):
            raise BadJSON(f"{where}.content must be an object")
        if event_type == "m.room.create":
            raise MatrixError(
                f"{where}: a room has exactly one m.room.create event",
                errcode="M_INVALID_ROOM_STATE",
            )
        events[(event_type, state_key)] = _copy_object(content)
    return events


def _optional(request: Mapping[str, Any], key: str, kind: type) -> Any:
    """``request[key]`` if present and of ``kind``; None if absent or null."""
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadJSON(f"{key} must be {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


def _copy_object(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy, so later changes to the request cannot alter signed events."""
    return copy.deepcopy(dict(value)) if value else {}


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    list: "an array",
    Mapping: "an object",
}


def _profile(profile: Mapping[str, Any] | None) -> dict[str, str]:
    if not profile:
        return {}
    kept: dict[str, str] = {}
    for key in ("displayname", "avatar_url"):
        value = profile.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise BadJSON(f"{key} must be a string")
            kept[key] = value
    return kept


def _default_power_levels(version: RoomVersion, creator: str, req: _Request) -> dict[str, Any]:
    users: dict[str, int] = {}
    if not version.privileged_creators:
        users[creator] = 100
        if req.preset.invitees_are_creator_peers:
            users.update(dict.fromkeys(req.invite, 100))
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            # v12: above state_default so only creators can upgrade by default.
            "m.room.tombstone": 150 if version.privileged_creators else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": req.preset.invite_level,
    }


def _random_room_id(rng: random.Random, server_name: str) -> str:
    opaque = "".join(rng.choice(string.ascii_letters) for _ in range(18))
    return f"!{opaque}:{server_name}"


# -- identifiers ------------------------------------------------------------------


def _check_user_ids(user_ids: Sequence[str], field: str) -> None:
    for user_id in user_ids:
        if not is_valid_user_id(user_id, historical=False):
            raise MatrixError(f"{field}: invalid user ID {user_id!r}", errcode="M_INVALID_PARAM")
