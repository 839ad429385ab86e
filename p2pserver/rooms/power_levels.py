"""Reading power levels and room creators out of auth state.

Rules (client-server spec, `m.room.power_levels`; room versions 10-12):
- A user's level is ``users[user_id]`` if present, else ``users_default``
  (default 0). With no power-levels event, the room creator has 100 and
  everyone else 0.
- Named levels and their defaults: ``ban`` 50, ``kick`` 50, ``redact`` 50,
  ``invite`` 0, ``events_default`` 0, ``users_default`` 0, ``state_default``
  50 -- but ``state_default`` is 0 when there is no power-levels event at all.
- The *required power level* of an event is ``events[type]`` if present,
  else ``state_default`` for state events and ``events_default`` otherwise.
- Creators: in v10 ``content.creator`` of the create event, in v11 its
  ``sender``. In v12 (MSC4289) the creators are the ``sender`` plus
  ``content.additional_creators``, and their level is infinitely high
  (``float('inf')``) whatever m.room.power_levels says.

Theory of operation: every function takes the auth-state map ``(type,
state_key) -> Event`` and reads the event contents in place, without copies
or re-parsing, because state resolution calls these thousands of times per
resolution. The values are trusted to be well-formed integers only because
the auth rules (room version 10+) refuse any power-levels event that is not;
a malformed value read here anyway (say, from an outlier that never went
through the rules) counts as absent rather than crashing.
"""

from __future__ import annotations

from collections.abc import Mapping

from p2pserver.rooms.events import Event, StateKey

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")

# Named levels and their defaults when the power-levels event lacks the key.
NAMED_LEVEL_DEFAULTS: Mapping[str, int] = {
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
    "events_default": 0,
    "state_default": 50,
    "users_default": 0,
}

# The creator's level when the room has no power-levels event (v10, v11).
CREATOR_DEFAULT_LEVEL = 100

PowerLevel = int | float  # float only for the infinite level of v12 creators


def _int_or(value: object, default: int) -> int:
    # bool is an int subclass; JSON true is not a power level.
    return value if type(value) is int else default


def get_power_levels_event(auth_events: Mapping[StateKey, Event]) -> Event | None:
    return auth_events.get(POWER_LEVELS_KEY)


def get_creators(create_event: Event) -> frozenset[str]:
    """The room creators named by ``create_event``, per its room version.

    Non-string entries of ``additional_creators`` are skipped here; the
    create event's auth rule rejects them, so they never occur in a room.
    """
    version = create_event.room_version
    if not version.use_room_create_sender:
        creator = create_event.content.get("creator")
        return frozenset((creator,)) if isinstance(creator, str) else frozenset()
    if not version.privileged_creators:
        return frozenset((create_event.sender,))
    extra = create_event.content.get("additional_creators")
    if isinstance(extra, list):
        return frozenset([create_event.sender, *(u for u in extra if isinstance(u, str))])
    return frozenset((create_event.sender,))


def is_creator(user_id: str, create_event: Event) -> bool:
    """Whether ``user_id`` is a creator of the room (cheaper than get_creators)."""
    version = create_event.room_version
    if not version.use_room_create_sender:
        return create_event.content.get("creator") == user_id
    if user_id == create_event.sender:
        return True
    if not version.privileged_creators:
        return False
    extra = create_event.content.get("additional_creators")
    return isinstance(extra, list) and user_id in extra


def get_user_power_level(user_id: str, auth_events: Mapping[StateKey, Event]) -> PowerLevel:
    """The power level of ``user_id`` under ``auth_events``.

    ``auth_events`` should hold the create event (always, even in v12, where
    it is not listed in an event's auth_events) and the power-levels event if
    the room has one. Returns ``float('inf')`` for v12 creators.
    """
    create = auth_events.get(CREATE_KEY)
    if (
        create is not None
        and create.room_version.privileged_creators
        and is_creator(user_id, create)
    ):
        return float("inf")
    power_levels = auth_events.get(POWER_LEVELS_KEY)
    if power_levels is not None:
        content = power_levels.content
        users = content.get("users")
        if isinstance(users, dict):
            level = users.get(user_id)
            if type(level) is int:
                return level
        return _int_or(content.get("users_default"), 0)
    if create is not None and is_creator(user_id, create):
        return CREATOR_DEFAULT_LEVEL
    return 0


def get_named_level(
    auth_events: Mapping[StateKey, Event], name: str, default: int | None = None
) -> int:
    """A named level (``ban``, ``kick``, ``invite``, ``state_default``...).

    ``default`` overrides the spec's default for ``name`` (required for names
    not in :data:`NAMED_LEVEL_DEFAULTS`).
    """
    power_levels = auth_events.get(POWER_LEVELS_KEY)
    if default is None:
        if power_levels is None and name == "state_default":
            return 0  # no power-levels event at all: anyone may send state
        default = NAMED_LEVEL_DEFAULTS[name]
    if power_levels is None:
        return default
    return _int_or(power_levels.content.get(name), default)


def get_required_power_level(
    auth_events: Mapping[StateKey, Event], event_type: str, state_key: str | None
) -> int:
    """The spec's *required power level* to send an event of this type."""
    power_levels = auth_events.get(POWER_LEVELS_KEY)
    if power_levels is not None:
        events = power_levels.content.get("events")
        if isinstance(events, dict):
            level = events.get(event_type)
            if type(level) is int:
                return level
    return get_named_level(
        auth_events, "state_default" if state_key is not None else "events_default"
    )
