"""Membership handshakes: make_join/send_join, make_leave/send_leave, invite.

Spec: Server-Server API, "Joining Rooms", "Leaving Rooms (Rejecting
Invites)", "Inviting to a room". The pure parts live here; the server
(:mod:`p2pserver.federation.server`) and the node-facing
:class:`~p2pserver.federation.federation.Federation` do the I/O.

Resident side:

- ``make_join`` / ``make_leave``: a template of the membership event for a
  user of the *requesting* server, built as our own next event would be
  (:meth:`RoomEngine.build_membership_template
  <p2pserver.engine.engine.RoomEngine.build_membership_template>`, which
  refuses with M_FORBIDDEN if the user may not join or leave). A room
  version outside the requester's ``ver`` list is
  M_INCOMPATIBLE_ROOM_VERSION.
- ``send_join`` / ``send_leave``: the filled-in, signed event must be the
  right membership for a user of the requesting server
  (:func:`check_membership_event`); the room engine then receives it like
  any PDU, and it must be accepted.

Joining side: the template is checked the same way, filled in (content,
hashes, our signature) by :func:`fill_template`, and sent back. The room
engine takes the ``send_join`` answer's state and auth chain, checked, as
the state before our join (:meth:`RoomEngine.accept_send_join
<p2pserver.engine.engine.RoomEngine.accept_send_join>`).

Invites: the inviting server creates the invite as a local event, then
sends it to the invitee's server with ``invite``, which checks it
(:func:`check_membership_event`, signatures) and returns it with its own
signature added. Here the event ID does not depend on signatures, so both
copies are the same event; the invite also travels by the outbound queue
(at-least-once), and the stripped ``invite_room_state`` helps clients show
the invite (:func:`stripped_state`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.builder import build_event
from p2pserver.rooms.errors import AuthError, EventFormatError
from p2pserver.rooms.events import STRIPPED_STATE_TYPES, Event, StateKey, sender_server
from p2pserver.rooms.room_versions import RoomVersion
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import Store


def _now_ms() -> int:
    return int(time.time() * 1000)


def check_membership_event(
    event: Event, *, origin: str, membership: str, room_id: str, event_id: str | None = None
) -> None:
    """The handshake event is the one asked about, for a user of ``origin``.

    For join and leave the user is the sender (state_key == sender); for an
    invite the sender is the inviter on ``origin``. Raises M_BAD_JSON for a
    wrong shape, M_FORBIDDEN for a user of another server.
    """
    if event_id is not None and event.event_id != event_id:
        raise EventFormatError(f"the event's ID is {event.event_id}, not {event_id}")
    if event.room_id != room_id:
        raise EventFormatError(f"the event is for room {event.room_id}, not {room_id}")
    if event.type != "m.room.member" or event.membership != membership:
        raise EventFormatError(f"expected an m.room.member event with membership {membership}")
    if event.state_key is None:
        raise EventFormatError("a membership event needs a state_key")
    if membership != "invite" and event.state_key != event.sender:
        raise EventFormatError(f"a {membership} event's state_key must be its sender")
    if sender_server(event.sender) != origin:
        raise AuthError(f"{origin} may not send events for {event.sender}")


def check_template(
    template: Mapping[str, Any], *, room_id: str, user_id: str, membership: str
) -> None:
    """A make_join / make_leave answer is the event we asked for (M_BAD_JSON otherwise)."""
    content = template.get("content")
    if (
        template.get("type") != "m.room.member"
        or template.get("room_id") != room_id
        or template.get("sender") != user_id
        or template.get("state_key") != user_id
        or not isinstance(content, Mapping)
        or content.get("membership") != membership
    ):
        raise EventFormatError(f"the {membership} template is not for {user_id} in {room_id}")


def fill_template(
    template: Mapping[str, Any],
    room_version: RoomVersion,
    signing_key: SigningKey,
    *,
    server_name: str,
    content: Mapping[str, Any] | None = None,
    now_ms: int | None = None,
) -> Event:
    """Our membership event from a resident's template: hashed and signed by us."""
    try:
        depth = template["depth"]
        prev_events = template["prev_events"]
        auth_events = template["auth_events"]
        if (
            not isinstance(depth, int)
            or not isinstance(prev_events, list)
            or not isinstance(auth_events, list)
        ):
            raise TypeError
    except (KeyError, TypeError):
        raise EventFormatError("the template needs depth, prev_events and auth_events") from None
    merged = {**dict(template["content"]), **dict(content or {})}
    merged["membership"] = template["content"]["membership"]
    return build_event(
        room_version,
        signing_key=signing_key,
        server_name=server_name,
        sender=template["sender"],
        type="m.room.member",
        content=merged,
        room_id=template["room_id"],
        prev_events=prev_events,
        auth_events=auth_events,
        state_key=template["state_key"],
        depth=depth,
        origin_server_ts=now_ms if now_ms is not None else _now_ms(),
    )


def stripped_state(store: Store, room_id: str, inviter: str | None = None) -> list[dict[str, Any]]:
    """``invite_room_state``: the stripped state events a client shows with an invite."""
    state = store.current_state(room_id)
    keys: list[StateKey] = [(t, "") for t in STRIPPED_STATE_TYPES]
    if inviter is not None:
        keys.append(("m.room.member", inviter))
    events = store.load_events(state[k] for k in keys if k in state)
    return [
        {"type": e.type, "state_key": e.state_key, "content": e.content, "sender": e.sender}
        for e in events.values()
    ]
