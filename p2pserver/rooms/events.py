"""The PDU model: an immutable view of one room event.

An :class:`Event` wraps the PDU dict exactly as it travels between servers
(event format v3: no `event_id` key) and exposes the fields the algorithms
read. It is built once per event, after format validation, and never
mutated; code that needs a different PDU (redaction, signing) builds a new
one. Status such as rejected or outlier is storage's business, not the
event's.

For room version 12 the create event has no `room_id`; :attr:`room_id` is
derived from its event ID, so every event answers `room_id` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.hashing import compute_event_id, room_id_from_create_event_id
from p2pserver.rooms.room_versions import RoomVersion

StateKey = tuple[str, str]  # (event type, state_key)

# Events that only merge forward extremities (Synapse's type): never shown to clients.
DUMMY_EVENT_TYPE = "org.matrix.dummy_event"

# The state a client is shown of a room it is invited to or knocked on
# (spec: "Stripped state").
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


class Event:
    __slots__ = (
        "pdu",
        "room_version",
        "event_id",
        "room_id",
        "type",
        "state_key",
        "sender",
        "content",
        "prev_event_ids",
        "auth_event_ids",
        "depth",
        "origin_server_ts",
        "redacted",
    )

    pdu: dict[str, Any]
    room_version: RoomVersion
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    content: dict[str, Any]
    prev_event_ids: tuple[str, ...]
    auth_event_ids: tuple[str, ...]
    depth: int
    origin_server_ts: int
    # True when this view is the redacted form (content hash mismatch or an
    # applied redaction). Set by whoever built the redacted PDU.
    redacted: bool

    def __init__(
        self,
        pdu: Mapping[str, Any],
        room_version: RoomVersion,
        *,
        event_id: str | None = None,
        redacted: bool = False,
    ) -> None:
        """Wrap a PDU whose format is already known to be valid.

        Use :func:`p2pserver.rooms.validation.parse_pdu` for untrusted input.
        ``event_id`` may be passed when known (from storage) to skip hashing.
        """
        pdu = dict(pdu)
        pdu.pop("event_id", None)  # not part of the v3+ event format
        self.pdu = pdu
        self.room_version = room_version
        self.event_id = event_id if event_id is not None else compute_event_id(pdu, room_version)
        self.type = pdu["type"]
        self.state_key = pdu.get("state_key")
        self.sender = pdu["sender"]
        self.content = pdu.get("content") or {}
        self.prev_event_ids = tuple(pdu.get("prev_events", ()))
        self.auth_event_ids = tuple(pdu.get("auth_events", ()))
        self.depth = pdu.get("depth", 0)
        self.origin_server_ts = pdu.get("origin_server_ts", 0)
        self.redacted = redacted
        # A str for every PDU parse_pdu accepts; the auth rules still guard
        # against None for Events built from unchecked dicts.
        room_id: Any = pdu.get("room_id")
        if room_id is None and room_version.room_id_is_create_event_hash and self.is_create():
            room_id = room_id_from_create_event_id(self.event_id)
        self.room_id = room_id

    # -- questions every algorithm asks -------------------------------------

    def is_state(self) -> bool:
        return self.state_key is not None

    def is_create(self) -> bool:
        return self.type == "m.room.create" and self.state_key == ""

    @property
    def state_key_tuple(self) -> StateKey:
        """``(type, state_key)``; only meaningful for state events."""
        assert self.state_key is not None, "not a state event"
        return (self.type, self.state_key)

    @property
    def origin(self) -> str:
        """The sender's server name (the part after the first colon)."""
        return sender_server(self.sender)

    @property
    def membership(self) -> str | None:
        value = self.content.get("membership") if self.type == "m.room.member" else None
        return value if isinstance(value, str) else None

    @property
    def redacts(self) -> str | None:
        """The target of an m.room.redaction (content in v11+, top level before)."""
        if self.type != "m.room.redaction":
            return None
        source = self.content if self.room_version.redacts_in_content else self.pdu
        value = source.get("redacts")
        return value if isinstance(value, str) else None

    def get_pdu_json(self) -> dict[str, Any]:
        """A copy of the PDU for sending to a peer."""
        return dict(self.pdu)

    def __repr__(self) -> str:
        sk = f" {self.state_key!r}" if self.state_key is not None else ""
        return f"<Event {self.event_id} {self.type}{sk} by {self.sender}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)


def sender_server(user_id: str) -> str:
    """The server name of a user ID ``@localpart:server``."""
    _, _, server = user_id.partition(":")
    return server
