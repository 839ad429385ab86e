"""Questions the federation layer asks about rooms, answered from the store.

Read-only helpers over :class:`~p2pserver.storage.store.Store` public
methods (and the engine's state lookups, for :func:`joined_at_any`),
shared by the sender, the server and the pull loop, so each rule ("is this
server in the room?", "do we hold this event?") is written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from p2pserver.engine.engine import RoomEngine
from p2pserver.federation.protocol import MAX_STALE_VIEW_CHECKS
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import Event
from p2pserver.rooms.room_versions import RoomVersion, get_room_version
from p2pserver.rooms.validation import parse_pdu
from p2pserver.storage.store import IN_DAG, EventStatus, Store


def pdu_room_version(store: Store, pdu: Mapping[str, Any]) -> RoomVersion | None:
    """The room version for a PDU: its room's, or the one a create event names."""
    room_id = pdu.get("room_id")
    if isinstance(room_id, str):
        version = store.room_version(room_id)
        if version is not None:
            return version
    if pdu.get("type") == "m.room.create" and pdu.get("state_key") == "":
        content = pdu.get("content")
        try:
            return get_room_version(
                content.get("room_version") if isinstance(content, Mapping) else None
            )
        except MatrixError:
            return None
    return None


def parse_for_room(store: Store, pdu: object) -> Event | None:
    """An untrusted PDU of a room we know, format-checked; None if it is not one."""
    if not isinstance(pdu, Mapping):
        return None
    version = pdu_room_version(store, pdu)
    if version is None:
        return None
    try:
        return parse_pdu(pdu, version)
    except MatrixError:
        return None


def held_in_dag(store: Store, event_id: str) -> bool:
    """Whether the event is decided here: in the DAG, or rejected (never fetch again)."""
    meta = store.event_meta(event_id)
    return meta is not None and (meta.status in IN_DAG or meta.status == EventStatus.REJECTED)


def has_dag(store: Store, room_id: str) -> bool:
    """Whether we hold the room's DAG (we can send into it and serve it)."""
    return bool(store.forward_extremities(room_id))


def room_servers(store: Store, room_id: str) -> set[str]:
    """Servers with a user joined to the room, in our view."""
    return store.joined_servers(room_id)


def server_in_room(store: Store, room_id: str, server: str) -> bool:
    """Whether ``server`` has a user joined or invited in the room's current state."""
    return store.server_joined(room_id, server) or store.server_invited(room_id, server)


def joined_at_any(
    engine: RoomEngine,
    room_id: str,
    server: str,
    event_ids: Sequence[str],
    *,
    before: bool = True,
) -> bool:
    """Whether ``server``, no longer in the room, had a user joined just after one of
    ``event_ids`` (with ``before``, or just before it).

    Each event costs a state lookup, so only a server with a membership in
    the current state (one removed keeps its users' leave or ban there) is
    looked at, and only the first :data:`~p2pserver.federation.protocol.MAX_STALE_VIEW_CHECKS`
    events it names.
    """
    if not engine.store.server_has_member(room_id, server):
        return False
    return any(
        engine.server_joined_at(server, room_id, e, before=before)
        for e in event_ids[:MAX_STALE_VIEW_CHECKS]
    )


def shared_rooms(store: Store, server: str, room_ids: Iterable[str] | None = None) -> list[str]:
    """Rooms whose DAG we hold and where ``server`` has a joined user."""
    rooms = store.room_ids() if room_ids is None else list(room_ids)
    return [r for r in rooms if server in store.joined_servers(r) and has_dag(store, r)]
