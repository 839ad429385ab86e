"""Test rooms for the authorization rules.

A :class:`Room` holds one linear room: its events, its current state and
the IDs of events it rejected. ``room.build(...)`` makes a signed event on
top of the current state with the auth events the selection algorithm
picks (for v12: no room_id on the create event, no create event in
auth_events); ``room.check(event)`` runs the receiving server's checks
(``check_auth_events`` then ``check_auth_rules``) against the room;
``room.send(...)`` builds, checks and applies. Tests that need a forged
event pass ``auth_events=``/``prev_events=``/``extra=`` to ``build``.

Users are ``@name:<hex key>`` with their own signing key; pass ``server=``
to put several users on one server.
"""

from __future__ import annotations

import copy
import itertools
import secrets
from dataclasses import dataclass
from typing import Any

import pytest

from p2pserver.rooms.auth import (
    check_auth_events,
    check_auth_rules,
    create_event_id_for_room,
    select_auth_event_ids,
)
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from p2pserver.rooms.signing import SigningKey, sign_event, sign_json

ALL_VERSIONS = (ROOM_V10, ROOM_V11, ROOM_V12)
VERSION_IDS = [v.identifier for v in ALL_VERSIONS]

_clock = itertools.count(1_700_000_000_000)


@dataclass(frozen=True)
class User:
    name: str
    key: SigningKey

    @property
    def server(self) -> str:
        return self.key.server_name

    @property
    def user_id(self) -> str:
        return f"@{self.name}:{self.server}"

    def peer(self, name: str) -> User:
        """Another user on the same server."""
        return User(name, self.key)


def new_user(name: str) -> User:
    return User(name, SigningKey.generate())


def cosign(event: Event, server_user: User) -> Event:
    """The event with an extra signature by ``server_user``'s server."""
    pdu = copy.deepcopy(event.pdu)
    sign_event(pdu, server_user.server, server_user.key, event.room_version)
    return Event(pdu, event.room_version)


class Room:
    """A linear test room and the state after its last event."""

    def __init__(
        self,
        version: RoomVersion,
        creator: User,
        *,
        create_content: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.creator = creator
        self.events: dict[str, Event] = {}
        self.state: dict[StateKey, Event] = {}
        self.rejected: set[str] = set()
        content: dict[str, Any] = {"room_version": version.identifier}
        if not version.use_room_create_sender:
            content["creator"] = creator.user_id
        if create_content is not None:
            content.update(create_content)
        room_id = None
        if not version.room_id_is_create_event_hash:
            room_id = f"!{secrets.token_hex(8)}:{creator.server}"
        self.create = build_event(
            version,
            signing_key=creator.key,
            sender=creator.user_id,
            type="m.room.create",
            content=content,
            room_id=room_id,
            state_key="",
            origin_server_ts=next(_clock),
            extra=extra,
        )
        self.room_id: str = self.create.room_id
        self.last: Event = self.create
        self.apply(self.create)

    # -- building ----------------------------------------------------------------

    def build(
        self,
        sender: User,
        type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        auth_events: list[Event | str] | None = None,
        prev_events: list[Event | str] | None = None,
        room_id: str | None = None,
        extra: dict[str, Any] | None = None,
        signing_key: SigningKey | None = None,
    ) -> Event:
        """A signed event on top of the room (not checked, not applied)."""
        if auth_events is None:
            ids = {key: e.event_id for key, e in self.state.items()}
            auth_events = list(
                select_auth_event_ids(self.version, type, sender.user_id, state_key, content, ids)
            )
        prev = prev_events if prev_events is not None else [self.last]
        depth = None
        if any(isinstance(p, str) for p in prev):
            depth = self.last.depth + 1
        return build_event(
            self.version,
            signing_key=signing_key or sender.key,
            sender=sender.user_id,
            type=type,
            content=content,
            room_id=room_id or self.room_id,
            prev_events=prev,
            auth_events=auth_events,
            state_key=state_key,
            depth=depth,
            origin_server_ts=next(_clock),
            extra=extra,
        )

    def member(self, sender: User, target: User | str, membership: str, **content: Any) -> Event:
        target_id = target if isinstance(target, str) else target.user_id
        return self.build(sender, "m.room.member", {"membership": membership, **content}, target_id)

    # -- checking ------------------------------------------------------------------

    def auth_events_of(self, event: Event) -> list[Event]:
        """The events a receiver would fetch: the listed ones (+ v12's create)."""
        events = [self.events[i] for i in event.auth_event_ids if i in self.events]
        if self.version.room_id_is_create_event_hash:
            create = self.events.get(create_event_id_for_room(event.room_id or "!"))
            if create is not None:
                events.append(create)
        return events

    def auth_map_for(self, event: Event) -> dict[StateKey, Event]:
        """The event's auth events as a map, unvalidated (for probing the rules)."""
        return {
            (e.type, e.state_key): e for e in self.auth_events_of(event) if e.state_key is not None
        }

    def check(self, event: Event) -> None:
        """The receiving server's checks: the auth events, then the rules
        against them, then the rules against the current state."""
        auth_map = check_auth_events(event, self.auth_events_of(event), self.rejected)
        check_auth_rules(event, auth_map)
        check_auth_rules(event, self.state)

    def check_against_state(self, event: Event) -> None:
        """Only the rules against the current state (as state resolution does)."""
        check_auth_rules(event, self.state)

    def apply(self, event: Event) -> Event:
        self.events[event.event_id] = event
        if event.state_key is not None:
            self.state[(event.type, event.state_key)] = event
        self.last = event
        return event

    def reject(self, event: Event) -> Event:
        """Store ``event`` as rejected (known, not in the state)."""
        self.events[event.event_id] = event
        self.rejected.add(event.event_id)
        return event

    def send(
        self,
        sender: User,
        type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        **kwargs: Any,
    ) -> Event:
        """Build, check (must pass) and apply."""
        event = self.build(sender, type, content, state_key, **kwargs)
        self.check(event)
        return self.apply(event)

    def send_member(
        self, sender: User, target: User | str, membership: str, **content: Any
    ) -> Event:
        event = self.member(sender, target, membership, **content)
        self.check(event)
        return self.apply(event)

    # -- common set-ups ----------------------------------------------------------

    def join(self, user: User, **content: Any) -> Event:
        return self.send_member(user, user, "join", **content)

    def invite(self, sender: User, target: User) -> Event:
        return self.send_member(sender, target, "invite")

    def set_join_rule(self, sender: User, rule: str, **content: Any) -> Event:
        return self.send(sender, "m.room.join_rules", {"join_rule": rule, **content}, "")

    def set_power_levels(self, sender: User, content: dict[str, Any]) -> Event:
        return self.send(sender, "m.room.power_levels", content, "")

    def power_levels_content(self, **overrides: Any) -> dict[str, Any]:
        """The current power levels content (or a fresh default) with overrides."""
        current = self.state.get(("m.room.power_levels", ""))
        content = copy.deepcopy(current.content) if current else default_power_levels(self)
        content.update(overrides)
        return content


def default_power_levels(room: Room) -> dict[str, Any]:
    """What a server sends at room creation (no creator entry in v12)."""
    users = {} if room.version.privileged_creators else {room.creator.user_id: 100}
    return {
        "users": users,
        "users_default": 0,
        "events": {"m.room.name": 50, "m.room.power_levels": 100},
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
    }


def new_room(
    version: RoomVersion,
    *,
    join_rule: str = "public",
    creator: User | None = None,
    members: tuple[User, ...] = (),
    power_users: dict[str, int] | None = None,
    create_content: dict[str, Any] | None = None,
    **power_overrides: Any,
) -> Room:
    """The usual opening: create, creator joins, power levels, join rules,
    then ``members`` join (through an invite unless the room is public)."""
    creator = creator or new_user("creator")
    room = Room(version, creator, create_content=create_content)
    room.join(creator)
    content = default_power_levels(room)
    if power_users:
        content["users"].update(power_users)
    content.update(power_overrides)
    room.set_power_levels(creator, content)
    room.set_join_rule(creator, join_rule)
    for member in members:
        if join_rule != "public":
            room.invite(creator, member)
        room.join(member)
    return room


def third_party_invite_content(
    identity_key: SigningKey, *, single: bool = True, many: bool = False
) -> dict[str, Any]:
    """Content of an m.room.third_party_invite advertising ``identity_key``."""
    content: dict[str, Any] = {
        "display_name": "a...@example.org",
        "key_validity_url": "https://id.example.org/_matrix/identity/v2/pubkey/isvalid",
    }
    if single:
        content["public_key"] = identity_key.public_key_base64
    if many:
        content["public_keys"] = [
            {"public_key": SigningKey.generate().public_key_base64},
            {"public_key": identity_key.public_key_base64},
        ]
    return content


def signed_block(
    identity_key: SigningKey, mxid: str, token: str, *, server: str = "id.example.org"
) -> dict[str, Any]:
    """The identity server's ``signed`` object for a third-party invite."""
    return sign_json({"mxid": mxid, "token": token, "sender": "@x:y"}, server, identity_key)


def forge(event: Event, **changes: Any) -> Event:
    """``event`` with top-level PDU keys changed (``None`` deletes), re-signed
    by nobody: only for rule checks, which do not look at the sender's
    signature. The event ID is recomputed unless ``event_id`` is given."""
    pdu = copy.deepcopy(event.pdu)
    event_id = changes.pop("event_id", None)
    for key, value in changes.items():
        if value is None:
            pdu.pop(key, None)
        else:
            pdu[key] = value
    return Event(pdu, event.room_version, event_id=event_id)


def with_content(event: Event, content: dict[str, Any], *, event_id: str | None = None) -> Event:
    """``event`` with new content; pass ``event_id`` for content that canonical
    JSON cannot hash (floats)."""
    return forge(event, content=content, event_id=event_id)


versions = pytest.mark.parametrize("version", ALL_VERSIONS, ids=VERSION_IDS)
