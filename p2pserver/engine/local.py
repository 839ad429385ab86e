"""Several room engines in one process, wired together without a network.

:class:`LocalNetwork` plays the federation layer for tests and simulations:
each engine gets a :class:`LocalPeerClient` whose requests call the other
engine's ``on_*`` handlers directly, and :meth:`LocalNetwork.deliver` moves
queued PDUs from each engine's outbound queue to its destination, in an
order the caller can shuffle.

Rules, so that tests exercise what a real network would:
- Everything crossing between engines is copied through JSON: no engine
  ever holds another's objects.
- A server in :attr:`LocalNetwork.offline` is unreachable both ways:
  requests to or from it raise :class:`PeerError` and nothing is delivered
  to or from it; its queue keeps the PDUs until it is back.
- A handler's :class:`MatrixError` (M_NOT_FOUND, M_FORBIDDEN) reaches the
  caller as a :class:`PeerError` with that errcode.
- Each request is recorded in :attr:`LocalNetwork.requests` so tests can
  see what was fetched.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from p2pserver.engine.engine import RoomEngine
from p2pserver.engine.peers import PeerError, StateIds
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import Store

T = TypeVar("T")


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class LocalNetwork:
    def __init__(self) -> None:
        self.engines: dict[str, RoomEngine] = {}
        self.offline: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []  # (requester, destination, method)

    def add_engine(
        self,
        store: Store | None = None,
        signing_key: SigningKey | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> RoomEngine:
        """A new engine on this network (in-memory store and fresh key by default)."""
        key = signing_key or SigningKey.generate()
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        engine = RoomEngine(
            store or Store.open(), key, peers=LocalPeerClient(self, key.server_name), **kwargs
        )
        self.engines[engine.server_name] = engine
        return engine

    def _reachable(self, requester: str, destination: str) -> RoomEngine:
        engine = self.engines.get(destination)
        if engine is None or destination in self.offline or requester in self.offline:
            raise PeerError(f"{destination} is unreachable")
        return engine

    def _pending(self) -> list[tuple[str, str]]:
        return [
            (source, destination)
            for source, engine in self.engines.items()
            if source not in self.offline
            for destination in engine.store.outbound.destinations()
            if destination not in self.offline
        ]

    async def deliver(
        self, *, rng: random.Random | None = None, max_batches: int | None = None
    ) -> int:
        """Send queued PDUs until every queue is empty (or ``max_batches`` were sent).

        With ``rng``, the next (source, destination) pair is picked at random
        and each batch's PDUs are shuffled. Returns the number of PDUs moved.
        PDUs for servers not on the network are dropped.
        """
        moved = batches = 0
        while max_batches is None or batches < max_batches:
            pending = self._pending()
            if not pending:
                break
            source, destination = rng.choice(pending) if rng else pending[0]
            outbound = self.engines[source].store.outbound
            batch = outbound.peek(destination)
            if batch is None:
                continue
            pdus = _copy(batch.pdus)
            if rng:
                rng.shuffle(pdus)
            target = self.engines.get(destination)
            if target is not None:
                await target.receive_transaction(source, pdus)
            outbound.ack(destination, batch.last_position)
            moved += len(pdus)
            batches += 1
        return moved


class LocalPeerClient:
    """The :class:`~p2pserver.engine.peers.PeerClient` of one engine on a LocalNetwork."""

    def __init__(self, network: LocalNetwork, requester: str) -> None:
        self.network = network
        self.requester = requester

    async def _call(self, destination: str, method: str, call: Callable[[RoomEngine], T]) -> T:
        await trio.lowlevel.checkpoint()  # a request is a scheduling point, as on a network
        self.network.requests.append((self.requester, destination, method))
        engine = self.network._reachable(self.requester, destination)
        try:
            return call(engine)
        except MatrixError as exc:
            raise PeerError(exc.message, errcode=exc.errcode) from None

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
        return _copy(
            await self._call(
                destination,
                "get_missing_events",
                lambda e: e.on_get_missing_events(
                    self.requester,
                    room_id,
                    earliest_events=earliest_events,
                    latest_events=latest_events,
                    limit=limit,
                    min_depth=min_depth,
                ),
            )
        )

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIds:
        ids = await self._call(
            destination, "state_ids", lambda e: e.on_state_ids(self.requester, room_id, event_id)
        )
        return StateIds(list(ids.pdu_ids), list(ids.auth_chain_ids))

    async def get_event(self, destination: str, event_id: str) -> Any:
        return _copy(
            await self._call(
                destination, "event", lambda e: e.on_get_event(self.requester, event_id)
            )
        )

    async def get_event_auth(self, destination: str, room_id: str, event_id: str) -> list[Any]:
        return _copy(
            await self._call(
                destination,
                "event_auth",
                lambda e: e.on_event_auth(self.requester, room_id, event_id),
            )
        )
