"""The authorization rules of room versions 10, 11 and 12.

Spec: spec.matrix.org, rooms/v10, v11 and v12 "Authorization rules", and
server-server API "Auth events selection". Comments carry the v12 rule
numbers; v12 inserted rule 2 (room ID = create event) and rule 10.4
(creators not in power levels), so for v10/v11 subtract one from every rule
number from 3 on, and one more inside the power-levels rule after 10.4
(v12's 10.5 is v11's 9.4). v10/v11's rule 2.4 ("no create event among the
auth events") has no v12 counterpart: there the room ID names the create
event. v12's 3.5 (auth events from another room) is not in v10/v11's list,
but every server applies it there too (Synapse, ruma), and so do we.

The checks are split the way a receiving server uses them:

- :func:`check_auth_events` -- the event's *own* auth_events list (v12 rules
  2 and 3; v10/v11 rule 2): duplicates, unexpected entries, rejected
  entries, entries from another room, the create event. Run once per event
  on receipt. Returns the ``(type, state_key) -> Event`` map to authorise
  against.
- :func:`check_auth_rules` -- every other rule, against any state map: the
  event's auth events, the state before it, the current state, or the
  partial state of state resolution's iterative auth checks. The map must
  hold the create event under ``("m.room.create", "")`` (in v12 too, where
  the event does not list it). Raises :class:`AuthError` naming the rule.
- :func:`auth_types_for_event` / :func:`select_auth_event_ids` -- the auth
  events selection, for building events and for rule 3.2.

Signatures: the rules assume the caller has checked the sender's server
signature. The one signature the rules themselves demand (5.2, the server
of ``join_authorised_via_users_server``) is verified here with the key the
server name stands for: p2pserver server names are the hex of their ed25519
public key, so no key lookup is needed. Third-party invites (5.4.1.7) are
verified against the public keys in the ``m.room.third_party_invite`` event.

Redactions: since room version 3 m.room.redaction has no auth rule of its
own; it passes or fails like any event (rules 8 and 11). Whether a redaction
is *applied* is decided later by :func:`redaction_applies` ("Handling
redactions").

Everything here is pure: no I/O, no mutation of events or maps.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import nacl.signing

from p2pserver.rooms.base64 import decode_base64
from p2pserver.rooms.errors import AuthError, MatrixError
from p2pserver.rooms.events import Event, StateKey, sender_server
from p2pserver.rooms.power_levels import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    PowerLevel,
    get_creators,
    get_named_level,
    get_required_power_level,
    get_user_power_level,
)
from p2pserver.rooms.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from p2pserver.rooms.signing import server_name_verify_key, verify_event_signature, verify_json

# Rule 1.4 (v12) and 10.3 validate user IDs exactly as the format check
# validates `sender` (the historical grammar); re-exported for callers.
from p2pserver.rooms.validation import is_valid_user_id

__all__ = [
    "MissingAuthEvents",
    "auth_types_for_event",
    "check_auth_events",
    "check_auth_rules",
    "create_event_id_for_room",
    "get_creators",
    "get_named_level",
    "get_required_power_level",
    "get_user_power_level",
    "is_valid_user_id",
    "redaction_applies",
    "select_auth_event_ids",
]

JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

# 10.1: the scalar levels; 10.2: the maps of integer levels.
_SCALAR_LEVELS = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
_LEVEL_MAPS = ("events", "notifications")


class MissingAuthEvents(Exception):
    """The caller did not supply auth events the PDU lists (or v12's create).

    Not an :class:`AuthError`: the event is not known to be unauthorised,
    the caller has to fetch these events first.
    """

    def __init__(self, event_ids: Iterable[str]) -> None:
        self.event_ids = tuple(event_ids)
        super().__init__("auth events not supplied: " + ", ".join(self.event_ids))


# -- identifiers --------------------------------------------------------------


def create_event_id_for_room(room_id: str) -> str:
    """v12: the create event's ID for a room ID (`!` swapped for `$`)."""
    return "$" + room_id[1:]


# -- auth events selection ------------------------------------------------------


def _auth_types(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> list[StateKey]:
    """The selection in the spec's order, without duplicates."""
    if event_type == "m.room.create":
        return []  # the create event has no auth events
    types: list[StateKey] = []
    # The create event -- not in v12, where the room ID stands for it.
    if not room_version.room_id_is_create_event_hash:
        types.append(CREATE_KEY)
    # The current power levels, and the sender's membership.
    types.append(POWER_LEVELS_KEY)
    types.append(("m.room.member", sender))
    if event_type == "m.room.member":
        # The target's membership (malformed events are refused by rule 5.1).
        if isinstance(state_key, str):
            types.append(("m.room.member", state_key))
        membership = content.get("membership")
        # join_rules for join, invite and knock.
        if membership in ("join", "invite", "knock"):
            types.append(JOIN_RULES_KEY)
        # The third-party invite the token names.
        if membership == "invite":
            invite = content.get("third_party_invite")
            signed = invite.get("signed") if isinstance(invite, Mapping) else None
            token = signed.get("token") if isinstance(signed, Mapping) else None
            if isinstance(token, str):
                types.append(("m.room.third_party_invite", token))
        # Restricted joins (v8+): the authorising user's membership.
        if membership == "join":
            authoriser = content.get("join_authorised_via_users_server")
            if isinstance(authoriser, str):
                types.append(("m.room.member", authoriser))
    return list(dict.fromkeys(types))


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> set[StateKey]:
    """The ``(type, state_key)`` pairs an event's auth_events may name."""
    return set(_auth_types(room_version, event_type, sender, state_key, content))


def select_auth_event_ids(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    current_state: Mapping[StateKey, str],
) -> list[str]:
    """The auth_events for a new event: the selected entries of the state map.

    In the spec's order; entries absent from ``current_state`` are skipped
    (each is "if any"). Never includes the create event in v12.
    """
    selected = []
    for key in _auth_types(room_version, event_type, sender, state_key, content):
        event_id = current_state.get(key)
        if event_id is not None:
            selected.append(event_id)
    return selected


# -- the event's own auth_events (v12 rules 2-3, v10/v11 rule 2) ----------------


def check_auth_events(
    event: Event, auth_events: Sequence[Event], rejected: Collection[str]
) -> dict[StateKey, Event]:
    """Validate the event's auth_events and return them as a state map.

    ``auth_events`` are the events the PDU lists (plus, in v12, the create
    event named by the room ID; extra events are ignored). ``rejected``
    holds the IDs of events rejected on receipt. Raises :class:`AuthError`
    for a rule violation and :class:`MissingAuthEvents` when a listed event
    (or v12's create event) was not supplied.
    """
    # 1. The create event has no auth events; its own rule decides.
    if event.type == "m.room.create":
        return {}
    version = event.room_version
    room_id = event.room_id
    if not isinstance(room_id, str):
        raise AuthError("event has no room_id")
    by_id = {e.event_id: e for e in auth_events}
    missing = [i for i in event.auth_event_ids if i not in by_id]

    create: Event | None = None
    if version.room_id_is_create_event_hash:
        # 2. (v12) The room ID must name an accepted m.room.create event.
        if not room_id.startswith("!"):
            raise AuthError(f"rule 2: room ID {room_id!r} is not a room ID")
        create_id = create_event_id_for_room(room_id)
        create = by_id.get(create_id)
        if create is None:
            missing.append(create_id)
        elif not create.is_create():
            raise AuthError(f"rule 2: room ID does not name an m.room.create event: {room_id}")
        elif create_id in rejected:
            raise AuthError(f"rule 2: the room's create event {create_id} was rejected")
        # 3.2 (v12) The create event must not be listed.
        if create_id in event.auth_event_ids:
            raise AuthError("auth_events 3.2: m.room.create must not be listed in v12")
    if missing:
        raise MissingAuthEvents(missing)

    expected = auth_types_for_event(
        version, event.type, event.sender, event.state_key, event.content
    )
    result: dict[StateKey, Event] = {}
    for event_id in event.auth_event_ids:
        auth_event = by_id[event_id]
        if auth_event.state_key is None:
            raise AuthError(f"auth_events 3.2: {event_id} is not a state event")
        key = (auth_event.type, auth_event.state_key)
        # 3.1 No duplicate entries for a (type, state_key) pair.
        if key in result:
            raise AuthError(f"auth_events 3.1: duplicate entries for {key}")
        # 3.2 Only entries the auth events selection allows.
        if key not in expected:
            raise AuthError(f"auth_events 3.2: unexpected entry {key} ({event_id})")
        # 3.3 No entries that were themselves rejected.
        if event_id in rejected:
            raise AuthError(f"auth_events 3.3: entry {event_id} was rejected")
        # 3.5 No entries from another room.
        if auth_event.room_id != room_id:
            raise AuthError(f"auth_events 3.5: entry {event_id} is from another room")
        result[key] = auth_event

    if create is None:
        # 2.4 (v10/v11) There must be an m.room.create event among the entries.
        if CREATE_KEY not in result:
            raise AuthError("auth_events 2.4: no m.room.create event among the entries")
    else:
        result[CREATE_KEY] = create
    return result


# -- the rules against a state map ---------------------------------------------


def check_auth_rules(event: Event, auth_events: Mapping[StateKey, Event]) -> None:
    """Apply the authorization rules to ``event`` against ``auth_events``.

    ``auth_events`` maps ``(type, state_key)`` to events and must include
    the create event (v12 too). Returns if the event is allowed; raises
    :class:`AuthError` whose message names the failing rule otherwise.
    """
    version = event.room_version

    # 1. m.room.create
    if event.type == "m.room.create":
        _check_create(event)
        return

    create = auth_events.get(CREATE_KEY)
    if create is None:
        raise AuthError("no m.room.create event in the auth state")

    # 2. (v12) The room ID must be the create event's ID with `!` for `$`.
    # (That the create event was accepted is check_auth_events' business.)
    room_id = event.room_id
    if not isinstance(room_id, str):
        raise AuthError("event has no room_id")
    if version.room_id_is_create_event_hash:
        if not room_id.startswith("!") or create.event_id != create_event_id_for_room(room_id):
            raise AuthError(f"rule 2: room ID {room_id} does not match the create event")
    elif create.room_id != room_id:  # 3.5's guard, for maps not built by check_auth_events
        raise AuthError(f"the create event is for another room than {room_id}")

    # 3. The event's own auth_events: see check_auth_events.

    # 4. m.federate: false keeps other servers out.
    if create.content.get("m.federate", True) is False and sender_server(
        event.sender
    ) != sender_server(create.sender):
        raise AuthError("m.federate: room is not federated and sender is from another server")

    # 5. m.room.member
    if event.type == "m.room.member":
        _check_membership(event, auth_events, create)
        return

    # 6. The sender must be joined.
    if _membership(auth_events, event.sender) != "join":
        raise AuthError(f"rule 6: sender {event.sender} is not joined to the room")

    sender_level = get_user_power_level(event.sender, auth_events)

    # 7. m.room.third_party_invite: allowed iff the sender may invite.
    if event.type == "m.room.third_party_invite":
        if sender_level < get_named_level(auth_events, "invite"):
            raise AuthError("m.room.third_party_invite: sender's power level is below invite")
        return

    # 8. The sender must reach the event type's required power level.
    required = get_required_power_level(auth_events, event.type, event.state_key)
    if required > sender_level:
        raise AuthError(
            f"rule 8: sending {event.type} needs power level {required}, sender has {sender_level}"
        )

    # 9. State keys that are user IDs belong to that user.
    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:
        raise AuthError("rule 9: state_key starting with @ must be the sender")

    # 10. m.room.power_levels
    if event.type == "m.room.power_levels":
        _check_power_levels(event, auth_events, create, sender_level)

    # 11. Otherwise, allow.


def _check_create(event: Event) -> None:
    """Rule 1, the m.room.create event."""
    version = event.room_version
    content = event.content
    # 1.1 No prev_events.
    if event.prev_event_ids:
        raise AuthError("m.room.create: the create event has prev_events")
    if version.room_id_is_create_event_hash:
        # 1.2 (v12) No room_id: the room ID is derived from the event ID.
        if "room_id" in event.pdu:
            raise AuthError("m.room.create: the create event must not have a room_id in v12")
    else:
        # 1.2 (v10/v11) The room ID's domain is the sender's.
        room_id = event.room_id
        if not isinstance(room_id, str) or sender_server(room_id) != sender_server(event.sender):
            raise AuthError("m.room.create: room_id domain does not match the sender's")
    # 1.3 A room_version, if present, must be recognised.
    if "room_version" in content:
        room_version = content["room_version"]
        if not isinstance(room_version, str) or room_version not in KNOWN_ROOM_VERSIONS:
            raise AuthError(f"m.room.create: unrecognised room_version {room_version!r}")
    # 1.4 (v10) content.creator is required; v11 dropped it for the sender.
    if not version.use_room_create_sender and "creator" not in content:
        raise AuthError("m.room.create: content has no creator")
    # 1.4 (v12) additional_creators must be a list of valid user IDs.
    if version.privileged_creators and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise AuthError("m.room.create: additional_creators must be a list of user IDs")
    # 1.5 Otherwise, allow.


def _membership(auth_events: Mapping[StateKey, Event], user_id: str) -> str | None:
    """A user's current membership, or None if they have no member event."""
    member = auth_events.get(("m.room.member", user_id))
    return member.membership if member is not None else None


def _join_rule(auth_events: Mapping[StateKey, Event]) -> str | None:
    event = auth_events.get(JOIN_RULES_KEY)
    if event is None:
        return "invite"  # no join rules event: nobody joins uninvited
    rule = event.content.get("join_rule")
    return rule if isinstance(rule, str) else None


def _check_membership(event: Event, auth_events: Mapping[StateKey, Event], create: Event) -> None:
    """Rule 5, m.room.member events."""
    content = event.content
    target = event.state_key
    membership = content.get("membership")
    # 5.1 A state_key and a membership are required.
    if target is None or "membership" not in content:
        raise AuthError("m.room.member: no state_key or no membership")

    # 5.2 join_authorised_via_users_server: the named user's server signed it.
    if "join_authorised_via_users_server" in content:
        authoriser = content["join_authorised_via_users_server"]
        if not is_valid_user_id(authoriser) or not _signed_by_server(
            event, sender_server(authoriser)
        ):
            raise AuthError(
                "m.room.member: not signed by the server of join_authorised_via_users_server"
            )

    sender = event.sender
    if membership == "join":
        _check_join(event, auth_events, create, target)
    elif membership == "invite":
        _check_invite(event, auth_events, target)
    elif membership == "leave":
        # 5.5.1 Leaving yourself: allowed iff invited, joined or knocking.
        sender_membership = _membership(auth_events, sender)
        if sender == target:
            if sender_membership in ("invite", "join", "knock"):
                return
            raise AuthError(
                f"m.room.member leave: cannot leave with membership {sender_membership}"
            )
        # 5.5.2 Kicks and unbans need the sender joined.
        if sender_membership != "join":
            raise AuthError("m.room.member leave: sender is not joined")
        sender_level = get_user_power_level(sender, auth_events)
        # 5.5.3 Unbanning needs the ban level.
        if _membership(auth_events, target) == "ban" and sender_level < get_named_level(
            auth_events, "ban"
        ):
            raise AuthError("m.room.member leave: sender's power level is below ban (unban)")
        # 5.5.4 Kicking needs the kick level and a higher level than the target.
        if (
            sender_level >= get_named_level(auth_events, "kick")
            and get_user_power_level(target, auth_events) < sender_level
        ):
            return
        # 5.5.5 Otherwise, reject.
        raise AuthError("m.room.member leave: sender may not kick the target")
    elif membership == "ban":
        # 5.6.1 The sender must be joined.
        if _membership(auth_events, sender) != "join":
            raise AuthError("m.room.member ban: sender is not joined")
        # 5.6.2 The ban level, and a higher level than the target.
        sender_level = get_user_power_level(sender, auth_events)
        if (
            sender_level >= get_named_level(auth_events, "ban")
            and get_user_power_level(target, auth_events) < sender_level
        ):
            return
        # 5.6.3 Otherwise, reject.
        raise AuthError("m.room.member ban: sender may not ban the target")
    elif membership == "knock":
        # 5.7.1 Only knock and knock_restricted rooms take knocks.
        if _join_rule(auth_events) not in ("knock", "knock_restricted"):
            raise AuthError("m.room.member knock: join rule does not allow knocking")
        # 5.7.2 Users knock for themselves only.
        if sender != target:
            raise AuthError("m.room.member knock: sender does not match state_key")
        # 5.7.3 Allowed unless banned, invited or joined.
        if _membership(auth_events, sender) not in ("ban", "invite", "join"):
            return
        # 5.7.4 Otherwise, reject.
        raise AuthError("m.room.member knock: sender is banned, invited or joined")
    else:
        # 5.8 Unknown membership.
        raise AuthError(f"m.room.member: unknown membership {membership!r}")


def _check_join(
    event: Event, auth_events: Mapping[StateKey, Event], create: Event, target: str
) -> None:
    """Rule 5.3, membership join."""
    sender = event.sender
    # 5.3.1 The creator's own join right after the create event.
    if event.prev_event_ids == (create.event_id,) and target in _first_joiner(create):
        return
    # 5.3.2 Users join only themselves.
    if sender != target:
        raise AuthError("m.room.member join: sender does not match state_key")
    sender_membership = _membership(auth_events, sender)
    # 5.3.3 Banned users cannot join.
    if sender_membership == "ban":
        raise AuthError("m.room.member join: sender is banned")
    join_rule = _join_rule(auth_events)
    # 5.3.4 invite and knock rooms: allowed if invited or joined.
    if join_rule in ("invite", "knock"):
        if sender_membership in ("invite", "join"):
            return
        raise AuthError(f"m.room.member join: join rule is {join_rule} and sender is not invited")
    # 5.3.5 restricted and knock_restricted rooms.
    if join_rule in ("restricted", "knock_restricted"):
        # 5.3.5.1 Already joined or invited.
        if sender_membership in ("join", "invite"):
            return
        # 5.3.5.2 Otherwise a joined user who may invite must vouch for it.
        authoriser = event.content.get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            raise AuthError(
                f"m.room.member join: {join_rule} join without join_authorised_via_users_server"
            )
        if _membership(auth_events, authoriser) != "join":
            raise AuthError("m.room.member join: join_authorised_via_users_server is not joined")
        if get_user_power_level(authoriser, auth_events) < get_named_level(auth_events, "invite"):
            raise AuthError("m.room.member join: join_authorised_via_users_server may not invite")
        # 5.3.5.3 Otherwise, allow.
        return
    # 5.3.6 Public rooms.
    if join_rule == "public":
        return
    # 5.3.7 Otherwise, reject.
    raise AuthError(f"m.room.member join: join rule {join_rule!r} does not allow joining")


def _first_joiner(create: Event) -> frozenset[str]:
    """5.3.1: v10 names content.creator, v11+ the create event's sender."""
    if create.room_version.use_room_create_sender:
        return frozenset((create.sender,))
    return get_creators(create)


def _check_invite(event: Event, auth_events: Mapping[StateKey, Event], target: str) -> None:
    """Rule 5.4, membership invite."""
    content = event.content
    target_membership = _membership(auth_events, target)
    # 5.4.1 Invites for third-party identifiers.
    if "third_party_invite" in content:
        # 5.4.1.1 The target must not be banned.
        if target_membership == "ban":
            raise AuthError("m.room.member invite: target user is banned")
        invite = content["third_party_invite"]
        # 5.4.1.2 A `signed` object is required.
        signed = invite.get("signed") if isinstance(invite, Mapping) else None
        if not isinstance(signed, Mapping):
            raise AuthError("m.room.member invite: third_party_invite has no signed object")
        # 5.4.1.3 ... holding mxid and token.
        if "mxid" not in signed or "token" not in signed:
            raise AuthError("m.room.member invite: third_party_invite.signed lacks mxid or token")
        # 5.4.1.4 mxid is the invited user.
        if signed["mxid"] != target:
            raise AuthError(
                "m.room.member invite: third_party_invite mxid does not match state_key"
            )
        # 5.4.1.5 The m.room.third_party_invite event the token names.
        token = signed["token"]
        tpi = (
            auth_events.get(("m.room.third_party_invite", token))
            if isinstance(token, str)
            else None
        )
        if tpi is None:
            raise AuthError("m.room.member invite: no m.room.third_party_invite for the token")
        # 5.4.1.6 Sent by whoever sent that third-party invite.
        if tpi.sender != event.sender:
            raise AuthError(
                "m.room.member invite: sender did not send the m.room.third_party_invite"
            )
        # 5.4.1.7 A signature in `signed` by one of the invite's public keys.
        if _third_party_signed(signed, tpi):
            return
        # 5.4.1.8 Otherwise, reject.
        raise AuthError(
            "m.room.member invite: third_party_invite.signed is not signed by the invite's keys"
        )
    # 5.4.2 The sender must be joined.
    if _membership(auth_events, event.sender) != "join":
        raise AuthError("m.room.member invite: sender is not joined")
    # 5.4.3 The target must not be joined or banned.
    if target_membership in ("join", "ban"):
        raise AuthError(f"m.room.member invite: target user's membership is {target_membership}")
    # 5.4.4 The sender needs the invite level.
    if get_user_power_level(event.sender, auth_events) >= get_named_level(auth_events, "invite"):
        return
    # 5.4.5 Otherwise, reject.
    raise AuthError("m.room.member invite: sender's power level is below invite")


def _third_party_public_keys(tpi: Event) -> list[nacl.signing.VerifyKey]:
    """The keys of an m.room.third_party_invite: public_key and public_keys."""
    encoded: list[object] = [tpi.content.get("public_key")]
    public_keys = tpi.content.get("public_keys")
    if isinstance(public_keys, list):
        encoded.extend(k.get("public_key") for k in public_keys if isinstance(k, Mapping))
    keys = []
    for text in encoded:
        if not isinstance(text, str):
            continue
        try:
            raw = decode_base64(text)
        except ValueError:
            continue
        if len(raw) == 32:
            keys.append(nacl.signing.VerifyKey(raw))
    return keys


def _third_party_signed(signed: Mapping[str, Any], tpi: Event) -> bool:
    """5.4.1.7: any signature in ``signed`` verifies under any invite key."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    keys = _third_party_public_keys(tpi)
    for server_name, by_key in signatures.items():
        if not isinstance(by_key, Mapping):
            continue
        key_ids = [k for k in by_key if isinstance(k, str) and k.startswith("ed25519:")]
        for verify_key in keys:
            try:
                verify_json(signed, server_name, {key_id: verify_key for key_id in key_ids})
            except MatrixError:  # SignatureError, or BadJSON from a malformed `signed`
                continue
            return True
    return False


def _signed_by_server(event: Event, server_name: str) -> bool:
    """Whether ``server_name`` signed the event (its key is its name)."""
    verify_key = server_name_verify_key(server_name)
    signatures = event.pdu.get("signatures")
    by_server = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    if verify_key is None or not isinstance(by_server, Mapping):
        return False
    keys = {k: verify_key for k in by_server if isinstance(k, str) and k.startswith("ed25519:")}
    try:
        verify_event_signature(event.pdu, server_name, event.room_version, keys)
    except MatrixError:
        return False
    return True


def _check_power_levels(
    event: Event,
    auth_events: Mapping[StateKey, Event],
    create: Event,
    sender_level: PowerLevel,
) -> None:
    """Rule 10, m.room.power_levels."""
    content = event.content
    # 10.1 The scalar levels must be integers.
    for name in _SCALAR_LEVELS:
        if name in content and type(content[name]) is not int:
            raise AuthError(f"m.room.power_levels: {name} is not an integer")
    # 10.2 events and notifications: objects of integers.
    for name in _LEVEL_MAPS:
        if name in content and not _is_int_map(content[name]):
            raise AuthError(f"m.room.power_levels: {name} is not an object of integers")
    # 10.3 users: an object from user IDs to integers.
    users = content.get("users", {})
    if not _is_int_map(users) or not _keys_are_user_ids(event, users):
        raise AuthError("m.room.power_levels: users is not an object from user IDs to integers")
    # 10.4 (v12) Creators may not be listed: their level is fixed.
    if create.room_version.privileged_creators and any(
        creator in users for creator in get_creators(create)
    ):
        raise AuthError("m.room.power_levels: users must not contain a room creator")

    # 10.5 The first power levels event is allowed.
    current = auth_events.get(POWER_LEVELS_KEY)
    if current is None:
        return
    old = current.content

    # 10.6 Scalar levels added, changed or removed: old and new within reach.
    for name in _SCALAR_LEVELS:
        old_value, new_value = old.get(name), content.get(name)
        if old_value == new_value:
            continue
        # 10.6.1 the current value
        if _level_above(old_value, sender_level):
            raise AuthError(f"m.room.power_levels: current {name} is above the sender's level")
        # 10.6.2 the new value
        if _level_above(new_value, sender_level):
            raise AuthError(f"m.room.power_levels: new {name} is above the sender's level")

    # 10.7 and 10.8 events and notifications entries.
    for name in _LEVEL_MAPS:
        old_map, new_map = _as_map(old.get(name)), _as_map(content.get(name))
        for key in old_map.keys() | new_map.keys():
            old_value, new_value = old_map.get(key), new_map.get(key)
            if old_value == new_value:
                continue
            # 10.7.1 changed or removed: the current value within reach
            if _level_above(old_value, sender_level):
                raise AuthError(
                    f"m.room.power_levels: current {name}[{key!r}] is above the sender's level"
                )
            # 10.8.1 added or changed: the new value within reach
            if _level_above(new_value, sender_level):
                raise AuthError(
                    f"m.room.power_levels: new {name}[{key!r}] is above the sender's level"
                )

    # 10.9 and 10.10 users entries.
    old_users = _as_map(old.get("users"))
    for user_id in old_users.keys() | users.keys():
        old_value, new_value = old_users.get(user_id), users.get(user_id)
        if old_value == new_value:
            continue
        # 10.9.1 changed or removed, except the sender's own: only below the sender
        if user_id != event.sender and type(old_value) is int and old_value >= sender_level:
            raise AuthError(
                f"m.room.power_levels: cannot change {user_id}, whose level is not below "
                "the sender's"
            )
        # 10.10.1 added or changed: not above the sender
        if _level_above(new_value, sender_level):
            raise AuthError(f"m.room.power_levels: cannot raise {user_id} above the sender's level")
    # 10.11 Otherwise, allow.


# 10.3 costs about a microsecond per user ID, milliseconds for a big room,
# and state resolution checks the same power-levels event again and again.
# `users` survives redaction, so the event ID fixes it: remember the verdict.
_MEMO_MAX_ENTRIES = 4096
_users_valid_memo: dict[str, bool] = {}


def _keys_are_user_ids(event: Event, users: dict[str, Any]) -> bool:
    verdict = _users_valid_memo.get(event.event_id)
    if verdict is None:
        verdict = all(is_valid_user_id(u) for u in users)
        if len(_users_valid_memo) >= _MEMO_MAX_ENTRIES:
            _users_valid_memo.clear()
        _users_valid_memo[event.event_id] = verdict
    return verdict


def _is_int_map(value: object) -> bool:
    return isinstance(value, dict) and all(type(v) is int for v in value.values())


def _as_map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _level_above(value: object, sender_level: PowerLevel) -> bool:
    # Absent (None) means nothing to compare: an addition has no current value.
    return type(value) is int and value > sender_level


# -- handling redactions --------------------------------------------------------


def redaction_applies(
    redaction: Event, redacted: Event, auth_events: Mapping[StateKey, Event]
) -> bool:
    """Whether an authorised m.room.redaction may be applied to ``redacted``.

    "Handling redactions" (room versions 3+): yes if the redaction's sender
    has the redact level under ``auth_events`` (the redaction's auth state),
    or the two senders are on the same server.
    """
    if get_user_power_level(redaction.sender, auth_events) >= get_named_level(
        auth_events, "redact"
    ):
        return True
    return sender_server(redaction.sender) == sender_server(redacted.sender)
