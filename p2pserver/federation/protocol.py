"""The federation protocol on the wire: method names, body shapes, limits, errcodes.

Each Server-Server API operation a P2P node needs is one request method on
the :class:`~p2pserver.transport.network.Network` (one libp2p stream
protocol, ``/p2pserver/federation/1``). There are no URLs, so:

- A method name stands for an endpoint (table below). Names are short and
  stable; changing one is a protocol change.
- Path and query parameters of the endpoint become top-level keys of the
  request body, beside the spec's JSON body keys (``/invite`` sends
  ``room_id``, ``event_id``, ``room_version``, ``event``,
  ``invite_room_state``). Where the spec's body *is* a bare PDU
  (``send_join``, ``send_leave``) the PDU travels under ``event``.
- Responses are the spec's response bodies, unchanged.
- The requesting server is the transport's authenticated ``origin`` (the
  PeerID of the Noise-authenticated connection), never a claim in the body.
  A body that names a server (``origin``, a ``user_id``, a PDU's sender)
  must name the requester, except PDUs relayed in a transaction, which are
  checked by their signatures (see :mod:`p2pserver.federation.server`).
- Refusals are Matrix errcodes: ``M_MISSING_PARAM`` / ``M_INVALID_PARAM``
  for a missing or mistyped parameter, ``M_BAD_JSON`` for a malformed PDU or
  template, ``M_TOO_LARGE`` for more than 50 PDUs or 100 EDUs in a
  transaction (or oversized lists), ``M_FORBIDDEN``, ``M_NOT_FOUND``,
  ``M_INCOMPATIBLE_ROOM_VERSION`` / ``M_UNSUPPORTED_ROOM_VERSION``, and
  ``M_UNRECOGNIZED`` for an unknown method.

===================== ============================================================
method                endpoint (spec.matrix.org, Server-Server API)
===================== ============================================================
send_transaction      PUT  /_matrix/federation/v1/send/{txnId}
get_missing_events    POST /_matrix/federation/v1/get_missing_events/{roomId}
backfill              GET  /_matrix/federation/v1/backfill/{roomId}
event                 GET  /_matrix/federation/v1/event/{eventId}
state_ids             GET  /_matrix/federation/v1/state_ids/{roomId}
state                 GET  /_matrix/federation/v1/state/{roomId}
event_auth            GET  /_matrix/federation/v1/event_auth/{roomId}/{eventId}
make_join             GET  /_matrix/federation/v1/make_join/{roomId}/{userId}
send_join             PUT  /_matrix/federation/v2/send_join/{roomId}/{eventId}
make_leave            GET  /_matrix/federation/v1/make_leave/{roomId}/{userId}
send_leave            PUT  /_matrix/federation/v2/send_leave/{roomId}/{eventId}
make_knock            GET  /_matrix/federation/v1/make_knock/{roomId}/{userId}
send_knock            PUT  /_matrix/federation/v1/send_knock/{roomId}/{eventId}
invite                PUT  /_matrix/federation/v2/invite/{roomId}/{eventId}
query_profile         GET  /_matrix/federation/v1/query/profile
user_devices          GET  /_matrix/federation/v1/user/devices/{userId}
keys_query            POST /_matrix/federation/v1/user/keys/query
keys_claim            POST /_matrix/federation/v1/user/keys/claim
query_directory       GET  /_matrix/federation/v1/query/directory
room_heads            (p2p) exchange forward extremities, see
                      :mod:`p2pserver.federation.sync`
===================== ============================================================

Every request has a timeout (:data:`TIMEOUTS`). This module does no I/O:
it names things and checks shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.canonical_json import encode_json_loose
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import sender_server
from p2pserver.rooms.room_versions import KNOWN_ROOM_VERSIONS
from p2pserver.rooms.validation import is_valid_event_id, is_valid_user_id
from p2pserver.storage.outbound import MAX_EDUS_PER_TRANSACTION, MAX_PDUS_PER_TRANSACTION

SEND_TRANSACTION = "send_transaction"
GET_MISSING_EVENTS = "get_missing_events"
BACKFILL = "backfill"
EVENT = "event"
STATE_IDS = "state_ids"
STATE = "state"
EVENT_AUTH = "event_auth"
MAKE_JOIN = "make_join"
SEND_JOIN = "send_join"
MAKE_LEAVE = "make_leave"
SEND_LEAVE = "send_leave"
MAKE_KNOCK = "make_knock"
SEND_KNOCK = "send_knock"
INVITE = "invite"
QUERY_PROFILE = "query_profile"
USER_DEVICES = "user_devices"
KEYS_QUERY = "keys_query"
KEYS_CLAIM = "keys_claim"
QUERY_DIRECTORY = "query_directory"
ROOM_HEADS = "room_heads"

# The spec's transaction limits (shared with the outbound queue's batches).
MAX_PDUS = MAX_PDUS_PER_TRANSACTION
MAX_EDUS = MAX_EDUS_PER_TRANSACTION
# /get_missing_events and /backfill: the most events one answer holds.
MAX_EVENTS_PER_ANSWER = 100
# Lists of event IDs in a request (latest_events, backfill's v, heads).
MAX_EVENT_IDS = 100
# How many of the events a server no longer in the room names are checked
# for whether it was joined there (each costs a state lookup).
MAX_STALE_VIEW_CHECKS = 4
# room_heads: rooms per request and extremities per room.
MAX_HEADS_ROOMS = 1000
MAX_HEADS_PER_ROOM = 20
MAX_TXN_ID_LENGTH = 128
# ``invite_room_state`` / ``knock_room_state``: events, and JSON bytes of them all.
MAX_STRIPPED_EVENTS = 50
MAX_STRIPPED_BYTES = 65536

SUPPORTED_ROOM_VERSIONS = tuple(KNOWN_ROOM_VERSIONS)

DEFAULT_TIMEOUT = 30.0
# Seconds each request may take, end to end. Requests that make the other
# side fetch from us (a transaction with gaps, a join) get longer.
TIMEOUTS: dict[str, float] = {
    SEND_TRANSACTION: 60.0,
    SEND_JOIN: 60.0,
    SEND_LEAVE: 60.0,
    SEND_KNOCK: 60.0,
    INVITE: 30.0,
    ROOM_HEADS: 15.0,
}


def timeout_for(method: str) -> float:
    return TIMEOUTS.get(method, DEFAULT_TIMEOUT)


class MissingParam(MatrixError):
    errcode = "M_MISSING_PARAM"


class InvalidParam(MatrixError):
    errcode = "M_INVALID_PARAM"


class TooLarge(MatrixError):
    errcode = "M_TOO_LARGE"


class Unrecognized(MatrixError):
    errcode = "M_UNRECOGNIZED"


class IncompatibleRoomVersion(MatrixError):
    errcode = "M_INCOMPATIBLE_ROOM_VERSION"


class Params:
    """Typed access to a request body; every failure is the spec's errcode."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.body:
            if required:
                raise MissingParam(f"missing parameter {key!r}")
            return None
        return self.body[key]

    def text(self, key: str, *, required: bool = True, max_length: int = 255) -> Any:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value or len(value) > max_length:
            raise InvalidParam(f"{key!r} must be a non-empty string of at most {max_length}")
        return value

    def room_id(self, key: str = "room_id") -> str:
        value: str = self.text(key)
        if not value.startswith("!"):
            raise InvalidParam(f"{key!r} is not a room ID")
        return value

    def event_id(self, key: str = "event_id") -> str:
        value: str = self.text(key)
        if not is_valid_event_id(value):
            raise InvalidParam(f"{key!r} is not an event ID")
        return value

    def user_id(self, key: str = "user_id") -> str:
        value: str = self.text(key)
        if not is_valid_user_id(value):
            raise InvalidParam(f"{key!r} is not a user ID")
        return value

    def event_ids(
        self, key: str, *, required: bool = True, limit: int = MAX_EVENT_IDS
    ) -> list[str]:
        value = self._get(key, required)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise InvalidParam(f"{key!r} must be a list of event IDs")
        if len(value) > limit:
            raise TooLarge(f"{key!r} lists more than {limit} event IDs")
        if not all(is_valid_event_id(v) for v in value):
            raise InvalidParam(f"{key!r} must be a list of event IDs")
        return list(value)

    def texts(self, key: str, *, required: bool = True, limit: int = 100) -> list[str]:
        value = self._get(key, required)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidParam(f"{key!r} must be a list of strings")
        if len(value) > limit:
            raise TooLarge(f"{key!r} has more than {limit} entries")
        return list(value)

    def integer(
        self, key: str, *, default: int | None = None, low: int = 0, high: int = 2**53 - 1
    ) -> int:
        """An integer in [low, high]; required unless a ``default`` is given."""
        value = self._get(key, default is None)
        if value is None and default is not None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidParam(f"{key!r} must be an integer in [{low}, {high}]")
        return value

    def mapping(self, key: str, *, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise InvalidParam(f"{key!r} must be a JSON object")
        return value

    def array(self, key: str, *, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise InvalidParam(f"{key!r} must be a list")
        return value

    def stripped_state(self, key: str) -> list[dict[str, Any]]:
        """Optional stripped state events (spec: type, state_key, content, sender).

        Untrusted and only shown to clients: each must have the four keys
        with the right types (M_INVALID_PARAM), and the list is bounded
        (M_TOO_LARGE). Only the four keys are kept.
        """
        value = self.array(key, required=False)
        if len(value) > MAX_STRIPPED_EVENTS:
            raise TooLarge(f"{key!r} has more than {MAX_STRIPPED_EVENTS} events")
        events: list[dict[str, Any]] = []
        for item in value:
            if not (
                isinstance(item, dict)
                and all(isinstance(item.get(k), str) for k in ("type", "state_key", "sender"))
                and isinstance(item.get("content"), dict)
            ):
                raise InvalidParam(
                    f"{key!r} must hold objects with string type, state_key and sender "
                    "and object content"
                )
            events.append({k: item[k] for k in ("type", "state_key", "content", "sender")})
        if len(encode_json_loose(events)) > MAX_STRIPPED_BYTES:
            raise TooLarge(f"{key!r} is larger than {MAX_STRIPPED_BYTES} bytes")
        return events

    def room_alias(self, key: str = "room_alias") -> str:
        value: str = self.text(key)
        if not value.startswith("#") or ":" not in value:
            raise InvalidParam(f"{key!r} is not a room alias")
        return value


def edu_claimed_servers(edu: Mapping[str, Any]) -> set[str]:
    """The servers an EDU speaks for (the users it names as actors).

    EDUs are not signed, so an EDU may only speak for its sender: the
    server refuses one that names a user of another server. Unknown EDU
    types claim nothing here; their handlers check what they read.
    """
    edu_type = edu.get("edu_type")
    content = edu.get("content")
    if not isinstance(content, Mapping):
        return set()
    users: list[Any] = []
    if edu_type in ("m.typing", "m.device_list_update", "m.signing_key_update"):
        users.append(content.get("user_id"))
    elif edu_type == "m.direct_to_device":
        users.append(content.get("sender"))
    elif edu_type == "m.presence":
        push = content.get("push")
        for item in push if isinstance(push, list) else ():
            users.append(item.get("user_id") if isinstance(item, Mapping) else None)
    elif edu_type == "m.receipt":
        for by_type in content.values():
            if not isinstance(by_type, Mapping):
                continue
            for by_user in by_type.values():
                if isinstance(by_user, Mapping):
                    users.extend(by_user.keys())
    # A malformed actor cannot be attributed to the sender either.
    return {sender_server(u) if isinstance(u, str) else "" for u in users}
