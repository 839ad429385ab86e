"""Building signed PDUs for local events.

:func:`build_event` fills in everything a PDU needs besides its payload:
depth, hashes and signature, and omits `room_id` for a v12 create event.
Choosing prev_events and auth_events is the caller's job (the room engine,
or :mod:`p2pserver.rooms.auth` for auth-event selection); tests use this
directly to build DAGs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from p2pserver.rooms.events import Event
from p2pserver.rooms.hashing import add_content_hash
from p2pserver.rooms.room_versions import RoomVersion
from p2pserver.rooms.signing import SigningKey, sign_event


def build_event(
    room_version: RoomVersion,
    *,
    signing_key: SigningKey,
    sender: str,
    type: str,
    content: dict[str, Any],
    room_id: str | None,
    prev_events: Iterable[Event | str] = (),
    auth_events: Iterable[Event | str] = (),
    state_key: str | None = None,
    depth: int | None = None,
    origin_server_ts: int = 0,
    server_name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Event:
    """Return a hashed and signed :class:`Event`.

    ``depth`` defaults to one more than the deepest prev event (1 with none);
    pass event IDs instead of Events only together with an explicit depth.
    ``server_name`` defaults to the signing key's (hex) server name.
    ``extra`` adds or overrides top-level PDU keys (tests use it to forge).
    """
    prev = list(prev_events)
    if depth is None:
        depth = 1 + max((p.depth for p in prev if isinstance(p, Event)), default=0)
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": content,
        "prev_events": [p.event_id if isinstance(p, Event) else p for p in prev],
        "auth_events": [a.event_id if isinstance(a, Event) else a for a in auth_events],
        "depth": depth,
        "origin_server_ts": origin_server_ts,
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if extra:
        pdu.update(extra)
    add_content_hash(pdu)
    sign_event(pdu, server_name or signing_key.server_name, signing_key, room_version)
    return Event(pdu, room_version)
