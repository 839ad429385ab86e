"""History visibility: may a user, or a server, see an event?

Spec: client-server API, module "Room History Visibility", "Server
behaviour". The rules depend on the state of the room *at the event*:

1. If the ``history_visibility`` was ``world_readable``, allow.
2. If the user's membership was ``join``, allow.
3. If ``history_visibility`` was ``shared``, and the user joined the room
   at any point after the event was sent, allow.
4. If the user's membership was ``invite``, and ``history_visibility`` was
   ``invited``, allow.
5. Otherwise, deny.

No ``m.room.history_visibility`` event, or a value we do not understand,
means ``shared``. For an ``m.room.history_visibility`` event itself, and for
the user's own ``m.room.member`` events, the user may see the event if the
state before *or* after it allows; since the state before and after any
event differ only in that event's own key, "before or after" is applied to
every event, which is the spec's rule exactly.

Servers (backfill, /get_missing_events, /event, /state): the spec states
no separate rules; it says a server sees what its users may. So a server
may see an event if, with the state at the event:

1. the ``history_visibility`` was ``world_readable``; or
2. one of its users' membership was ``join``; or
3. it was ``shared``, and one of its users is joined now (current state)
   or joined at some point after the event; or
4. one of its users' membership was ``invite`` and the visibility
   ``invited``;
5. otherwise it may not: the event is served redacted (the DAG stays
   whole; the content is withheld).

Synapse (``filter_events_for_server``) allows ``shared`` events to every
server it serves, but it serves those requests only to servers joined now,
which comes to rule 3; Dendrite's ``IsServerAllowed`` is these five steps.
We also answer servers whose users are only invited (they need the DAG to
place the invite): under ``shared`` they get the history stripped until one
of their users joins. Then they fetch it again, and the room engine replaces
the stripped copies with the full events (whose content hashes verify).

"Joined after the event" is judged by DAG depth: a join whose depth is
greater than the event's, or a current membership of ``join``.

This module holds the pure rules; :class:`p2pserver.engine.engine.RoomEngine`
looks up the state and memberships and calls them.
"""

from __future__ import annotations

from collections.abc import Mapping

from p2pserver.rooms.events import Event, StateKey

WORLD_READABLE = "world_readable"
SHARED = "shared"
INVITED = "invited"
JOINED = "joined"
VISIBILITIES = (WORLD_READABLE, SHARED, INVITED, JOINED)

HISTORY_VISIBILITY_KEY: StateKey = ("m.room.history_visibility", "")


def effective_visibility(event: Event | None) -> str:
    """The history visibility an ``m.room.history_visibility`` event sets."""
    if event is None:
        return SHARED
    value = event.content.get("history_visibility")
    return value if value in VISIBILITIES else SHARED


def user_allowed(visibility: str, membership: str | None, *, joined_later: bool) -> bool:
    """The spec's steps 1-5 for one user and one state."""
    # 1. world_readable
    if visibility == WORLD_READABLE:
        return True
    # 2. joined at the event
    if membership == "join":
        return True
    # 3. shared, and joined at some point after the event
    if visibility == SHARED and joined_later:
        return True
    # 4. invited at the event, with "invited" visibility
    if membership == "invite" and visibility == INVITED:  # noqa: SIM103 (the spec's steps)
        return True
    # 5. otherwise deny
    return False


def server_users(state: Mapping[StateKey, str], server_name: str) -> list[str]:
    """User IDs of ``server_name`` with a membership in ``state``."""
    suffix = ":" + server_name
    return [
        state_key
        for (event_type, state_key) in state
        if event_type == "m.room.member" and state_key.endswith(suffix)
    ]
