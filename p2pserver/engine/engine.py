"""The room engine: every room event a node receives, creates or serves.

One :class:`RoomEngine` per node sits between the network (which hands it
PDUs and asks it questions on behalf of peers), the client API (which
creates events for local users and reads rooms) and the :class:`Store`.
It reaches peers only through a :class:`~p2pserver.engine.peers.PeerClient`.

Receiving a PDU (:meth:`RoomEngine.receive_pdu`) follows the spec's
"Checks performed on receipt of a PDU", in its order:

1. Is a valid event (format of the room's version), otherwise *dropped*.
2. Passes signature checks, otherwise *dropped*.
3. Passes hash checks, otherwise it is redacted before being processed
   further.
4. Passes authorisation rules based on the event's auth events, otherwise
   *rejected*. Auth events we lack are fetched first from the sending
   server (``/event_auth``) and stored as outliers, each checked the same
   way against its own auth events.
5. Passes authorisation rules based on the state before the event,
   otherwise *rejected*. The state before the event is the state after its
   prev event, or the resolution (:func:`p2pserver.state.resolve.resolve_state`)
   of the states after its prev events. Prev events we lack are first asked
   for with ``/get_missing_events`` (at most :data:`MISSING_EVENTS_LIMIT`
   events, no shallower than our oldest event) and processed oldest first;
   for any prev event still missing, the state after it is taken from the
   peer (``/state_ids``, then the events we lack, stored as outliers), and
   the event is accepted on that state, as the spec allows.
6. Passes authorisation rules based on the current state of the room,
   otherwise *soft failed*: stored and part of the DAG (its state counts
   for events that reference it), but not a forward extremity and not
   shown to clients. For an event accepted on state taken from a peer at
   a gap, the current state is resolved across our forward extremities
   and the state before the event, as if it were one more extremity: our
   current state may be stale (a room just discovered holds only its
   create event), and the state at a gap is easy to forge.

A room we do not know is discovered from its create event, fetched from
the sender (a room-version hint, as ``/invite`` carries, only lets the PDU
be format-checked first; the create event decides). A stripped copy of an
event (a server served it redacted: history visibility) is replaced by the
full event when one arrives whose content hash verifies.

Joining through a resident (:meth:`RoomEngine.accept_send_join`) takes the
``send_join`` answer's state, each event checked, as the state before our
join: an event after a gap whose state we were given.

Gaps. The prev events an accepted event lacked when we took the state at
the gap from a peer are recorded. Those of a new event that arrived while
a user of ours is joined are events we missed, filled by themselves (and
forgotten after :data:`GAP_ATTEMPTS` tries). The others are history from
before we were in the room (before our join, or before history already
fetched): the room's backward extremities, fetched only when a client
pages back to them (``historic``: stored older than everything we hold,
see :mod:`p2pserver.storage.store`). :meth:`RoomEngine.receive_history`
fills either with events a peer sends: only events before the points
being filled are taken, checked with steps 1-5 (step 6 is for new
events), and they never become forward extremities.

Dropped events are not stored. Rejected events are stored as rejected so
they are not fetched and checked again, and are never served or used as
valid (see :mod:`p2pserver.storage.store`). If an event cannot be decided
at all (its auth events or the state before it cannot be obtained), it is
dropped with a reason; a later copy can still be accepted.

Each stored event commits in one transaction with everything derived from
it: its state groups, the DAG edges, the forward extremities (an accepted
event replaces its prev events, and any soft-failed or rejected events it
points through), the current state (resolved across the forward
extremities) and joined servers, and for local events the outbound queue.
Listeners (:class:`~p2pserver.engine.notifier.Notifier`) hear of it after
the commit. :meth:`RoomEngine.receive_transaction` decides the PDUs of a
transaction that need nothing from a peer without yielding to other tasks
and commits such a run at once (group commit, each event still atomic on
its own), which roughly halves the database cost per event.

Local events (:meth:`RoomEngine.send_event` and the membership helpers)
take prev_events from the forward extremities (the deepest ten), auth
events by the spec's selection from the state before them, depth one more
than their deepest prev event (make_join templates are built the same way:
:meth:`RoomEngine.build_membership_template`); they are hashed and signed,
must pass the receive path's format checks (step 1, so M_TOO_LARGE over
65,536 bytes), are put through checks 4-6 like any received event, and
their event ID is returned only after the commit. They are queued for every server with a member joined to
the room, and for the target's server of a membership event -- or, with a
``push_filter`` (the federation's bounded fan-out), only for those of them
it names.

Concurrency: one trio lock per room serialises everything that writes a
room, including the fetching an incoming event triggers. Reads never wait.

Serving peers (``on_*`` methods) applies history visibility
(:mod:`p2pserver.engine.visibility`): events a server may not see are sent
in redacted form, which keeps the DAG whole without leaking content.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from p2pserver.engine.notifier import Notifier, RoomUpdate
from p2pserver.engine.peers import PeerClient, PeerError, StateIds
from p2pserver.engine.visibility import (
    HISTORY_VISIBILITY_KEY,
    SHARED,
    WORLD_READABLE,
    effective_visibility,
    server_users,
    user_allowed,
)
from p2pserver.rooms.auth import (
    MissingAuthEvents,
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
    create_event_id_for_room,
    redaction_applies,
    select_auth_event_ids,
)
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.creation import create_room_events
from p2pserver.rooms.errors import AuthError, MatrixError
from p2pserver.rooms.events import Event, StateKey, sender_server
from p2pserver.rooms.power_levels import CREATE_KEY
from p2pserver.rooms.receipt import REJECT, hex_server_keys, verify_event
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import RoomVersion, get_room_version
from p2pserver.rooms.signing import KeyLookup, SigningKey
from p2pserver.rooms.validation import parse_pdu
from p2pserver.state.resolve import resolve_state
from p2pserver.storage.cache import LruCache
from p2pserver.storage.state_groups import StateMap
from p2pserver.storage.store import EventMeta, EventStatus, Store

logger = logging.getLogger(__name__)

# Local events point at no more than this many forward extremities.
MAX_PREV_EVENTS = 10
# reconsider_soft_failed: soft-failed ancestors judged with a head; failed judgements kept.
_MAX_REJUDGED = 20
_MAX_JUDGED_MEMO = 4096
# /get_missing_events: how many events we ask for at once.
MISSING_EVENTS_LIMIT = 10
# How far back through soft-failed or rejected events an accepted event
# retires forward extremities.
_MAX_RETIRE_WALK = 100
MAX_DEPTH = 2**53 - 1
# How many fills a gap gets before we give up on it.
GAP_ATTEMPTS = 3


class NotFound(MatrixError):
    errcode = "M_NOT_FOUND"


class Forbidden(MatrixError):
    errcode = "M_FORBIDDEN"


@dataclass(frozen=True, slots=True)
class PduResult:
    """What became of a received PDU."""

    event_id: str | None
    # None: dropped (not stored); otherwise how it is stored.
    status: EventStatus | None
    # Why it was dropped, rejected or soft failed.
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        """Part of the room's DAG: passed checks 1-5 (it may be soft failed)."""
        return self.status in (EventStatus.ACCEPTED, EventStatus.SOFT_FAILED)

    @property
    def soft_failed(self) -> bool:
        return self.status == EventStatus.SOFT_FAILED

    @property
    def rejected_reason(self) -> str | None:
        """Why the event was dropped or rejected; None if accepted."""
        return None if self.accepted else self.reason

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "accepted": self.accepted,
            "soft_failed": self.soft_failed,
            "rejected_reason": self.rejected_reason,
        }

    @classmethod
    def of(cls, meta: EventMeta) -> PduResult:
        return cls(meta.event_id, meta.status, meta.rejected_reason)


class _Dropped(Exception):
    """The event cannot be processed now; it is not stored."""

    def __init__(self, event_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.event_id = event_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _StateBefore:
    state: StateMap
    # A stored state group holding exactly ``state``, if known.
    group: int | None
    # Stored groups close to ``state``, to store it as a delta on.
    bases: Sequence[int]
    # Part of ``state`` came from a peer: the state at prev events we lack.
    gap: bool = False
    # The event fills a gap before accepted events of ours (receive_history).
    backfill: bool = False
    # ... with history a client paged back to: its reserved stream position.
    history_position: int | None = None


_EMPTY_STATE = _StateBefore({}, None, ())


def _now_ms() -> int:
    return int(time.time() * 1000)


class RoomEngine:
    def __init__(
        self,
        store: Store,
        signing_key: SigningKey,
        *,
        server_name: str | None = None,
        peers: PeerClient | None = None,
        keys: KeyLookup = hex_server_keys,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        """``peers`` None: a node that never fetches (the replay tool)."""
        self.store = store
        self.signing_key = signing_key
        self.server_name = server_name or signing_key.server_name
        self.peers = peers
        self.keys = keys
        self.clock = clock
        self.notifier = Notifier(store.max_stream_ordering())
        self._locks: dict[str, trio.Lock] = {}
        # While a group commit is open: the updates to announce after it.
        self._deferred_updates: list[RoomUpdate] | None = None
        # Requests made to peers so far (to notice that a step fetched).
        self._fetches = 0
        # State group -> servers joined in it (groups never change once stored).
        self._joined_in_group: dict[int, frozenset[str]] = {}
        # Soft-failed events judged again in vain, with the state groups of
        # our extremities then (least recently judged first).
        self._judged_again: LruCache[tuple[str, tuple[int, ...]], bool] = LruCache(_MAX_JUDGED_MEMO)
        # Which servers a stored local event is pushed to (the federation's
        # bounded fan-out): it is queued only for those of its destinations.
        # None (no federation: tests, LocalNetwork) queues it for all of them.
        self.push_filter: Callable[[Event], Collection[str]] | None = None

    def _lock(self, room_id: str) -> trio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = trio.Lock()
        return lock

    # =========================================================================
    # Receiving events from peers
    # =========================================================================

    async def receive_pdu(
        self, origin: str, pdu: object, *, room_version: RoomVersion | str | None = None
    ) -> PduResult:
        """Run the checks on receipt of a PDU sent by ``origin`` and store the outcome.

        An unknown room is discovered from its create event, fetched from
        ``origin``, which decides the room version. ``room_version`` is a
        hint for such a room (``/invite`` carries one): the PDU is
        format-checked with it before anything is fetched.
        """
        try:
            event = await self._parse_incoming(origin, pdu, room_version)
        except _Dropped as exc:
            return PduResult(exc.event_id, None, exc.reason)
        async with self._lock(event.room_id):
            return await self._process_incoming(origin, event, pulled=False)

    async def receive_transaction(self, origin: str, pdus: Iterable[object]) -> list[PduResult]:
        """Process the PDUs of one transaction in order (a bad one never fails the rest).

        Returns once every outcome is committed. Runs of PDUs that can be
        decided from what we hold (nothing to fetch) are checked without
        yielding and committed together (group commit); each event stays
        atomic on its own. A PDU that needs a peer goes through
        :meth:`receive_pdu`, after the run before it has committed.
        """
        pending = list(pdus)
        results: list[PduResult] = []
        while len(results) < len(pending):
            with self._batch():
                while len(results) < len(pending):
                    result = self._receive_now(origin, pending[len(results)])
                    if result is None:
                        break
                    results.append(result)
            if len(results) < len(pending):
                results.append(await self.receive_pdu(origin, pending[len(results)]))
        return results

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """Group commits; announce the updates once the batch is durable."""
        self._deferred_updates = []
        try:
            with self.store.db.batch():
                yield
            updates = self._deferred_updates
        finally:
            self._deferred_updates = None
        for update in updates:
            self.notifier.notify(update)

    def _receive_now(self, origin: str, pdu: object) -> PduResult | None:
        """:meth:`receive_pdu` for a PDU that needs nothing fetched; None if it does."""
        if not isinstance(pdu, Mapping):
            return PduResult(None, None, "format: a PDU must be a JSON object")
        try:
            room_version = self._known_room_version(pdu)
            if room_version is None:
                return None  # an unknown room: discovering it takes a peer
            event = parse_pdu(pdu, room_version)
        except MatrixError as exc:
            return PduResult(None, None, f"format: {exc.message}")
        if self._lock(event.room_id).locked():
            return None  # another task is deciding events of this room
        existing = self._held_copy(event)
        if existing is not None and existing.status != EventStatus.OUTLIER:
            return PduResult.of(existing)
        if existing is not None or not self._holds_everything_for(event):
            return None
        outcome = verify_event(event, self.keys)
        if outcome.verdict is REJECT:
            return PduResult(event.event_id, None, f"signature: {outcome.reason}")
        event = outcome.event
        try:
            return self._decide(event, self._state_before_held(event))
        except _Dropped as exc:
            return PduResult(event.event_id, None, exc.reason)

    def _holds_everything_for(self, event: Event) -> bool:
        """Whether the room, the auth events and the state after every prev event are held."""
        if not event.is_create() and self.store.room(event.room_id) is None:
            return False
        needed = self._needed_auth_ids(event)
        if len(self.store.event_metas(needed)) < len(set(needed)):
            return False
        prevs = self.store.event_metas(event.prev_event_ids)
        return len(prevs) == len(set(event.prev_event_ids)) and all(
            m.has_state for m in prevs.values()
        )

    async def _parse_incoming(
        self, origin: str, pdu: object, hint: RoomVersion | str | None
    ) -> Event:
        # Step 1 needs the room version, which the PDU does not carry.
        if not isinstance(pdu, Mapping):
            raise _Dropped(None, "format: a PDU must be a JSON object")
        try:
            room_version = self._known_room_version(pdu)
            if room_version is None and hint is not None:
                # An unknown room: the hint lets us check the format before
                # asking anyone; the room's create event decides below.
                parse_pdu(pdu, get_room_version(hint))
        except MatrixError as exc:
            raise _Dropped(None, f"format: {exc.message}") from None
        if room_version is None:
            room_version = await self._discover_room(origin, pdu)
        try:
            return parse_pdu(pdu, room_version)
        except MatrixError as exc:
            raise _Dropped(None, f"format: {exc.message}") from None

    def _known_room_version(self, pdu: Mapping[str, Any]) -> RoomVersion | None:
        """The room version of a stored room, or the one a create event names."""
        room_id = pdu.get("room_id")
        if isinstance(room_id, str):
            room_version = self.store.room_version(room_id)
            if room_version is not None:
                return room_version
        if pdu.get("type") == "m.room.create" and pdu.get("state_key") == "":
            content = pdu.get("content")
            # No room_version means "1", which we do not support.
            version = content.get("room_version", "1") if isinstance(content, Mapping) else None
            return get_room_version(version)
        return None

    def _names_version(self, create: Event, room_version: RoomVersion) -> bool:
        try:
            named = self._known_room_version(create.pdu)
        except MatrixError:
            return False
        return named is not None and named.identifier == room_version.identifier

    async def _discover_room(self, origin: str, pdu: Mapping[str, Any]) -> RoomVersion:
        """Learn an unknown room from its create event, fetched from ``origin``.

        In v12 the room ID names the create event; before v12 the create
        event is one of the listed auth events.
        """
        room_id = pdu.get("room_id")
        if not isinstance(room_id, str) or self.peers is None:
            raise _Dropped(None, f"unknown room {room_id!r}")
        candidates = [create_event_id_for_room(room_id)] if ":" not in room_id else []
        auth_ids = pdu.get("auth_events")
        if isinstance(auth_ids, list):
            candidates += [a for a in auth_ids if isinstance(a, str)]
        for candidate in candidates:
            try:
                self._fetches += 1
                create_pdu = await self.peers.get_event(origin, candidate)
                if not isinstance(create_pdu, Mapping):
                    continue
                room_version = self._known_room_version(create_pdu)
                if room_version is None:
                    continue
                create = parse_pdu(create_pdu, room_version)
            except (PeerError, MatrixError):
                continue
            if create.event_id != candidate or create.room_id != room_id or not create.is_create():
                continue
            async with self._lock(room_id):
                result = await self._process_incoming(origin, create, pulled=True)
            if result.accepted:
                return room_version
        raise _Dropped(None, f"unknown room {room_id} and its create event could not be had")

    async def _process_incoming(
        self,
        origin: str,
        event: Event,
        *,
        pulled: bool,
        backfill: bool = False,
        history_position: int | None = None,
    ) -> PduResult:
        """Steps 2-6 for one event; the room's lock is held.

        ``pulled``: the event came from /get_missing_events, so its own
        missing prev events are not asked for again (no recursion).
        ``backfill``, ``history_position``: it fills a gap (see :meth:`receive_history`).
        """
        existing = self._held_copy(event)
        if existing is not None and existing.status != EventStatus.OUTLIER:
            return PduResult.of(existing)  # seen before: decided already
        if existing is None:
            # Steps 2 and 3: signatures (else drop), content hash (else redact).
            outcome = verify_event(event, self.keys)
            if outcome.verdict is REJECT:
                return PduResult(event.event_id, None, f"signature: {outcome.reason}")
            event = outcome.event
            if not event.is_create() and self.store.room(event.room_id) is None:
                return PduResult(event.event_id, None, f"unknown room {event.room_id}")
        else:
            # An outlier (checked on its own auth events) now placed in the DAG.
            held = self.store.load_event(event.event_id)
            assert held is not None
            event = held
        try:
            fetches = self._fetches
            await self._ensure_auth_events(origin, event)
            before = await self._state_before(
                origin, event, pulled=pulled, backfill=backfill, history_position=history_position
            )
            if self._fetches != fetches:
                # Fetching may have stored this very event meanwhile (a peer
                # can list it among the state it sends): go on from the store.
                existing = self.store.event_meta(event.event_id)
                if existing is not None and existing.status != EventStatus.OUTLIER:
                    return PduResult.of(existing)
            return self._decide(event, before, existing)
        except _Dropped as exc:
            return PduResult(event.event_id, None, exc.reason)

    def _held_copy(self, event: Event) -> EventMeta | None:
        """What we hold of ``event``; a stripped copy is first replaced by ``event`` if it is whole.

        A server may serve an event redacted (history visibility), which
        receipt step 3 takes as a content hash mismatch: we store the
        redacted copy. The same event ID with a verifying content hash is
        the full event, and replaces it (:meth:`Store.replace_stripped`).
        Rejected events stay as they are: never served, never used.
        """
        existing = self.store.event_meta(event.event_id)
        if (
            existing is None
            or not existing.redacted
            or event.redacted
            or existing.status == EventStatus.REJECTED
        ):
            return existing
        outcome = verify_event(event, self.keys)
        if outcome.verdict is REJECT or outcome.event.redacted:
            return existing
        with self.store.transaction():
            meta = self.store.replace_stripped(outcome.event)
        position = self.store.max_stream_ordering()
        self._announce([RoomUpdate(event.room_id, None, position, restored=event.event_id)])
        return meta

    def _decide(
        self, event: Event, before: _StateBefore, existing: EventMeta | None = None
    ) -> PduResult:
        """Steps 4-6 and the commit, for an event whose state before is known."""
        status, reason = self._check_auth(event, before)
        return PduResult.of(self._commit(event, status, reason, before, existing=existing))

    async def receive_history(
        self, origin: str, room_id: str, pdus: Iterable[object], *, historic: bool = False
    ) -> list[PduResult]:
        """Fill gaps before accepted events of ours with ``pdus`` (fetched from ``origin``).

        A gap is the prev events an event accepted on state from a peer
        lacked: events we missed while joined (:meth:`gaps`), or with
        ``historic``, history from before we joined
        (:meth:`backward_extremities`). Only the ``pdus`` that are such a
        prev event, or reached from one through prev events among them, are
        taken, so a peer cannot pass anything else off as history; the rest
        are dropped. They are checked oldest first with steps 1-5
        like any PDU, but not step 6: they are no new events, the spec
        soft-fails "a new event" (Synapse does not check backfilled events
        either). They never become forward extremities (our accepted events
        follow them); the prev events they point at stop being ones. What
        history lacks becomes the next backward extremities; what a fill
        lacks is not recorded again (it went as far as the filler went).

        ``historic``: history a client pages back to (see the module
        docstring); the prev events the oldest ones lack are not asked for
        with /get_missing_events (nothing we hold is older), only the state
        after them. Otherwise the room's gaps to fill by themselves
        (:meth:`gaps`) are being filled: one this does not fill is tried
        again later (another peer may hold it), :data:`GAP_ATTEMPTS` times
        in all.
        """
        room_version = self.store.room_version(room_id)
        if room_version is None:
            return [PduResult(None, None, f"unknown room {room_id}")]
        gaps = self.store.gaps(room_id)
        # Only the events before the points being filled: history never
        # stands for events we missed while joined, nor the other way.
        wanted = self.store.backward_extremities(room_id) if historic else gaps
        parsed: dict[str, Event] = {}
        results: list[PduResult] = []
        for pdu in pdus:
            try:
                event = parse_pdu(pdu, room_version)
            except MatrixError as exc:
                results.append(PduResult(None, None, f"format: {exc.message}"))
                continue
            if event.room_id == room_id:
                parsed[event.event_id] = event
        history = _before(wanted, parsed)
        results += [
            PduResult(e, None, "not before a gap of ours") for e in parsed if e not in history
        ]
        async with self._lock(room_id):
            ordered = _prev_events_first(history)
            positions: Sequence[int | None] = (
                self.store.reserve_history_positions(len(ordered))
                if historic
                else [None] * len(ordered)
            )
            for event, position in zip(ordered, positions, strict=True):
                results.append(
                    await self._process_incoming(
                        origin, event, pulled=historic, backfill=True, history_position=position
                    )
                )
            with self.store.transaction():
                if historic:
                    self.store.gaps_filled(room_id)
                else:
                    self.store.gaps_tried(room_id, gaps, max_attempts=GAP_ATTEMPTS)
        return results

    def gaps(self, room_id: str) -> list[str]:
        """The room's gaps to fill by themselves: events we missed (see :meth:`receive_history`)."""
        return self.store.gaps(room_id)

    def backward_extremities(self, room_id: str) -> list[str]:
        """Every event we lack that events we hold follow: where older history can be fetched."""
        return self.store.backward_extremities(room_id)

    # -- joining through a resident server -----------------------------------

    async def accept_send_join(
        self,
        origin: str,
        join_pdu: object,
        state_pdus: object,
        auth_chain_pdus: object,
        *,
        room_version: RoomVersion | str,
    ) -> PduResult:
        """Take our join into a room from ``origin``'s ``send_join`` answer (spec: "Joining Rooms").

        The answer's ``state`` is the state before the join and
        ``auth_chain`` its auth chain. Every event of both is checked as on
        receipt (format, signatures, content hash) and against the auth
        rules on its own auth events (step 4), and stored as an outlier,
        auth events first; the room's create event must name
        ``room_version``. The state must then be a state of the room: one
        event per key, each of them stored and not rejected, the create
        event among them. The join is then decided like an event after a
        gap whose state we took from a peer, which the spec allows and this
        is: steps 4-6, step 5 against the resident's state. That it is the
        state at the join's prev events cannot be checked without those
        events; the auth rules and the resolution of step 6 against what we
        already hold bound what a wrong one can do.

        Returns the join's :class:`PduResult`; a bad answer drops the join
        here (status None, with the reason), so another resident can be tried.
        """
        if not isinstance(join_pdu, Mapping):
            return PduResult(None, None, "format: a PDU must be a JSON object")
        try:
            version = get_room_version(room_version)
            event = parse_pdu(join_pdu, version)
        except MatrixError as exc:
            return PduResult(None, None, f"format: {exc.message}")
        if (
            event.type != "m.room.member"
            or event.membership != "join"
            or event.state_key != event.sender
            or sender_server(event.sender) != self.server_name
        ):
            return PduResult(event.event_id, None, "not a join of a user of this server")
        known = self.store.room_version(event.room_id)
        if known is not None and known.identifier != version.identifier:
            return PduResult(event.event_id, None, f"the room has version {known.identifier}")
        if not isinstance(state_pdus, list) or not isinstance(auth_chain_pdus, list):
            return PduResult(event.event_id, None, "send_join: state and auth_chain are lists")
        async with self._lock(event.room_id):
            existing = self._held_copy(event)
            if existing is not None and existing.status != EventStatus.OUTLIER:
                return PduResult.of(existing)
            outcome = verify_event(event, self.keys)
            if outcome.verdict is REJECT:
                return PduResult(event.event_id, None, f"signature: {outcome.reason}")
            event = outcome.event
            self._store_outliers(version, event.room_id, [*auth_chain_pdus, *state_pdus])
            try:
                state = self._send_join_state(event, state_pdus)
                before = _StateBefore(state, None, (), gap=True)
                return self._decide(event, before, self.store.event_meta(event.event_id))
            except _Dropped as exc:
                return PduResult(event.event_id, None, exc.reason)

    def _send_join_state(self, join: Event, pdus: list[Any]) -> StateMap:
        """The state map of a ``send_join`` answer whose events were stored (see above)."""
        room_id = join.room_id
        state: dict[StateKey, str] = {}
        for pdu in pdus:
            try:
                event = parse_pdu(pdu, join.room_version)
            except MatrixError as exc:
                raise _Dropped(join.event_id, f"send_join state: {exc.message}") from None
            if event.room_id != room_id or event.state_key is None:
                raise _Dropped(join.event_id, f"send_join state: {event.event_id} is no state here")
            meta = self.store.event_meta(event.event_id)
            if meta is None or meta.status == EventStatus.REJECTED:
                raise _Dropped(
                    join.event_id, f"send_join state: {event.event_id} failed its checks"
                )
            key = event.state_key_tuple
            if state.setdefault(key, event.event_id) != event.event_id:
                raise _Dropped(join.event_id, f"send_join state: two events for {key}")
        record = self.store.room(room_id)
        if record is None or state.get(CREATE_KEY) != record.create_event_id:
            raise _Dropped(join.event_id, "send_join state: no m.room.create event of the room")
        return state

    # -- step 4: the event's own auth events ----------------------------------

    def _needed_auth_ids(self, event: Event) -> list[str]:
        ids = list(event.auth_event_ids)
        if event.room_version.room_id_is_create_event_hash and not event.is_create():
            ids.append(create_event_id_for_room(event.room_id))  # v12: implied
        return ids

    async def _ensure_auth_events(self, origin: str, event: Event) -> None:
        """Fetch the auth chain from ``origin`` if we lack any of the event's auth events."""
        needed = self._needed_auth_ids(event)
        held = self.store.event_metas(needed)
        if all(i in held for i in needed):
            return
        if self.peers is None:
            return  # the check below drops it, naming what is missing
        try:
            self._fetches += 1
            chain = await self.peers.get_event_auth(origin, event.room_id, event.event_id)
        except PeerError as exc:
            raise _Dropped(
                event.event_id, f"missing auth events and /event_auth failed: {exc}"
            ) from None
        self._store_outliers(event.room_version, event.room_id, chain)

    def _own_auth_events(self, event: Event) -> dict[StateKey, Event]:
        """The event's auth events as a map, validated (check_auth_events)."""
        ids = self._needed_auth_ids(event)
        events = self.store.load_events(ids, allow_rejected=True)
        rejected = {
            i for i, m in self.store.event_metas(ids).items() if m.status == EventStatus.REJECTED
        }
        try:
            return check_auth_events(event, list(events.values()), rejected)
        except MissingAuthEvents as exc:
            raise _Dropped(
                event.event_id, "missing auth events: " + ", ".join(exc.event_ids)
            ) from None

    def auth_events_from_state(
        self, event: Event, state: Mapping[StateKey, str]
    ) -> dict[StateKey, Event]:
        """The auth events selection for ``event`` (spec: "Auth events selection"), from ``state``.

        What steps 5 and 6 check an event against, and what make_join
        checks a template against. Keys ``state`` lacks, or whose events we
        do not hold (or hold as rejected), are left out.
        """
        keys = auth_types_for_event(
            event.room_version, event.type, event.sender, event.state_key, event.content
        )
        keys.add(CREATE_KEY)
        ids = {key: state[key] for key in keys if key in state}
        events = self.store.load_events(ids.values())
        return {key: events[i] for key, i in ids.items() if i in events}

    def _store_outliers(self, room_version: RoomVersion, room_id: str, pdus: object) -> None:
        """Check and store fetched events we lack as outliers (auth events first).

        Each gets steps 1-4 (format, signatures, hash, its own auth events);
        an event whose auth events are still missing is not stored.
        """
        if not isinstance(pdus, list):
            return
        fetched: dict[str, Event] = {}
        for pdu in pdus:
            try:
                event = parse_pdu(pdu, room_version)
            except MatrixError:
                continue
            if event.room_id != room_id or event.event_id in fetched:
                continue
            if self._held_copy(event) is not None:
                continue
            outcome = verify_event(event, self.keys)
            if outcome.verdict is not REJECT:
                fetched[event.event_id] = outcome.event
        if not fetched:
            return
        with self.store.transaction():
            for event in _auth_events_first(fetched):
                record = self.store.room(room_id)
                if event.is_create() and record is not None:
                    continue  # a second create event for a room we know: never used
                if not event.is_create() and record is None:
                    continue  # without the create event nothing can be checked
                if event.is_create() and not self._names_version(event, room_version):
                    continue  # the create event decides the room's version
                try:
                    check_auth_rules(event, self._own_auth_events(event))
                except _Dropped:
                    continue
                except AuthError as exc:
                    if not event.is_create():  # a rejected create makes no room
                        self.store.insert_event(
                            event,
                            EventStatus.REJECTED,
                            rejected_reason=f"auth events: {exc.message}",
                        )
                    continue
                if event.is_create():
                    self.store.add_room(room_id, room_version, event.event_id)
                self.store.insert_event(event, EventStatus.OUTLIER)

    # -- step 5: the state before the event ------------------------------------

    async def _state_before(
        self,
        origin: str,
        event: Event,
        *,
        pulled: bool,
        backfill: bool = False,
        history_position: int | None = None,
    ) -> _StateBefore:
        prevs = list(dict.fromkeys(event.prev_event_ids))
        metas = self.store.event_metas(prevs)
        missing = [p for p in prevs if p not in metas or not metas[p].has_state]
        if missing and not pulled and self.peers is not None:
            await self._fetch_missing_prev_events(origin, event, backfill=backfill)
            metas = self.store.event_metas(prevs)
            missing = [p for p in prevs if p not in metas or not metas[p].has_state]
        if not missing:
            held = self._state_before_held(event)
            if backfill:
                return dataclasses.replace(held, backfill=True, history_position=history_position)
            return held
        groups = _state_after_groups(metas[p] for p in prevs if p not in missing)
        fetched = [await self._fetch_state_after(origin, event, p) for p in missing]
        state_sets = [self.store.state_map(g) for g in groups] + fetched
        resolved = self._resolve(event, state_sets)
        return _StateBefore(
            resolved, None, groups, gap=True, backfill=backfill, history_position=history_position
        )

    def _state_before_held(self, event: Event) -> _StateBefore:
        """The state before an event whose prev events are all held with their state."""
        if not event.prev_event_ids:
            return _EMPTY_STATE  # the create event (any other fails the rules)
        metas = self.store.event_metas(event.prev_event_ids)
        groups = _state_after_groups(metas[p] for p in dict.fromkeys(event.prev_event_ids))
        if len(groups) == 1:
            return _StateBefore(self.store.state_map(groups[0]), groups[0], groups)
        state_sets = [self.store.state_map(g) for g in groups]
        return _StateBefore(self._resolve(event, state_sets), None, groups)

    def _resolve(self, event: Event, state_sets: Sequence[StateMap]) -> StateMap:
        try:
            return resolve_state(event.room_version, state_sets, self.store)
        except MatrixError as exc:
            raise _Dropped(event.event_id, f"state resolution failed: {exc.message}") from None

    async def _fetch_missing_prev_events(
        self, origin: str, event: Event, *, backfill: bool = False
    ) -> None:
        """``/get_missing_events`` from ``origin``; process what comes back, oldest first.

        Only events before ``event`` (reached through prev events among
        those returned) are taken.
        """
        assert self.peers is not None
        room_id = event.room_id
        try:
            self._fetches += 1
            pdus = await self.peers.get_missing_events(
                origin,
                room_id,
                earliest_events=self.store.forward_extremities(room_id),
                latest_events=[event.event_id],
                limit=MISSING_EVENTS_LIMIT,
                min_depth=self.store.min_depth(room_id),
            )
        except PeerError as exc:
            logger.info("get_missing_events from %s for %s failed: %s", origin, event, exc)
            return
        pulled: dict[str, Event] = {}
        for pdu in pdus[:MISSING_EVENTS_LIMIT] if isinstance(pdus, list) else ():
            try:
                missing_event = parse_pdu(pdu, event.room_version)
            except MatrixError:
                continue
            if missing_event.room_id == room_id and missing_event.event_id != event.event_id:
                pulled[missing_event.event_id] = missing_event
        for missing_event in _prev_events_first(_before(event.prev_event_ids, pulled)):
            await self._process_incoming(origin, missing_event, pulled=True, backfill=backfill)

    async def _fetch_state_after(self, origin: str, event: Event, prev_id: str) -> StateMap:
        """The state after a prev event we cannot get with its state, from ``origin``."""
        room_id = event.room_id
        if self.peers is None:
            raise _Dropped(event.event_id, f"missing prev event {prev_id} and no peer to ask")
        try:
            self._fetches += 1
            state_ids = await self.peers.get_state_ids(origin, room_id, prev_id)
            if not isinstance(state_ids, StateIds):
                raise PeerError("malformed /state_ids answer")
            wanted = [*state_ids.pdu_ids, *state_ids.auth_chain_ids, prev_id]
            await self._fetch_outliers(origin, event.room_version, room_id, wanted)
        except PeerError as exc:
            raise _Dropped(
                event.event_id, f"missing prev event {prev_id}; its state could not be had: {exc}"
            ) from None
        prev = self.store.event_meta(prev_id)
        if prev is None:
            raise _Dropped(event.event_id, f"missing prev event {prev_id} could not be had")
        state: dict[StateKey, str] = {}
        for state_event in self.store.load_events(state_ids.pdu_ids).values():
            if state_event.state_key is None or state_event.room_id != room_id:
                continue
            key = state_event.state_key_tuple
            if key in state:
                raise _Dropped(event.event_id, f"{origin} sent a state with two events for {key}")
            state[key] = state_event.event_id
        if prev.state_key is not None and prev.status != EventStatus.REJECTED:
            state[(prev.type, prev.state_key)] = prev_id  # the state *after* it
        return state

    async def _fetch_outliers(
        self, origin: str, room_version: RoomVersion, room_id: str, event_ids: Iterable[str]
    ) -> None:
        assert self.peers is not None
        wanted = list(dict.fromkeys(i for i in event_ids if isinstance(i, str)))
        held = self.store.event_metas(wanted)
        pdus = []
        for event_id in wanted:
            if event_id in held:
                continue
            try:
                self._fetches += 1
                pdus.append(await self.peers.get_event(origin, event_id))
            except PeerError:
                continue
        self._store_outliers(room_version, room_id, pdus)

    # -- steps 4-6 in order --------------------------------------------------------

    def _check_auth(self, event: Event, before: _StateBefore) -> tuple[EventStatus, str | None]:
        """Steps 4, 5 and 6: the auth rules against three sets of state."""
        record = self.store.room(event.room_id)
        if event.is_create() and record is not None and record.create_event_id != event.event_id:
            return EventStatus.REJECTED, "the room already has another m.room.create event"
        # 4. Against the event's own auth events.
        own_auth_events = self._own_auth_events(event)
        try:
            check_auth_rules(event, own_auth_events)
        except AuthError as exc:
            return EventStatus.REJECTED, f"auth events: {exc.message}"
        # 5. Against the state before the event (the rules are a pure
        #    function: the same events as in step 4 give the same verdict).
        from_state = self.auth_events_from_state(event, before.state)
        if not _same_events(from_state, own_auth_events):
            try:
                check_auth_rules(event, from_state)
            except AuthError as exc:
                return EventStatus.REJECTED, f"state before the event: {exc.message}"
        # 6. Against the current state (no need when that is the state before).
        #    Only for new events: one that fills a gap before accepted events
        #    of ours is history (the spec soft-fails "a new event"; Synapse
        #    does not check backfilled events either).
        if before.backfill:
            return EventStatus.ACCEPTED, None
        current = self._current_state_for(event, before)
        if current is not None:
            try:
                check_auth_rules(event, self.auth_events_from_state(event, current))
            except AuthError as exc:
                return EventStatus.SOFT_FAILED, f"current state: {exc.message}"
        return EventStatus.ACCEPTED, None

    def _current_state_for(self, event: Event, before: _StateBefore) -> StateMap | None:
        """The current state step 6 checks ``event`` against; None if it is the state before.

        The current state is the state resolved across the forward
        extremities. For an event after a gap (its state before came partly
        from a peer) the new event is taken as one more forward extremity:
        the state is resolved across ours *and* the state before it. Our own
        current state may be stale (we missed what the gap holds: in a room
        just discovered it is the create event alone), so judging the event
        by it alone would soft fail legitimate events; and since a gap is
        easy to forge, the state before it alone would let a banned user
        back in. State resolution keeps what each side may legitimately
        claim. (Synapse does the same.)
        """
        if before.gap:
            extremities = self.store.event_metas(self.store.forward_extremities(event.room_id))
            groups = _state_after_groups(extremities.values())
            if not groups:
                return None  # no DAG here yet: the state before is all there is
            state_sets = [self.store.state_map(g) for g in groups]
            return self._resolve(event, [*state_sets, before.state])
        record = self.store.room(event.room_id)
        current = record.current_state_group if record is not None else None
        if current is None or current == before.group:
            return None
        return self.store.state_map(current)

    async def reconsider_soft_failed(self, room_id: str, event_id: str) -> bool:
        """Accept a soft-failed event after all if it passes against the state
        resolved across our forward extremities and the state before it.

        Step 6 judged the event by our current state when it arrived; that
        state can be one-sided (it missed a branch that, once resolved,
        undoes what made the event fail, e.g. the kick of its sender). A
        server that accepted the event keeps it as a forward extremity and
        resolves a different state from ours for good, since nobody can
        reference a soft-failed event but it. So when a peer shows the event
        among its forward extremities (:mod:`p2pserver.federation.merging`),
        it is judged again, as one more forward extremity, exactly as an
        event after a gap is (:meth:`_current_state_for`); a banned user's
        event still fails, since resolution keeps the ban.

        Its soft-failed ancestors (up to :data:`_MAX_REJUDGED`) are judged
        first, oldest first, the same way: the peer accepted those too, and
        once the head is accepted they could never be. A judgement depends
        only on the states of our extremities and the event's state before,
        so a failed one is not repeated until those states change (a
        message does not change them). Returns whether the event is now
        accepted.
        """
        async with self._lock(room_id):
            meta = self.store.event_meta(event_id)
            if meta is None or meta.room_id != room_id or meta.status != EventStatus.SOFT_FAILED:
                return False
            for ancestor in self._soft_failed_ancestors(meta):
                self._judge_again(ancestor)
            return self._judge_again(meta)

    def _soft_failed_ancestors(self, meta: EventMeta) -> list[EventMeta]:
        """Soft-failed events ``meta`` follows through soft-failed events only, oldest first."""
        found: dict[str, EventMeta] = {}
        todo = list(self.store.prev_event_ids(meta.nid))
        while todo and len(found) < _MAX_REJUDGED:
            prev = self.store.event_meta(todo.pop())
            if prev is None or prev.event_id in found or prev.status != EventStatus.SOFT_FAILED:
                continue
            found[prev.event_id] = prev
            todo.extend(self.store.prev_event_ids(prev.nid))
        return sorted(found.values(), key=lambda m: (m.depth, m.event_id))

    def _judge_again(self, meta: EventMeta) -> bool:
        """One judgement of :meth:`reconsider_soft_failed`; accept the event if it passes."""
        store = self.store
        room_id = meta.room_id
        meta = store.event_meta(meta.event_id) or meta
        if (
            meta.status != EventStatus.SOFT_FAILED
            or meta.state_before is None
            or self._followed(meta.event_id)
        ):
            return False
        extremity_ids = store.forward_extremities(room_id)
        groups = _state_after_groups(store.event_metas(extremity_ids).values())
        if not groups:
            return False
        judged = (meta.event_id, tuple(sorted(groups)))
        if self._judged_again.get(judged):
            return False
        event = store.load_event(meta.event_id)
        if event is None:
            return False
        state_sets = [store.state_map(g) for g in groups]
        try:
            current = self._resolve(event, [*state_sets, store.state_map(meta.state_before)])
            check_auth_rules(event, self.auth_events_from_state(event, current))
        except (AuthError, _Dropped):
            self._judged_again.set(judged, True)
            return False
        try:
            with store.transaction():
                meta = store.accept_soft_failed(event)
                delta = self._advance_room(event, meta)
        except MatrixError as exc:  # state resolution of the new extremities failed
            logger.warning("cannot accept %s after all: %s", meta.event_id, exc.message)
            return False
        assert meta.stream_ordering is not None
        logger.info("accepted %s, soft failed before, as a peer holds it", meta.event_id)
        self._announce([RoomUpdate(room_id, event, meta.stream_ordering, delta)])
        return True

    # -- persisting ------------------------------------------------------------

    def _commit(
        self,
        event: Event,
        status: EventStatus,
        reason: str | None,
        before: _StateBefore,
        *,
        existing: EventMeta | None = None,
        destinations: Collection[str] = (),
        local: bool = False,
        in_commit: Callable[[str], None] | None = None,
    ) -> EventMeta:
        """Store the event and all that follows from it in one transaction, then notify.

        ``in_commit(event_id)`` runs inside that transaction (its writes
        commit with the event or not at all).
        """
        try:
            with self.store.transaction():
                meta, updates = self._persist(
                    event, status, reason, before, existing, destinations, local
                )
                if in_commit is not None:
                    in_commit(event.event_id)
        except MatrixError as exc:  # state resolution of the new extremities failed
            raise _Dropped(event.event_id, f"cannot store: {exc.message}") from None
        self._announce(updates)
        return meta

    def _announce(self, updates: list[RoomUpdate]) -> None:
        """Notify ``updates`` (committed), or once the batch they are part of commits."""
        if self._deferred_updates is not None:
            self._deferred_updates += updates
        else:
            for update in updates:
                self.notifier.notify(update)

    def _persist(
        self,
        event: Event,
        status: EventStatus,
        reason: str | None,
        before: _StateBefore,
        existing: EventMeta | None,
        destinations: Collection[str],
        local: bool,
    ) -> tuple[EventMeta, list[RoomUpdate]]:
        """The body of :meth:`_commit` (inside the transaction)."""
        store = self.store
        room_id = event.room_id
        if event.is_create() and status != EventStatus.REJECTED and store.room(room_id) is None:
            store.add_room(room_id, event.room_version, event.event_id)
        group = before.group
        if group is None:
            group = store.state_groups.create(room_id, before.state, before.bases)
        # A rejected event changes no state; a state event adds itself.
        adds_state = event.is_state() and status != EventStatus.REJECTED
        reason = reason if status == EventStatus.REJECTED else None
        if existing is not None:
            meta = store.promote_outlier(
                event,
                status,
                rejected_reason=reason,
                state_before=group,
                adds_state=adds_state,
                stream_ordering=before.history_position,
            )
        else:
            meta = store.insert_event(
                event,
                status,
                rejected_reason=reason,
                state_before=group,
                adds_state=adds_state,
                stream_ordering=before.history_position,
            )
        updates: list[RoomUpdate] = []
        if status == EventStatus.ACCEPTED:
            if before.gap:
                self._record_gap(event, before)
            delta = self._advance_room(event, meta, backfill=before.backfill)
            assert meta.stream_ordering is not None
            if before.history_position is None:  # older than what clients were shown: nothing new
                updates.append(RoomUpdate(room_id, event, meta.stream_ordering, delta, local))
        elif status != EventStatus.OUTLIER:
            delta = self._advance_room(event, meta)
            soft_failed = (
                event
                if status == EventStatus.SOFT_FAILED and before.history_position is None
                else None
            )
            if delta or soft_failed:  # delta: it came after accepted events that follow it
                position = meta.stream_ordering or store.max_stream_ordering()
                updates.append(RoomUpdate(room_id, None, position, delta, soft_failed=soft_failed))
        if destinations and self.push_filter is not None:
            # After insert_event: the filter reads the state before the event.
            destinations = [d for d in self.push_filter(event) if d in destinations]
        if destinations:
            store.outbound.enqueue_pdu(destinations, meta.nid)
        return meta, updates

    def _record_gap(self, event: Event, before: _StateBefore) -> None:
        """Remember the prev events we lack of an event accepted after a gap.

        For a new event that came while a user of ours is joined, they are
        events we missed, filled by themselves; before that (our join, an
        invite), and before history a client paged back to, they are
        history from before we joined, fetched when a client pages back to
        it. A gap being filled goes as far as the filler went: what its
        events lack is not recorded again.
        """
        historic = before.history_position is not None
        if before.backfill and not historic:
            return
        auto = not historic and self.server_name in self.store.joined_servers(event.room_id)
        metas = self.store.event_metas(event.prev_event_ids)
        missing = [
            p
            for p in dict.fromkeys(event.prev_event_ids)
            if p not in metas or metas[p].status == EventStatus.OUTLIER
        ]
        self.store.add_gaps(event.room_id, missing, auto=auto)

    def _advance_room(
        self, event: Event, meta: EventMeta, *, backfill: bool = False
    ) -> Mapping[StateKey, str | None]:
        """Update the forward extremities and the current state for an event entering the DAG.

        The forward extremities are the accepted events no accepted event
        follows (directly, or through soft-failed or rejected events). So an
        accepted event retires its prev events and is one itself unless an
        accepted event we already hold follows it (events arrive in any
        order); a soft-failed or rejected event retires its prev events only
        when an accepted event follows it. An event that fills a gap
        (``backfill``) is followed by our accepted events by construction.
        """
        store = self.store
        room_id = event.room_id
        accepted = meta.status == EventStatus.ACCEPTED
        followed = backfill or self._followed(event.event_id)
        old = store.forward_extremities(room_id)
        extremities = set(old)
        if accepted or followed:
            extremities.difference_update(self._retired_extremities(event))
        if accepted and not followed:
            extremities.add(event.event_id)
        if extremities == set(old) or not extremities:
            return {}
        store.set_forward_extremities(room_id, extremities)
        if extremities == {event.event_id}:
            assert meta.state_after is not None
            record = store.room(room_id)
            if record is not None and record.current_state_group == meta.state_before:
                # The usual case: one event on top of the current state.
                delta = {event.state_key_tuple: event.event_id} if event.is_state() else {}
                return store.set_current_state(room_id, meta.state_after, delta=delta)
            return store.set_current_state(room_id, meta.state_after)
        metas = store.event_metas(extremities)
        groups = _state_after_groups(metas[e] for e in sorted(extremities))
        if len(groups) == 1:
            group = groups[0]
        else:
            state_sets = [store.state_map(g) for g in groups]
            resolved = resolve_state(event.room_version, state_sets, store)
            group = store.state_groups.create(room_id, resolved, groups)
        return store.set_current_state(room_id, group)

    def _followed(self, event_id: str) -> bool:
        """Whether an accepted event we hold follows ``event_id`` (so it is no forward extremity).

        A child, or one reached through soft-failed or rejected children:
        the mirror of :meth:`_retired_extremities`, for an event that
        arrives after events that follow it.
        """
        if not self.store.has_children(event_id):
            return False  # the usual case: nothing points at it yet
        children = self.store.children(event_id)
        seen = set(children)
        for _ in range(_MAX_RETIRE_WALK):
            if not children:
                return False
            metas = self.store.event_metas(children)
            if any(m.status == EventStatus.ACCEPTED for m in metas.values()):
                return True
            children = [
                c
                for m in metas.values()
                if m.status in (EventStatus.SOFT_FAILED, EventStatus.REJECTED)
                for c in self.store.children(m.event_id)
                if c not in seen
            ]
            seen.update(children)
        return False

    def _retired_extremities(self, event: Event) -> set[str]:
        """The prev events, and those reached from them through soft-failed or rejected ones."""
        retired = set(event.prev_event_ids)
        todo = list(retired)
        for _ in range(_MAX_RETIRE_WALK):
            if not todo:
                break
            meta = self.store.event_meta(todo.pop())
            if meta is not None and meta.status in (EventStatus.SOFT_FAILED, EventStatus.REJECTED):
                for prev in self.store.prev_event_ids(meta.nid):
                    if prev not in retired:
                        retired.add(prev)
                        todo.append(prev)
        return retired

    # =========================================================================
    # Local events
    # =========================================================================

    def _check_local_user(self, user_id: str) -> None:
        if sender_server(user_id) != self.server_name:
            raise ValueError(f"{user_id} is not a user of this server ({self.server_name})")

    async def create_room(
        self,
        creator: str,
        request: Mapping[str, Any] | None = None,
        *,
        room_version: RoomVersion | None = None,
        creator_profile: Mapping[str, Any] | None = None,
    ) -> str:
        """createRoom: store the room's initial events (all or none); return the room ID."""
        self._check_local_user(creator)
        created = create_room_events(
            room_version,
            creator=creator,
            signing_key=self.signing_key,
            request=request or {},
            server_name=self.server_name,
            origin_server_ts=self.clock(),
            creator_profile=creator_profile,
        )
        room_id = created.room_id
        for event in created.events:
            _check_format(event)
        async with self._lock(room_id):
            if self.store.room(room_id) is not None:
                raise MatrixError(f"room {room_id} already exists", errcode="M_ROOM_IN_USE")
            updates: list[RoomUpdate] = []
            with self.store.transaction():
                before = _EMPTY_STATE
                for event in created.events:
                    try:
                        status, reason = self._check_auth(event, before)
                    except _Dropped as exc:
                        raise MatrixError(exc.reason) from None
                    if status != EventStatus.ACCEPTED:
                        raise AuthError(f"createRoom event {event.type} refused: {reason}")
                    meta, event_updates = self._persist(
                        event, status, None, before, None, self._destinations(event), True
                    )
                    updates += event_updates
                    assert meta.state_after is not None
                    group = meta.state_after
                    before = _StateBefore(self.store.state_map(group), group, (group,))
            for update in updates:
                self.notifier.notify(update)
        return room_id

    async def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
        in_commit: Callable[[str], None] | None = None,
    ) -> str:
        """Create, authorise, store and queue a local event; return its ID after the commit.

        ``in_commit(event_id)`` runs inside the transaction that stores the
        event: what the caller records about it (a client's transaction ID)
        survives a crash exactly when the event does.

        Raises :class:`AuthError` (M_FORBIDDEN) if the auth rules refuse it,
        :class:`NotFound` for a room we do not have.
        """
        self._check_local_user(sender)
        async with self._lock(room_id):
            event, before = self._build_local_event(
                room_id, sender, event_type, dict(content), state_key, extra
            )
            try:
                status, reason = self._check_auth(event, before)
            except _Dropped as exc:
                raise MatrixError(exc.reason) from None
            if status != EventStatus.ACCEPTED:
                raise AuthError(reason or "refused by the auth rules")
            try:
                self._commit(
                    event,
                    status,
                    None,
                    before,
                    destinations=self._destinations(event),
                    local=True,
                    in_commit=in_commit,
                )
            except _Dropped as exc:
                raise MatrixError(exc.reason) from None
        return event.event_id

    def _build_local_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None,
        extra: Mapping[str, Any] | None,
    ) -> tuple[Event, _StateBefore]:
        room_version, prevs, before, depth = self._next_position(room_id, sender)
        auth_ids = select_auth_event_ids(
            room_version, event_type, sender, state_key, content, before.state
        )
        event = build_event(
            room_version,
            signing_key=self.signing_key,
            server_name=self.server_name,
            sender=sender,
            type=event_type,
            content=content,
            room_id=room_id,
            prev_events=prevs,
            auth_events=auth_ids,
            state_key=state_key,
            depth=depth,
            origin_server_ts=self.clock(),
            extra=dict(extra) if extra else None,
        )
        _check_format(event)
        return event, before

    def _next_position(
        self, room_id: str, sender: str
    ) -> tuple[RoomVersion, list[str], _StateBefore, int]:
        """Where a new event of ``sender`` goes: version, prev_events, the state before it, depth.

        prev_events are the forward extremities, at most ten: when there are
        more, those after the sender's current membership first (else the
        state before, the resolution of their states, could lack it: a user
        who just joined a busy room could not speak), then the deepest. The
        state before is the current state, or that resolution; depth is one
        more than the deepest prev event.
        """
        record = self.store.room(room_id)
        extremities = self.store.forward_extremities(room_id)
        if record is None or record.current_state_group is None or not extremities:
            raise NotFound(f"room {room_id} is not known here")
        room_version = record.room_version
        prevs = extremities  # deepest first
        if len(extremities) > MAX_PREV_EVENTS:
            prevs = self._prevs_after_membership(record.current_state_group, extremities, sender)
        metas = self.store.event_metas(prevs)
        if len(prevs) == len(extremities):
            group = record.current_state_group
            before = _StateBefore(self.store.state_map(group), group, (group,))
        else:
            groups = _state_after_groups(metas[p] for p in prevs)
            state_sets = [self.store.state_map(g) for g in groups]
            resolved = resolve_state(room_version, state_sets, self.store)
            before = _StateBefore(resolved, None, groups)
        depth = min(max(m.depth for m in metas.values()) + 1, MAX_DEPTH)
        return room_version, prevs, before, depth

    def _prevs_after_membership(
        self, current_group: int, extremities: list[str], sender: str
    ) -> list[str]:
        """:data:`MAX_PREV_EVENTS` of ``extremities``: those whose state holds the sender's
        current membership first, each part deepest first (see :meth:`_next_position`)."""
        key = ("m.room.member", sender)
        membership = self.store.state_map(current_group).get(key)
        metas = self.store.event_metas(extremities)

        def after_membership(event_id: str) -> bool:
            group = metas[event_id].state_after
            return group is not None and self.store.state_map(group).get(key) == membership

        ranked = sorted(extremities, key=lambda e: not after_membership(e))  # stable: depth kept
        return ranked[:MAX_PREV_EVENTS]

    def build_membership_template(
        self, room_id: str, user_id: str, membership: str, *, now_ms: int | None = None
    ) -> tuple[dict[str, Any], RoomVersion]:
        """make_join / make_leave: the unsigned membership event of ``user_id`` and the room version.

        Built as our own next event would be (:meth:`_next_position`), with
        ``auth_events`` the spec's selection from the state before it. The
        auth rules are checked first (signatures and hashes are the joining
        server's to add): :class:`AuthError` (M_FORBIDDEN) if the user may
        not take that membership now, :class:`NotFound` for a room whose DAG
        we do not hold.
        """
        room_version, prevs, before, depth = self._next_position(room_id, user_id)
        content = {"membership": membership}
        template: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "depth": depth,
            "prev_events": prevs,
            "auth_events": select_auth_event_ids(
                room_version, "m.room.member", user_id, user_id, content, before.state
            ),
            "origin_server_ts": self.clock() if now_ms is None else now_ms,
        }
        event = Event({**template, "hashes": {"sha256": ""}, "signatures": {}}, room_version)
        try:
            check_auth_rules(event, self.auth_events_from_state(event, before.state))
        except AuthError as exc:
            raise AuthError(f"{user_id} may not {membership} {room_id}: {exc.message}") from None
        return template, room_version

    def _destinations(self, event: Event) -> set[str]:
        """Who must receive a local event: joined servers, and a membership's target."""
        servers = self.store.joined_servers(event.room_id)
        if event.type == "m.room.member" and event.state_key:
            servers.add(sender_server(event.state_key))
        servers.discard(self.server_name)
        return servers

    async def send_message(
        self,
        room_id: str,
        sender: str,
        content: Mapping[str, Any],
        event_type: str = "m.room.message",
    ) -> str:
        return await self.send_event(room_id, sender, event_type, content)

    async def send_state(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        state_key: str,
        content: Mapping[str, Any],
    ) -> str:
        return await self.send_event(room_id, sender, event_type, content, state_key=state_key)

    async def _membership(
        self,
        room_id: str,
        sender: str,
        target: str,
        membership: str,
        reason: str | None,
        extra_content: Mapping[str, Any] | None = None,
    ) -> str:
        content: dict[str, Any] = dict(extra_content or {})
        content["membership"] = membership
        if reason is not None:
            content["reason"] = reason
        return await self.send_state(room_id, sender, "m.room.member", target, content)

    async def invite(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> str:
        return await self._membership(room_id, sender, target, "invite", reason)

    async def join(
        self, room_id: str, user_id: str, profile: Mapping[str, Any] | None = None
    ) -> str:
        """Join a room this server holds (e.g. after receiving the invite)."""
        return await self._membership(room_id, user_id, user_id, "join", None, profile)

    async def leave(self, room_id: str, user_id: str, reason: str | None = None) -> str:
        return await self._membership(room_id, user_id, user_id, "leave", reason)

    async def kick(self, room_id: str, sender: str, target: str, reason: str | None = None) -> str:
        return await self._membership(room_id, sender, target, "leave", reason)

    async def ban(self, room_id: str, sender: str, target: str, reason: str | None = None) -> str:
        return await self._membership(room_id, sender, target, "ban", reason)

    async def unban(self, room_id: str, sender: str, target: str, reason: str | None = None) -> str:
        return await self._membership(room_id, sender, target, "leave", reason)

    async def redact(
        self,
        room_id: str,
        sender: str,
        event_id: str,
        reason: str | None = None,
        *,
        in_commit: Callable[[str], None] | None = None,
    ) -> str:
        room_version = self.store.room_version(room_id)
        if room_version is None:
            raise NotFound(f"room {room_id} is not known here")
        content: dict[str, Any] = {} if reason is None else {"reason": reason}
        extra = None
        if room_version.redacts_in_content:
            content["redacts"] = event_id
        else:
            extra = {"redacts": event_id}
        return await self.send_event(
            room_id, sender, "m.room.redaction", content, extra=extra, in_commit=in_commit
        )

    # =========================================================================
    # Reading rooms
    # =========================================================================

    def room_state(self, room_id: str) -> dict[StateKey, str]:
        """The current state of a room (empty if unknown)."""
        return dict(self.store.current_state(room_id))

    def forward_extremities(self, room_id: str) -> list[str]:
        return self.store.forward_extremities(room_id)

    def event_for_serving(self, event: Event) -> Event:
        """``event`` with any redaction that applies to it applied."""
        if event.redacted:
            return event
        for redaction_id in self.store.redactions_of(event.event_id):
            redaction = self.store.load_event(redaction_id)
            if redaction is None or redaction.room_id != event.room_id:
                continue
            try:
                auth_events = self._own_auth_events(redaction)
            except _Dropped:
                continue
            if redaction_applies(redaction, event, auth_events):
                return _redacted(event)
        return event

    def joined_servers_at(self, event_id: str, *, after: bool = False) -> frozenset[str] | None:
        """Servers with a user joined in the state before the event (``after``: after it).

        None when that state is unknown (no such event, or an outlier).
        Cached by state group, as pushing asks this per event per node.
        """
        meta = self.store.event_meta(event_id)
        group = None if meta is None else meta.state_after if after else meta.state_before
        if group is None:
            return None
        servers = self._joined_in_group.get(group)
        if servers is None:
            state = self.store.state_map(group)
            member_ids = [eid for (etype, _), eid in state.items() if etype == "m.room.member"]
            members = self.store.load_events(member_ids)
            servers = frozenset(
                sender_server(e.state_key)
                for e in members.values()
                if e.state_key and e.membership == "join"
            )
            if len(self._joined_in_group) >= 4096:
                self._joined_in_group.clear()  # bounded; recomputing is correct
            self._joined_in_group[group] = servers
        return servers

    def server_joined_at(
        self, server_name: str, room_id: str, event_id: str, *, before: bool = True
    ) -> bool:
        """Whether ``server_name`` had a user joined just after the event (with
        ``before``, or just before it); the event must be of ``room_id``."""
        meta = self.store.event_meta(event_id)
        if meta is None or meta.room_id != room_id:
            return False
        if server_name in (self.joined_servers_at(event_id, after=True) or ()):
            return True
        return before and server_name in (self.joined_servers_at(event_id) or ())

    def _state_maps_at(self, meta: EventMeta) -> list[StateMap]:
        groups = dict.fromkeys(g for g in (meta.state_before, meta.state_after) if g is not None)
        return [self.store.state_map(g) for g in groups]

    def _visibility(self, state: StateMap) -> str:
        event_id = state.get(HISTORY_VISIBILITY_KEY)
        return effective_visibility(self.store.load_event(event_id) if event_id else None)

    def _membership_in(self, state: StateMap, user_id: str) -> str | None:
        event_id = state.get(("m.room.member", user_id))
        event = self.store.load_event(event_id) if event_id else None
        return event.membership if event is not None else None

    def _joined_after(self, meta: EventMeta, user_id: str) -> bool:
        """Whether ``user_id`` joined the room after the event (or is joined now)."""
        if self.store.current_membership(meta.room_id, user_id) == "join":
            return True
        for member in self.store.membership_events(meta.room_id, user_id):
            if member.status == EventStatus.ACCEPTED and member.depth > meta.depth:
                event = self.store.load_event(member.event_id)
                if event is not None and event.membership == "join":
                    return True
        return False

    def may_user_see_event(self, user_id: str, event_id: str) -> bool:
        """History visibility for a user (spec: "Room History Visibility")."""
        meta = self.store.event_meta(event_id)
        if meta is None or meta.status in (EventStatus.REJECTED, EventStatus.SOFT_FAILED):
            return False  # never valid / never shown to clients
        if meta.type == "m.room.member" and meta.state_key == user_id:
            if self._own_invite(meta):
                return True
            if meta.status == EventStatus.OUTLIER:
                return False
        elif meta.status == EventStatus.OUTLIER:
            return False  # no state to judge by
        for state in self._state_maps_at(meta):
            visibility = self._visibility(state)
            membership = self._membership_in(state, user_id)
            if user_allowed(visibility, membership, joined_later=False):
                return True
            if visibility == SHARED and self._joined_after(meta, user_id):
                return True
        return False

    def _own_invite(self, meta: EventMeta) -> bool:
        """Whether a membership event invites its target (or records a knock).

        Extension, as Synapse: the target always sees these, whatever the
        history visibility; the spec's rules alone would hide an invite from
        its invitee unless the visibility is "invited".
        """
        event = self.store.load_event(meta.event_id)
        return event is not None and event.membership in ("invite", "knock")

    def may_server_see_event(self, server_name: str, event_id: str) -> bool:
        """History visibility for a server: may one of its users see the event?"""
        if server_name == self.server_name:
            return True
        return self._server_allowed(server_name, event_id)

    def entitled_to_content(self, event_id: str) -> bool:
        """Whether, by our own view of the state at the event, the rules let
        our server see its content: a stripped copy of such an event came from
        a server that had not yet learnt of our membership, and others serve it
        whole (:meth:`p2pserver.federation.sync.RoomSync.restore_stripped`).

        Not an outlier: with no state at it there is nothing to judge by
        (clients never see one either, :meth:`may_user_see_event`). Should it
        enter the DAG later, it is judged then.
        """
        meta = self.store.event_meta(event_id)
        if meta is None or meta.status == EventStatus.OUTLIER:
            return False
        return self._server_allowed(self.server_name, event_id)

    def _server_allowed(self, server_name: str, event_id: str) -> bool:
        meta = self.store.event_meta(event_id)
        if meta is None or meta.status == EventStatus.REJECTED:
            return False
        if meta.status == EventStatus.OUTLIER:
            return True  # no state to judge by; outliers are auth and state events
        if (
            meta.type == "m.room.member"
            and meta.state_key is not None
            and sender_server(meta.state_key) == server_name
            and self._own_invite(meta)
        ):
            return True
        for state in self._state_maps_at(meta):
            visibility = self._visibility(state)
            if visibility == WORLD_READABLE:
                return True
            users = server_users(state, server_name)
            for user_id in users:
                if user_allowed(
                    visibility, self._membership_in(state, user_id), joined_later=False
                ):
                    return True
            if visibility == SHARED and (
                server_name in self.store.joined_servers(meta.room_id)
                or any(self._joined_after(meta, u) for u in users)
            ):
                return True
        return False

    def get_event_for_user(self, user_id: str, event_id: str) -> Event | None:
        """An event as a client may see it (None if it may not)."""
        if not self.may_user_see_event(user_id, event_id):
            return None
        event = self.store.load_event(event_id)
        return self.event_for_serving(event) if event is not None else None

    # =========================================================================
    # Serving peers (the federation layer calls these)
    # =========================================================================

    def _pdu_for(self, origin: str, event: Event) -> dict[str, Any]:
        """The PDU to send ``origin``: redacted if it may not see the content."""
        if not self.may_server_see_event(origin, event.event_id):
            event = _redacted(event)
        return self.event_for_serving(event).get_pdu_json()

    def on_get_event(self, origin: str, event_id: str) -> dict[str, Any]:
        """``GET /event/{eventId}``."""
        event = self.store.load_event(event_id)
        if event is None:
            raise NotFound(f"event {event_id} not found")
        if self._in_current_state(event) and self._has_members(origin, event.room_id):
            # The room's state is what a joining server gets anyway.
            return self.event_for_serving(event).get_pdu_json()
        return self._pdu_for(origin, event)

    def _may_ask_about(self, origin: str, room_id: str, event_id: str) -> bool:
        """State and auth chains: for servers that may see the event or are in the room.

        An invited server needs them to place its invite in the DAG and join;
        they hold only state, which a joining server receives anyway.
        """
        return self.may_server_see_event(origin, event_id) or self._has_members(origin, room_id)

    def _in_current_state(self, event: Event) -> bool:
        return (
            event.state_key is not None
            and self.store.current_state(event.room_id).get(event.state_key_tuple) == event.event_id
        )

    def _has_members(self, server_name: str, room_id: str) -> bool:
        """Whether ``server_name`` has a user joined or invited in the current state."""
        state = self.store.current_state(room_id)
        return any(
            self._membership_in(state, u) in ("join", "invite")
            for u in server_users(state, server_name)
        )

    def on_get_missing_events(
        self,
        origin: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int = MISSING_EVENTS_LIMIT,
        min_depth: int = 0,
    ) -> list[dict[str, Any]]:
        """``POST /get_missing_events``: a breadth-first walk back from ``latest_events``."""
        limit = max(0, min(limit, 100))
        earliest = set(earliest_events)
        seen = set(latest_events) | earliest
        frontier = [e for e in latest_events if isinstance(e, str)]
        found: list[Event] = []
        while frontier and len(found) < limit:
            next_frontier: list[str] = []
            for event_id in frontier:
                meta = self.store.event_meta(event_id)
                if meta is None or meta.room_id != room_id:
                    continue
                for prev_id in self.store.prev_event_ids(meta.nid):
                    if prev_id not in seen:
                        seen.add(prev_id)
                        next_frontier.append(prev_id)
            events = self.store.load_events(next_frontier)
            for event_id in next_frontier:
                event = events.get(event_id)
                if event is None or event.depth < min_depth or event.room_id != room_id:
                    continue
                if len(found) < limit:
                    found.append(event)
            frontier = [e for e in next_frontier if e in events]
        return [self._pdu_for(origin, e) for e in found]

    def on_backfill(
        self, origin: str, room_id: str, event_ids: Sequence[str], limit: int
    ) -> list[dict[str, Any]]:
        """``GET /backfill``: the given events and their ancestors, deepest first."""
        limit = max(0, min(limit, 100))
        metas = self.store.event_metas(event_ids)
        queue = [(-m.depth, m.event_id) for m in metas.values() if m.room_id == room_id]
        seen = {e for _, e in queue}
        found: list[Event] = []
        while queue and len(found) < limit:
            queue.sort()
            _, event_id = queue.pop(0)
            event = self.store.load_event(event_id)
            meta = self.store.event_meta(event_id)
            if event is None or meta is None or meta.status == EventStatus.OUTLIER:
                continue
            found.append(event)
            prevs = [p for p in self.store.prev_event_ids(meta.nid) if p not in seen]
            for prev in self.store.event_metas(prevs).values():
                seen.add(prev.event_id)
                queue.append((-prev.depth, prev.event_id))
        return [self._pdu_for(origin, e) for e in found]

    def on_state_ids(self, origin: str, room_id: str, event_id: str) -> StateIds:
        """``GET /state_ids``: the state before ``event_id`` and its auth chain."""
        meta = self.store.event_meta(event_id)
        if meta is None or meta.room_id != room_id or meta.state_before is None:
            raise NotFound(f"no state known at {event_id}")
        if meta.status == EventStatus.REJECTED:
            raise NotFound(f"event {event_id} not found")
        if not self._may_ask_about(origin, room_id, event_id):
            raise Forbidden(f"{origin} may not see the state at {event_id}")
        state = self.store.state_map(meta.state_before)
        pdu_ids = sorted(state.values())
        return StateIds(pdu_ids, sorted(self.store.auth_chain_ids(pdu_ids)))

    def on_event_auth(self, origin: str, room_id: str, event_id: str) -> list[dict[str, Any]]:
        """``GET /event_auth``: the auth chain of ``event_id``, auth events first."""
        event = self.store.load_event(event_id)
        if event is None or event.room_id != room_id:
            raise NotFound(f"event {event_id} not found")
        if not self._may_ask_about(origin, room_id, event_id):
            raise Forbidden(f"{origin} may not see {event_id}")
        chain = self.store.auth_chain_ids([event_id])
        if event.room_version.room_id_is_create_event_hash:
            chain.add(create_event_id_for_room(room_id))  # v12: implied, never listed
        chain.discard(event_id)
        events = self.store.load_events(chain)
        metas = self.store.event_metas(events)
        ordered = sorted(events.values(), key=lambda e: metas[e.event_id].nid)
        return [self.event_for_serving(e).get_pdu_json() for e in ordered]


def _check_format(event: Event) -> None:
    """Our own events pass the format checks receipt applies (step 1), size limit included.

    A peer drops a PDU that fails them, so we refuse it first:
    :class:`~p2pserver.rooms.errors.EventTooLarge` (M_TOO_LARGE) over
    65,536 bytes, :class:`~p2pserver.rooms.errors.EventFormatError`
    (M_BAD_JSON) for anything else.
    """
    parse_pdu(event.pdu, event.room_version)


def _redacted(event: Event) -> Event:
    return Event(
        redact(event.pdu, event.room_version),
        event.room_version,
        event_id=event.event_id,
        redacted=True,
    )


def _same_events(a: Mapping[StateKey, Event], b: Mapping[StateKey, Event]) -> bool:
    return a.keys() == b.keys() and all(a[k].event_id == b[k].event_id for k in a)


def _state_after_groups(metas: Iterable[EventMeta]) -> list[int]:
    """The distinct state-after groups of DAG events, in order."""
    return list(dict.fromkeys(m.state_after for m in metas if m.state_after is not None))


def _auth_dependencies(event: Event) -> set[str]:
    ids = set(event.auth_event_ids)
    if event.room_version.room_id_is_create_event_hash and not event.is_create():
        ids.add(create_event_id_for_room(event.room_id))
    return ids


def _before(heads: Iterable[str], events: Mapping[str, Event]) -> dict[str, Event]:
    """Those of ``events`` reached from ``heads`` through prev events among them."""
    found: dict[str, Event] = {}
    todo = [h for h in heads if h in events]
    while todo:
        event_id = todo.pop()
        if event_id not in found:
            found[event_id] = events[event_id]
            todo += [p for p in events[event_id].prev_event_ids if p in events]
    return found


def _prev_events_first(events: Mapping[str, Event]) -> list[Event]:
    """``events`` ordered so each comes after those of its prev events among them."""
    return _dependencies_first(events, lambda e: set(e.prev_event_ids))


def _auth_events_first(events: Mapping[str, Event]) -> list[Event]:
    """``events`` ordered so each comes after those of its auth events among them."""
    return _dependencies_first(events, _auth_dependencies)


def _dependencies_first(
    events: Mapping[str, Event], dependencies: Callable[[Event], set[str]]
) -> list[Event]:
    """``events`` ordered so each comes after its dependencies among them (then by depth).

    Events on a cycle (only forged IDs could make one) are left out.
    """
    waiting_on = {
        event_id: {a for a in dependencies(event) if a in events and a != event_id}
        for event_id, event in events.items()
    }
    cited_by: dict[str, list[str]] = {}
    for event_id, auth_ids in waiting_on.items():
        for auth_id in auth_ids:
            cited_by.setdefault(auth_id, []).append(event_id)
    ready = sorted((e for e, w in waiting_on.items() if not w), key=lambda i: events[i].depth)
    ordered: list[Event] = []
    while ready:
        event_id = ready.pop(0)
        ordered.append(events[event_id])
        for child in cited_by.get(event_id, ()):
            waiting_on[child].discard(event_id)
            if not waiting_on[child]:
                ready.append(child)
    return ordered
