"""Federation requests over a `Network`: the client half of the protocol.

:class:`FederationClient` sends each operation of
:mod:`p2pserver.federation.protocol` as one request, with that method's
timeout, and checks the *shape* of the answer (PDUs in it stay untrusted
JSON: the room engine checks them on receipt). It is also the engine's
:class:`~p2pserver.engine.peers.PeerClient`.

Errors: every failure raises :class:`FederationError` (a
:class:`~p2pserver.engine.peers.PeerError`), whose ``errcode`` is the
remote errcode (None when the peer could not be reached or did not answer
in time, or answered nonsense), so the engine's fallbacks apply.
``transient`` tells the sender whether to retry later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from p2pserver.engine.peers import PeerError, StateIds
from p2pserver.federation import protocol as p
from p2pserver.rooms.errors import MatrixError
from p2pserver.transport.framing import FrameError
from p2pserver.transport.network import (
    Network,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
)

logger = logging.getLogger(__name__)

# Remote errcodes that mean "try again later" rather than "never".
TRANSIENT_ERRCODES = frozenset({"M_LIMIT_EXCEEDED", "M_UNKNOWN"})


class FederationError(PeerError):
    """A federation request failed (see the module docstring)."""

    def __init__(
        self,
        message: str,
        *,
        errcode: str | None = None,
        unreachable: bool = False,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message, errcode=errcode)
        self.unreachable = unreachable
        self.retry_after_ms = retry_after_ms

    @property
    def transient(self) -> bool:
        return self.unreachable or self.errcode in TRANSIENT_ERRCODES


def _malformed(method: str, what: str) -> FederationError:
    return FederationError(f"malformed {method} answer: {what}")


class FederationClient:
    """Requests to other servers. Implements the engine's PeerClient."""

    def __init__(self, network: Network, *, timeouts: Mapping[str, float] | None = None) -> None:
        self.network = network
        self.timeouts = dict(timeouts or {})

    async def request(self, destination: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        timeout = self.timeouts.get(method, p.timeout_for(method))
        try:
            return await self.network.request(destination, method, body, timeout=timeout)
        except RemoteError as exc:
            raise FederationError(
                f"{method} to {destination[:8]}: {exc.errcode}: {exc.message}",
                errcode=exc.errcode,
                retry_after_ms=exc.retry_after_ms,
            ) from None
        except (PeerUnreachable, RequestTimeout) as exc:
            raise FederationError(
                f"{method} to {destination[:8]}: {exc}", unreachable=True
            ) from None
        except FrameError as exc:  # our own request does not fit a frame
            raise FederationError(
                f"{method} to {destination[:8]} cannot be sent: {exc}", errcode="M_TOO_LARGE"
            ) from None

    # -- the engine's PeerClient ---------------------------------------------------

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> list[Any]:
        answer = await self.request(
            destination,
            p.GET_MISSING_EVENTS,
            {
                "room_id": room_id,
                "earliest_events": list(earliest_events)[: p.MAX_EVENT_IDS],
                "latest_events": list(latest_events)[: p.MAX_EVENT_IDS],
                "limit": limit,
                "min_depth": min_depth,
            },
        )
        return _list(answer, "events", p.GET_MISSING_EVENTS)

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIds:
        answer = await self.request(
            destination, p.STATE_IDS, {"room_id": room_id, "event_id": event_id}
        )
        pdu_ids = _list(answer, "pdu_ids", p.STATE_IDS)
        auth_ids = _list(answer, "auth_chain_ids", p.STATE_IDS)
        if not all(isinstance(i, str) for i in [*pdu_ids, *auth_ids]):
            raise _malformed(p.STATE_IDS, "IDs must be strings")
        return StateIds(pdu_ids, auth_ids)

    async def get_event(self, destination: str, event_id: str) -> Any:
        answer = await self.request(destination, p.EVENT, {"event_id": event_id})
        pdus = _list(answer, "pdus", p.EVENT)
        if len(pdus) != 1:
            raise _malformed(p.EVENT, "expected exactly one PDU")
        return pdus[0]

    async def get_event_auth(self, destination: str, room_id: str, event_id: str) -> list[Any]:
        answer = await self.request(
            destination, p.EVENT_AUTH, {"room_id": room_id, "event_id": event_id}
        )
        return _list(answer, "auth_chain", p.EVENT_AUTH)

    # -- the rest of the protocol ------------------------------------------------------

    async def send_transaction(
        self,
        destination: str,
        txn_id: str,
        *,
        origin: str,
        origin_server_ts: int,
        pdus: Sequence[Mapping[str, Any]],
        edus: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """PUT /send/{txnId}; returns the ``pdus`` results (event ID -> {} or {"error"})."""
        answer = await self.request(
            destination,
            p.SEND_TRANSACTION,
            {
                "txn_id": txn_id,
                "origin": origin,
                "origin_server_ts": origin_server_ts,
                "pdus": list(pdus),
                "edus": list(edus),
            },
        )
        results = answer.get("pdus", {})
        if not isinstance(results, dict):
            raise _malformed(p.SEND_TRANSACTION, "pdus must be an object")
        return results

    async def backfill(
        self, destination: str, room_id: str, event_ids: Sequence[str], limit: int
    ) -> list[Any]:
        answer = await self.request(
            destination, p.BACKFILL, {"room_id": room_id, "v": list(event_ids), "limit": limit}
        )
        return _list(answer, "pdus", p.BACKFILL)

    async def get_state(
        self, destination: str, room_id: str, event_id: str
    ) -> tuple[list[Any], list[Any]]:
        """GET /state: (state PDUs before the event, their auth chain)."""
        answer = await self.request(
            destination, p.STATE, {"room_id": room_id, "event_id": event_id}
        )
        return _list(answer, "pdus", p.STATE), _list(answer, "auth_chain", p.STATE)

    async def make_membership(
        self,
        destination: str,
        membership: str,
        room_id: str,
        user_id: str,
        versions: Sequence[str] = p.SUPPORTED_ROOM_VERSIONS,
    ) -> tuple[dict[str, Any], str]:
        """GET /make_join, /make_knock or /make_leave (``membership``): (the event
        template, the room version). ``versions``: the room versions we speak
        (not sent for a leave)."""
        method = _MAKE[membership]
        body: dict[str, Any] = {"room_id": room_id, "user_id": user_id}
        if membership != "leave":
            body["ver"] = list(versions)
        return _template(await self.request(destination, method, body), method)

    async def send_join(
        self, destination: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> dict[str, Any]:
        """PUT /v2/send_join: the resident server's answer (state, auth_chain, ...)."""
        answer = await self._send_membership(destination, p.SEND_JOIN, room_id, event_id, pdu)
        _list(answer, "state", p.SEND_JOIN)
        _list(answer, "auth_chain", p.SEND_JOIN)
        return answer

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> None:
        await self._send_membership(destination, p.SEND_LEAVE, room_id, event_id, pdu)

    async def send_knock(
        self, destination: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """PUT /send_knock: the room's stripped state (``knock_room_state``), shape-checked."""
        answer = await self._send_membership(destination, p.SEND_KNOCK, room_id, event_id, pdu)
        try:
            return p.Params(answer).stripped_state("knock_room_state")
        except MatrixError as exc:
            raise _malformed(p.SEND_KNOCK, exc.message) from None

    async def _send_membership(
        self, destination: str, method: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {"room_id": room_id, "event_id": event_id, "event": dict(pdu)}
        return await self.request(destination, method, body)

    async def invite(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        *,
        room_version: str,
        pdu: Mapping[str, Any],
        invite_room_state: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """PUT /v2/invite: the invite event as signed by the invitee's server."""
        answer = await self.request(
            destination,
            p.INVITE,
            {
                "room_id": room_id,
                "event_id": event_id,
                "room_version": room_version,
                "event": dict(pdu),
                "invite_room_state": [dict(s) for s in invite_room_state],
            },
        )
        event = answer.get("event")
        if not isinstance(event, dict):
            raise _malformed(p.INVITE, "no event")
        return event

    async def query_profile(
        self, destination: str, user_id: str, field: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": user_id}
        if field is not None:
            body["field"] = field
        return await self.request(destination, p.QUERY_PROFILE, body)

    async def query_directory(self, destination: str, alias: str) -> dict[str, Any]:
        """``{"room_id", "servers"}`` for one of ``destination``'s room aliases."""
        return await self.request(destination, p.QUERY_DIRECTORY, {"room_alias": alias})

    async def user_devices(self, destination: str, user_id: str) -> dict[str, Any]:
        return await self.request(destination, p.USER_DEVICES, {"user_id": user_id})

    async def keys_query(
        self, destination: str, device_keys: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        return await self.request(
            destination, p.KEYS_QUERY, {"device_keys": {u: list(d) for u, d in device_keys.items()}}
        )

    async def keys_claim(
        self, destination: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        return await self.request(
            destination,
            p.KEYS_CLAIM,
            {"one_time_keys": {u: dict(d) for u, d in one_time_keys.items()}},
        )

    async def room_heads(
        self, destination: str, rooms: Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]]:
        """Exchange forward extremities: ours for ``rooms``, theirs back."""
        answer = await self.request(
            destination, p.ROOM_HEADS, {"rooms": {r: list(h) for r, h in rooms.items()}}
        )
        theirs = answer.get("rooms")
        if not isinstance(theirs, dict):
            raise _malformed(p.ROOM_HEADS, "rooms must be an object")
        out: dict[str, list[str]] = {}
        for room_id, heads in theirs.items():
            if isinstance(heads, list) and all(isinstance(h, str) for h in heads):
                out[room_id] = heads[: p.MAX_HEADS_PER_ROOM]
        return out


def _list(answer: Mapping[str, Any], key: str, method: str) -> list[Any]:
    value = answer.get(key)
    if not isinstance(value, list):
        raise _malformed(method, f"{key} must be a list")
    return value


_MAKE = {"join": p.MAKE_JOIN, "knock": p.MAKE_KNOCK, "leave": p.MAKE_LEAVE}


def _template(answer: Mapping[str, Any], method: str) -> tuple[dict[str, Any], str]:
    event = answer.get("event")
    version = answer.get("room_version")
    if not isinstance(event, dict) or not isinstance(version, str):
        raise _malformed(method, "needs event and room_version")
    return event, version
