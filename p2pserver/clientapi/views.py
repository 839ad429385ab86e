"""Reading rooms on behalf of a user: what they may see, as they should see it.

Shared by the room endpoints (/messages, /context, /event, /state,
/members) and the /sync gatherer, so every path applies the same rules:

- History visibility is the engine's
  (:meth:`p2pserver.engine.engine.RoomEngine.may_user_see_event`): an event
  the user may not see is left out, never shown redacted.
- Redactions are applied (:meth:`RoomEngine.event_for_serving`) and the
  redaction is given as ``unsigned.redacted_because``.
- Timeline state events carry ``unsigned.prev_content`` (and
  ``replaces_state``, ``prev_sender``): the content they replaced, from the
  state before them.
- The sending device sees its ``unsigned.transaction_id``.
- Merge events (``org.matrix.dummy_event``, :mod:`p2pserver.federation.merging`)
  are never shown: they carry nothing for users.
- Room state is readable by a joined member (the current state), by a
  former member (the state when they left, as the spec says for /state and
  /members), and by anyone in a ``world_readable`` room; otherwise 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.filters import EventFilter
from p2pserver.clientapi.formats import client_event
from p2pserver.clientapi.sync import SyncEvent
from p2pserver.engine.visibility import HISTORY_VISIBILITY_KEY, WORLD_READABLE
from p2pserver.rooms.events import DUMMY_EVENT_TYPE, Event, StateKey
from p2pserver.storage.state_groups import StateMap
from p2pserver.storage.store import EventMeta, EventStatus

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

MEMBER = "m.room.member"
_BATCH = 50


class RoomViews:
    def __init__(self, api: ClientAPI) -> None:
        self.api = api
        self.engine = api.engine
        self.store = api.engine.store

    # -- membership and readable state ---------------------------------------------

    def membership(self, room_id: str, user_id: str) -> tuple[str | None, EventMeta | None]:
        """The user's current membership in the room and its event's metadata."""
        event_id = self.store.current_state(room_id).get((MEMBER, user_id))
        if event_id is None:
            return None, None
        event = self.store.load_event(event_id)
        return (event.membership if event else None), self.store.event_meta(event_id)

    def require_room(self, room_id: str) -> None:
        if self.store.room(room_id) is None:
            raise ApiError.of("M_NOT_FOUND", f"room {room_id} is not known to this server")

    def readable_state(self, room_id: str, user_id: str) -> StateMap:
        """The room state this user may read (see the module docstring), else 403."""
        if self.store.room(room_id) is None:
            raise ApiError.of("M_FORBIDDEN", "you are not in this room")
        current = self.store.current_state(room_id)
        membership, meta = self.membership(room_id, user_id)
        if membership == "join":
            return current
        if membership in ("leave", "ban") and meta is not None and meta.state_after is not None:
            return self.store.state_map(meta.state_after)
        if self._visibility(current) == WORLD_READABLE:
            return current
        raise ApiError.of("M_FORBIDDEN", "you are not in this room")

    def state_at_stream(self, room_id: str, position: int) -> StateMap | None:
        """The room state after its last event at or before stream position ``position``."""
        event_id = self.api.reads.last_event_at(room_id, position)
        meta = self.store.event_meta(event_id) if event_id else None
        if meta is None or meta.state_after is None:
            return None
        return self.store.state_map(meta.state_after)

    def _visibility(self, state: StateMap) -> str | None:
        event_id = state.get(HISTORY_VISIBILITY_KEY)
        event = self.store.load_event(event_id) if event_id else None
        value = event.content.get("history_visibility") if event else None
        return value if isinstance(value, str) else None

    # -- serving events ------------------------------------------------------------

    def serve(
        self,
        event_ids: Iterable[str],
        user_id: str,
        device_id: str | None,
        *,
        check_visibility: bool = True,
        prev_content: bool = True,
    ) -> list[SyncEvent]:
        """The visible ones of ``event_ids``, in order, as the user sees them."""
        ids = list(event_ids)
        metas = self.store.event_metas(ids)
        events = self.store.load_events(ids)
        txns = self.api.accounts.txn_ids_of(user_id, device_id, ids) if device_id else {}
        redacted = self.api.reads.redaction_targets(ids)
        out: list[SyncEvent] = []
        for event_id in ids:
            event, meta = events.get(event_id), metas.get(event_id)
            if event is None or meta is None or event.type == DUMMY_EVENT_TYPE:
                continue  # merge events are plumbing (as Synapse hides them)
            if check_visibility and not self.engine.may_user_see_event(user_id, event_id):
                continue
            out.append(
                self._view(
                    event,
                    meta,
                    txns.get(event_id),
                    prev_content=prev_content,
                    maybe_redacted=event_id in redacted,
                )
            )
        return out

    def _view(
        self,
        event: Event,
        meta: EventMeta,
        txn_id: str | None,
        *,
        prev_content: bool,
        maybe_redacted: bool = True,
    ) -> SyncEvent:
        unsigned: dict[str, Any] = {}
        served = self.engine.event_for_serving(event) if maybe_redacted else event
        if served.redacted and not event.redacted:
            because = self._redaction_of(event)
            if because is not None:
                unsigned["redacted_because"] = because
        if txn_id is not None:
            unsigned["transaction_id"] = txn_id
        if prev_content and event.state_key is not None and meta.state_before is not None:
            before = self.store.state_map(meta.state_before).get((event.type, event.state_key))
            prev = self.store.load_event(before) if before else None
            if prev is not None:
                unsigned["prev_content"] = self.engine.event_for_serving(prev).content
                unsigned["replaces_state"] = prev.event_id
                unsigned["prev_sender"] = prev.sender
        return SyncEvent(served, meta.stream_ordering or 0, unsigned)

    def _redaction_of(self, event: Event) -> dict[str, Any] | None:
        for redaction_id in self.store.redactions_of(event.event_id):
            redaction = self.store.load_event(redaction_id)
            if redaction is not None:
                return client_event(redaction, now_ms=self.api.now_ms())
        return None

    def state_events(self, state: StateMap) -> dict[StateKey, SyncEvent]:
        """A state map's events as served (no visibility check: state is shared)."""
        events = self.store.load_events(state.values())
        metas = self.store.event_metas(state.values())
        redacted = self.api.reads.redaction_targets(state.values())
        out: dict[StateKey, SyncEvent] = {}
        for key, event_id in state.items():
            event, meta = events.get(event_id), metas.get(event_id)
            if event is not None and meta is not None:
                out[key] = self._view(
                    event, meta, None, prev_content=False, maybe_redacted=event_id in redacted
                )
        return out

    def timeline(
        self,
        room_id: str,
        user_id: str,
        device_id: str | None,
        *,
        after: int,
        before: int,
        limit: int,
        newest_first: bool,
        flt: EventFilter | None = None,
    ) -> tuple[list[SyncEvent], bool]:
        """Up to ``limit`` visible events in stream positions ``(after, before)``.

        Returns them in the order walked (newest first when ``newest_first``)
        and whether more visible, filter-passing events lie beyond.
        """
        found: list[SyncEvent] = []
        batch = limit + 1  # usually enough; filtered or hidden events widen later batches
        while True:
            rows = self.api.reads.room_events(
                room_id, after=after, before=before, limit=batch, newest_first=newest_first
            )
            if not rows:
                return found, False
            served = self.serve([r[0] for r in rows], user_id, device_id)
            for item in served:
                if flt is not None and not flt.allows_event(item.event):
                    continue
                if len(found) == limit:
                    return found, True
                found.append(item)
            if len(rows) < batch:
                return found, False
            batch = _BATCH
            edge = rows[-1][1]
            if newest_first:
                before = edge
            else:
                after = edge

    def is_visible_status(self, meta: EventMeta | None) -> bool:
        return meta is not None and meta.status == EventStatus.ACCEPTED
