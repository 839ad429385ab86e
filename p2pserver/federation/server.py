"""Serving federation requests: the server half of the protocol.

:meth:`FederationServer.handle` is the node's
:data:`~p2pserver.transport.network.RequestHandler`. It dispatches on the
method name (:mod:`p2pserver.federation.protocol`), checks the body's shape
and answers in the spec's shapes, or raises a
:class:`~p2pserver.rooms.errors.MatrixError` whose errcode the transport
sends back. The node keeps serving everyone else whatever one peer sends.

Identity. ``origin`` is the authenticated server name of the peer (the
transport proved it). No request may speak for another server:

- a body's ``origin`` must be ``origin`` (M_FORBIDDEN);
- ``make_join``/``make_leave`` are for users of ``origin`` only, and the
  events of ``send_join``/``send_leave``/``invite`` must be sent by one;
- an EDU naming a user of another server is dropped (EDUs are unsigned);
- a PDU in a transaction may come from any server: relaying is how events
  reach members their origin cannot reach (:mod:`.fanout`). It is accepted
  only with a valid signature of its sender's server, which the room
  engine checks on receipt with every other check, so a forged or
  unauthorised event is refused whoever relays it.

Transactions (``send_transaction``): at most 50 PDUs and 100 EDUs
(M_TOO_LARGE beyond). Idempotent by ``(origin, txn_id)``: a repeated
transaction, even one still being processed, gets the first one's answer
without being processed again. PDUs are processed in order, each one on its
own (one bad PDU never fails the rest), by the engine's
``receive_transaction`` (which fetches what comes before them as the spec
says: ``/get_missing_events``, then the state at a gap); the answer maps
each event ID to ``{}`` or ``{"error": reason}``. A PDU accepted here for the first time is
relayed to our push targets (:meth:`FederationSender.relay`); one we soft
failed is relayed by :class:`~p2pserver.federation.federation.Federation`
(it does not enter the timeline, but others must still get it).

Reads (``get_missing_events``, ``backfill``, ``state``...) are answered by
the room engine's ``on_*`` methods, which apply history visibility; the
room-scoped ones are for servers with a user joined or invited in the room.
One exception: ``get_missing_events`` also serves a server that is no longer
in the room when one of the events it names had it joined:

- walking back from an event it was joined at (just before or after it),
  it fetches what was sent while it was joined (it is owed those);
- walking back to its own forward extremities (``earliest_events``), one
  of which it was joined after (its view still has it joined), it learns
  what superseded that view. Its removal may sit in a branch it never
  received, or follow only from merging branches (state resolution), so no
  push ever targeted it; without this it would believe itself joined
  forever, and every other server would refuse it.

As for any server, what it may not see comes redacted: it learns the
room's state skeleton (memberships, power levels, join rules), which it
needs to resolve its own removal, and no content.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from p2pserver.engine.engine import Forbidden, NotFound, PduResult, RoomEngine
from p2pserver.engine.notifier import RoomUpdate
from p2pserver.federation import protocol as p
from p2pserver.federation.knowledge import PeerKnowledge
from p2pserver.federation.membership import check_membership_event, stripped_state
from p2pserver.federation.queries import DefaultQueries, EduHandler, QueryHandler
from p2pserver.federation.sender import FederationSender
from p2pserver.federation.sync import RoomSync
from p2pserver.federation.view import has_dag, joined_at_any, server_in_room
from p2pserver.rooms.errors import AuthError, EventFormatError, MatrixError
from p2pserver.rooms.events import Event, sender_server
from p2pserver.rooms.receipt import REJECT, verify_event
from p2pserver.rooms.room_versions import RoomVersion, get_room_version
from p2pserver.rooms.signing import sign_event
from p2pserver.rooms.validation import parse_pdu
from p2pserver.storage.invites import InviteStates
from p2pserver.storage.store import EventStatus

logger = logging.getLogger(__name__)

# Answers to recent transactions, per (origin, txn_id).
TXN_CACHE_SIZE = 4096
# Event IDs recently accepted into a timeline (to tell first receipt from repeats).
FRESH_CACHE_SIZE = 16384

Handler = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class FederationServer:
    def __init__(
        self,
        engine: RoomEngine,
        sender: FederationSender,
        sync: RoomSync,
        *,
        knowledge: PeerKnowledge | None = None,
        queries: QueryHandler | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.sender = sender
        self.sync = sync
        self.knowledge = knowledge or sender.knowledge
        self.queries: QueryHandler = queries or DefaultQueries(engine.store)
        self.clock = clock
        self.server_name = engine.server_name
        self.edu_handlers: dict[str, EduHandler] = {}
        self._txns: OrderedDict[tuple[str, str], dict[str, Any] | trio.Event] = OrderedDict()
        self._fresh: OrderedDict[str, None] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._methods: dict[str, Handler] = {
            p.SEND_TRANSACTION: self.on_send_transaction,
            p.GET_MISSING_EVENTS: self.on_get_missing_events,
            p.BACKFILL: self.on_backfill,
            p.EVENT: self.on_event,
            p.STATE_IDS: self.on_state_ids,
            p.STATE: self.on_state,
            p.EVENT_AUTH: self.on_event_auth,
            p.MAKE_JOIN: self.on_make_join,
            p.SEND_JOIN: self.on_send_join,
            p.MAKE_LEAVE: self.on_make_leave,
            p.SEND_LEAVE: self.on_send_leave,
            p.MAKE_KNOCK: self.on_make_knock,
            p.SEND_KNOCK: self.on_send_knock,
            p.INVITE: self.on_invite,
            p.QUERY_PROFILE: self.on_query_profile,
            p.USER_DEVICES: self.on_user_devices,
            p.KEYS_QUERY: self.on_keys_query,
            p.KEYS_CLAIM: self.on_keys_claim,
            p.QUERY_DIRECTORY: self.on_query_directory,
            p.ROOM_HEADS: self.sync.handle_room_heads,
        }

    def start(self, nursery: trio.Nursery) -> None:
        """Background work (processing a received invite) runs in ``nursery``."""
        self._nursery = nursery

    async def handle(self, origin: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """The Network's request handler."""
        handler = self._methods.get(method)
        if handler is None:
            raise p.Unrecognized(f"unknown method {method!r}")
        claimed = body.get("origin")
        if claimed is not None and claimed != origin:
            raise Forbidden(f"{origin} may not speak for {claimed!r}")
        return await handler(origin, body)

    def on_room_update(self, update: RoomUpdate) -> None:
        """Notifier listener: remember which events entered a timeline just now."""
        if update.event is not None:
            self._fresh[update.event.event_id] = None
            while len(self._fresh) > FRESH_CACHE_SIZE:
                self._fresh.popitem(last=False)

    def _first_accepted(self, event_id: str) -> bool:
        """Whether the event entered the timeline since we last asked (first receipt)."""
        if event_id in self._fresh:
            del self._fresh[event_id]
            return True
        return False

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # -- transactions ---------------------------------------------------------------------

    async def on_send_transaction(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        txn_id: str = params.text("txn_id", max_length=p.MAX_TXN_ID_LENGTH)
        params.text("origin")  # required; checked against the connection in handle()
        params.integer("origin_server_ts")
        pdus = params.array("pdus")
        edus = params.array("edus", required=False)
        if len(pdus) > p.MAX_PDUS or len(edus) > p.MAX_EDUS:
            raise p.TooLarge(
                f"a transaction holds at most {p.MAX_PDUS} PDUs and {p.MAX_EDUS} EDUs "
                f"(got {len(pdus)} and {len(edus)})"
            )
        key = (origin, txn_id)
        while isinstance(seen := self._txns.get(key), trio.Event):
            await seen.wait()  # the same transaction is being processed
        if seen is not None:
            return seen
        done = self._txns[key] = trio.Event()
        answer: dict[str, Any] | None = None
        try:
            answer = {"pdus": await self._receive_pdus(origin, pdus)}
            await self._receive_edus(origin, edus)
            return answer
        finally:
            if answer is None:
                del self._txns[key]  # failed or cancelled: a retry is processed anew
            else:
                self._txns[key] = answer
                while len(self._txns) > TXN_CACHE_SIZE:
                    self._txns.popitem(last=False)
            done.set()

    async def _receive_pdus(self, origin: str, pdus: list[Any]) -> dict[str, dict[str, str]]:
        results: dict[str, dict[str, str]] = {}
        rooms: set[str] = set()
        for result in await self.engine.receive_transaction(origin, pdus):
            if result.event_id is None:
                logger.info("dropped a PDU from %s: %s", origin[:8], result.reason)
                continue
            if not result.accepted:
                results[result.event_id] = {"error": result.reason or "not accepted"}
                logger.info("refused %s from %s: %s", result.event_id, origin[:8], result.reason)
                continue
            results[result.event_id] = {}
            event = self.store.load_event(result.event_id)
            if event is None:
                continue
            self.knowledge.record(origin, event.room_id, [event.event_id])
            rooms.add(event.room_id)
            if self._first_accepted(event.event_id):
                self.sender.relay(event, received_from=origin)
        for room_id in rooms:
            self.sync.gaps_found(origin, room_id)  # events before these we could not fetch
        return results

    async def _receive_edus(self, origin: str, edus: list[Any]) -> None:
        for edu in edus:
            if not isinstance(edu, dict) or not isinstance(edu.get("edu_type"), str):
                continue
            content = edu.get("content")
            if not isinstance(content, dict):
                continue
            claimed = p.edu_claimed_servers(edu) - {origin}
            if claimed:
                logger.warning(
                    "dropped an %s EDU from %s speaking for %s",
                    edu["edu_type"],
                    origin[:8],
                    sorted(c[:8] for c in claimed),
                )
                continue
            handler = self.edu_handlers.get(edu["edu_type"])
            if handler is None:
                continue
            try:
                await handler(origin, content)
            except Exception:
                logger.exception("the %s EDU handler failed", edu["edu_type"])

    # -- reading rooms ---------------------------------------------------------------------

    def _room_for(self, origin: str, room_id: str) -> RoomVersion:
        """The room's version, for a server with a user joined or invited in it."""
        version = self.store.room_version(room_id)
        if version is None or not has_dag(self.store, room_id):
            raise NotFound(f"room {room_id} is not known here")
        if not server_in_room(self.store, room_id, origin):
            raise Forbidden(f"{origin} is not in room {room_id}")
        return version

    def _envelope(self, pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {"origin": self.server_name, "origin_server_ts": self.clock(), "pdus": pdus}

    async def on_get_missing_events(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        room_id = params.room_id()
        latest = params.event_ids("latest_events")
        earliest = params.event_ids("earliest_events")
        try:
            self._room_for(origin, room_id)
        except Forbidden:
            # A server that has left (or was kicked) is still owed the events
            # sent while it was joined, and one whose own view still has it
            # joined (its removal came by a branch it never received) must
            # learn of the removal: see the module docstring.
            owed = joined_at_any(self.engine, room_id, origin, latest)
            if not owed and not joined_at_any(self.engine, room_id, origin, earliest, before=False):
                raise
        events = self.engine.on_get_missing_events(
            origin,
            room_id,
            earliest_events=earliest,
            latest_events=latest,
            limit=params.integer("limit", default=10, high=p.MAX_EVENTS_PER_ANSWER),
            min_depth=params.integer("min_depth", default=0),
        )
        return {"events": events}

    async def on_backfill(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        room_id = params.room_id()
        self._room_for(origin, room_id)
        limit = params.integer("limit", high=p.MAX_EVENTS_PER_ANSWER)  # required by the spec
        pdus = self.engine.on_backfill(origin, room_id, params.event_ids("v"), limit)
        return self._envelope(pdus)

    async def on_event(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        event_id = p.Params(body).event_id()
        return self._envelope([self.engine.on_get_event(origin, event_id)])

    async def on_state_ids(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        ids = self.engine.on_state_ids(origin, params.room_id(), params.event_id())
        return {"pdu_ids": ids.pdu_ids, "auth_chain_ids": ids.auth_chain_ids}

    async def on_state(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        ids = self.engine.on_state_ids(origin, params.room_id(), params.event_id())
        return {"pdus": self._pdus(ids.pdu_ids), "auth_chain": self._pdus(ids.auth_chain_ids)}

    async def on_event_auth(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        return {
            "auth_chain": self.engine.on_event_auth(origin, params.room_id(), params.event_id())
        }

    def _pdus(self, event_ids: list[str]) -> list[dict[str, Any]]:
        events = self.store.load_events(event_ids)
        return [
            self.engine.event_for_serving(events[i]).get_pdu_json()
            for i in event_ids
            if i in events
        ]

    # -- membership handshakes ---------------------------------------------------------------

    def _local_user_of(self, origin: str, user_id: str) -> None:
        if sender_server(user_id) != origin:
            raise Forbidden(f"{origin} may not act for {user_id}")

    async def on_make_join(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._make_membership(origin, body, "join")

    async def on_make_leave(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._make_membership(origin, body, "leave")

    async def on_make_knock(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._make_membership(origin, body, "knock")

    def _make_membership(
        self, origin: str, body: Mapping[str, Any], membership: str
    ) -> dict[str, Any]:
        """make_join / make_leave / make_knock: the template, for a user of ``origin``."""
        params = p.Params(body)
        room_id, user_id = params.room_id(), params.user_id()
        self._local_user_of(origin, user_id)
        versions = None
        if membership != "leave":
            # The spec's default when ``ver`` is absent is ["1"], which nobody here speaks.
            versions = params.texts("ver", required=False) or ["1"]
        template, version = self._template(room_id, user_id, membership, versions)
        return {"event": template, "room_version": version.identifier}

    def _template(
        self, room_id: str, user_id: str, membership: str, versions: list[str] | None
    ) -> tuple[dict[str, Any], RoomVersion]:
        version = self.store.room_version(room_id)
        if version is None or not has_dag(self.store, room_id):
            raise NotFound(f"room {room_id} is not known here")
        if versions is not None and version.identifier not in versions:
            raise p.IncompatibleRoomVersion(
                f"room {room_id} has version {version.identifier}, not one of {versions}"
            )
        try:
            return self.engine.build_membership_template(room_id, user_id, membership)
        except AuthError as exc:
            raise Forbidden(exc.message) from None

    def _handshake_event(
        self, origin: str, body: Mapping[str, Any], membership: str
    ) -> tuple[Event, dict[str, Any]]:
        params = p.Params(body)
        room_id, event_id = params.room_id(), params.event_id()
        pdu = params.mapping("event")
        version = self.store.room_version(room_id)
        if version is None or not has_dag(self.store, room_id):
            raise NotFound(f"room {room_id} is not known here")
        event = parse_pdu(pdu, version)  # EventFormatError: M_BAD_JSON
        check_membership_event(
            event, origin=origin, membership=membership, room_id=room_id, event_id=event_id
        )
        return event, pdu

    async def on_send_join(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        event, pdu = self._handshake_event(origin, body, "join")
        _require_accepted(await self.engine.receive_pdu(origin, pdu), "join")
        room_id = event.room_id
        ids = self.engine.on_state_ids(origin, room_id, event.event_id)
        auth_chain = set(ids.auth_chain_ids) | self.store.auth_chain_ids([event.event_id])
        if self._first_accepted(event.event_id):
            self.sender.relay(event, received_from=origin, for_origin=True)
        return {
            "origin": self.server_name,
            "event": pdu,
            "state": self._pdus(ids.pdu_ids),
            "auth_chain": self._pdus(sorted(auth_chain)),
            "members_omitted": False,
            "servers_in_room": sorted(self.store.joined_servers(room_id)),
        }

    async def on_send_leave(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        event, pdu = self._handshake_event(origin, body, "leave")
        _require_accepted(await self.engine.receive_pdu(origin, pdu), "leave")
        if self._first_accepted(event.event_id):
            self.sender.relay(event, received_from=origin, for_origin=True)
        return {}

    async def on_send_knock(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        event, pdu = self._handshake_event(origin, body, "knock")
        _require_accepted(await self.engine.receive_pdu(origin, pdu), "knock")
        if self._first_accepted(event.event_id):
            self.sender.relay(event, received_from=origin, for_origin=True)
        # What the knocker's client shows of the room (spec: "Stripped state").
        return {"knock_room_state": stripped_state(self.store, event.room_id)}

    async def on_invite(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        room_id, event_id = params.room_id(), params.event_id()
        pdu = params.mapping("event")
        invite_room_state = params.stripped_state("invite_room_state")
        try:
            version = get_room_version(params.text("room_version"))
        except MatrixError as exc:
            raise p.IncompatibleRoomVersion(exc.message) from None
        event = parse_pdu(pdu, version)
        check_membership_event(
            event, origin=origin, membership="invite", room_id=room_id, event_id=event_id
        )
        assert event.state_key is not None
        if sender_server(event.state_key) != self.server_name:
            raise Forbidden(f"the invite is for {event.state_key}, not a user of this server")
        outcome = verify_event(event)
        if outcome.verdict is REJECT:
            raise Forbidden(f"invite signature: {outcome.reason}")
        if outcome.event.redacted:
            raise EventFormatError("the invite's content hash does not match")
        signed = sign_event(dict(pdu), self.server_name, self.engine.signing_key, version)
        # What the invitee's client shows until we join (our copies are redacted).
        InviteStates(self.store.db).put(event.event_id, room_id, invite_room_state)
        # Take it into the room in the background: it may mean fetching the
        # room (the engine discovers it from its create event at ``origin``).
        self._spawn(self._take_invite, origin, signed, version)
        return {"event": signed}

    async def _take_invite(self, origin: str, pdu: dict[str, Any], version: RoomVersion) -> None:
        result = await self.engine.receive_pdu(origin, pdu, room_version=version)
        if result.accepted:
            logger.info("invited to %s by %s", pdu.get("room_id"), pdu.get("sender"))
        else:
            logger.info(
                "invite %s from %s not accepted: %s", result.event_id, origin[:8], result.reason
            )

    # -- queries ------------------------------------------------------------------------------

    def _local_user(self, user_id: str) -> None:
        if sender_server(user_id) != self.server_name:
            raise NotFound(f"{user_id} is not a user of this server")

    async def on_query_profile(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        params = p.Params(body)
        user_id = params.user_id()
        field = params.text("field", required=False)
        if field is not None and field not in ("displayname", "avatar_url"):
            raise p.InvalidParam(f"unknown profile field {field!r}")
        self._local_user(user_id)
        return await self.queries.query_profile(origin, user_id, field)

    async def on_query_directory(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        alias = p.Params(body).room_alias()
        # Each server answers for its own aliases only.
        if alias.partition(":")[2] != self.server_name:
            raise NotFound(f"{alias} is not an alias of this server")
        return await self.queries.query_directory(origin, alias)

    async def on_user_devices(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        user_id = p.Params(body).user_id()
        self._local_user(user_id)
        return await self.queries.user_devices(origin, user_id)

    async def on_keys_query(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        device_keys = p.Params(body).mapping("device_keys")
        asked: dict[str, list[str]] = {}
        for user_id, devices in device_keys.items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise p.InvalidParam("device_keys maps user IDs to lists of device IDs")
            if sender_server(user_id) == self.server_name:
                asked[user_id] = devices
        return await self.queries.keys_query(origin, asked)

    async def on_keys_claim(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        one_time_keys = p.Params(body).mapping("one_time_keys")
        asked: dict[str, dict[str, str]] = {}
        for user_id, devices in one_time_keys.items():
            if not isinstance(devices, dict) or not all(
                isinstance(a, str) for a in devices.values()
            ):
                raise p.InvalidParam("one_time_keys maps user IDs to {device_id: algorithm}")
            if sender_server(user_id) == self.server_name:
                asked[user_id] = devices
        return await self.queries.keys_claim(origin, asked)


def _require_accepted(result: PduResult, what: str) -> None:
    """A handshake's event must pass against the room's current state too.

    A soft-failed one (e.g. the user was banned after make_join/make_knock)
    is refused, as the spec's 403 for send_join/send_knock says; it stays
    stored, as every soft-failed event does, but changes nothing.
    """
    if result.status != EventStatus.ACCEPTED:
        raise Forbidden(f"{what} refused: {result.reason}")
