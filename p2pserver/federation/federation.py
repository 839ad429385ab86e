"""One node's federation: the server, the sender and the pull loop, wired to a room engine.

:func:`build_federation` makes the room engine with a
:class:`~p2pserver.federation.client.FederationClient` as its PeerClient
and returns the :class:`Federation` around it. ``async with`` nothing:
``await nursery.start(federation.run)`` inside ``network.running()``
installs the request handler, starts the sender (which resumes the
persistent outbound queue) and the pull loop, and follows the Network's
peer events (a peer that connects is retried at once and exchanges room
heads with us). Leaving ``run`` stops it all and uninstalls the handler.

How an event reaches every member (details in :mod:`.fanout` and
:mod:`.sync`): pushed along a per-event tree with at most ``fanout``
children per node, and pulled by forward-extremity exchange when peers
connect, after our extremities change, and every ``sync_interval``.

When a user of ours joins a room whose history we hold stripped (servers
strip events for a server whose users were only invited), the servers that
hold our join are asked for the full events
(:meth:`~p2pserver.federation.sync.RoomSync.restore_stripped`).

Membership the node initiates goes through here, not the engine alone:
:meth:`Federation.invite` also sends the spec's ``invite`` handshake;
:meth:`Federation.join` joins locally when we hold the room's DAG and
otherwise through ``make_join``/``send_join`` with a resident server (the
room engine takes the state it answers with, checked, as the state before
our join: :meth:`~p2pserver.engine.engine.RoomEngine.accept_send_join`);
:meth:`Federation.leave` likewise with ``make_leave``/``send_leave``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own is hidden by these stubs

from p2pserver.engine.engine import NotFound, RoomEngine
from p2pserver.engine.notifier import RoomUpdate
from p2pserver.federation.client import FederationClient, FederationError
from p2pserver.federation.fanout import DEFAULT_FANOUT
from p2pserver.federation.knowledge import PeerKnowledge
from p2pserver.federation.membership import check_template, fill_template, stripped_state
from p2pserver.federation.queries import EduHandler, QueryHandler
from p2pserver.federation.sender import FederationSender
from p2pserver.federation.server import FederationServer
from p2pserver.federation.sync import (
    DEFAULT_ANNOUNCE_DELAY,
    DEFAULT_MAX_CATCHUP_EVENTS,
    DEFAULT_SYNC_INTERVAL,
    RoomSync,
)
from p2pserver.federation.view import has_dag
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import Event, sender_server
from p2pserver.rooms.room_versions import RoomVersion, get_room_version
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import Store
from p2pserver.transport.network import Network, PeerEvent

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederationConfig:
    """Tuning; the defaults suit a phone in rooms of tens of servers."""

    fanout: int = DEFAULT_FANOUT
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    announce_delay: float = DEFAULT_ANNOUNCE_DELAY
    backoff_initial: float = 2.0
    backoff_max: float = 600.0
    max_catchup_events: int = DEFAULT_MAX_CATCHUP_EVENTS


def build_federation(
    store: Store,
    signing_key: SigningKey,
    network: Network,
    config: FederationConfig | None = None,
    *,
    queries: QueryHandler | None = None,
    clock: Callable[[], int] | None = None,
) -> Federation:
    """A room engine on ``store`` that reaches peers through ``network``, and its Federation."""
    client = FederationClient(network)
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    engine = RoomEngine(store, signing_key, peers=client, **kwargs)
    return Federation(engine, network, client, config, queries=queries)


class Federation:
    def __init__(
        self,
        engine: RoomEngine,
        network: Network,
        client: FederationClient,
        config: FederationConfig | None = None,
        *,
        queries: QueryHandler | None = None,
    ) -> None:
        if network.server_name != engine.server_name:
            raise ValueError("the network and the engine must be the same server")
        self.config = config = config or FederationConfig()
        self.engine = engine
        self.store = engine.store
        self.network = network
        self.client = client
        self.server_name = engine.server_name
        self.knowledge = PeerKnowledge()
        self.sender = FederationSender(
            engine,
            client,
            fanout=config.fanout,
            knowledge=self.knowledge,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
        )
        engine.push_filter = self.sender.own_targets
        self.sync = RoomSync(
            engine,
            client,
            network,
            knowledge=self.knowledge,
            fanout=config.fanout,
            sync_interval=config.sync_interval,
            announce_delay=config.announce_delay,
            max_catchup_events=config.max_catchup_events,
            backing_off=self.sender.backing_off,
        )
        self.server = FederationServer(
            engine, self.sender, self.sync, knowledge=self.knowledge, queries=queries
        )
        self._nursery: trio.Nursery | None = None

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve and deliver until cancelled. Call inside ``network.running()``."""
        removers = [
            self.engine.notifier.add_listener(self.server.on_room_update),
            self.engine.notifier.add_listener(self.sync.on_room_update),
            self.engine.notifier.add_listener(self._on_room_update),
        ]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.server.start(nursery)
                await nursery.start(self.sender.run)
                await nursery.start(self.sync.run)
                nursery.start_soon(self._follow_peers, self.network.subscribe_peer_events())
                self.network.set_request_handler(self.server.handle)
                for peer in self.network.connected_peers():
                    self._peer_connected(peer)
                for room_id in self.store.stripped_rooms():
                    # Left off before a restart (see _on_room_update).
                    if self.server_name in self.store.joined_servers(room_id):
                        nursery.start_soon(self.sync.restore_stripped, room_id)
                logger.info(
                    "%s: federation running (fan-out %d, pull every %.0fs)",
                    self.server_name[:8],
                    self.config.fanout,
                    self.config.sync_interval,
                )
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.network.set_request_handler(None)
            for remove in removers:
                remove()

    def _on_room_update(self, update: RoomUpdate) -> None:
        event = update.event
        if event is not None and not update.local and event.origin != self.server_name:
            # However it reached us: servers that left since cannot pull it.
            self.sender.relay_to_departed(event)
        soft_failed = update.soft_failed
        if soft_failed is not None and (
            self.store.current_membership(soft_failed.room_id, soft_failed.sender) != "ban"
        ):
            # Others may accept it (they may not know what made us soft fail
            # it), but a soft-failed event is never a forward extremity, so
            # it cannot be pulled: whether pushed or pulled to us, we pass it
            # on to our children in its tree. Not a banned user's: a ban is
            # meant to stick, and a banned server could otherwise have the
            # whole room carry any number of events forked from before it.
            self.sender.relay(soft_failed, received_from=None)
        if (
            event is not None
            and event.type == "m.room.member"
            and event.membership == "join"
            and event.state_key is not None
            and sender_server(event.state_key) == self.server_name
            and self.store.stripped_event_ids(update.room_id, limit=1)
            and self._nursery is not None
        ):
            # A user of ours joined: the history we hold stripped (we were
            # only invited) may now be served whole, also what was given up.
            self._spawn(functools.partial(self.sync.restore_stripped, afresh=True), update.room_id)
        elif (
            event is not None
            and event.redacted
            and not update.local
            and self.server_name in self.store.joined_servers(update.room_id)
            and self.engine.entitled_to_content(event.event_id)
        ):
            # Stripped, though by our state at it we may see it: the server
            # we fetched it from had not learnt of our join yet (found by the
            # outage scenario, where a message reached one node stripped for
            # good). Others serve it whole.
            self._spawn(self.sync.restore_stripped, update.room_id)

    async def _follow_peers(self, channel: trio.MemoryReceiveChannel[PeerEvent]) -> None:
        while True:
            async with channel:
                async for event in channel:
                    if event.connected:
                        self._peer_connected(event.server_name)
            # Closed: the network stopped (then we are being cancelled too), or
            # we fell behind; catch up with whoever is connected now.
            await trio.sleep(0.1)
            channel = self.network.subscribe_peer_events()
            for peer in self.network.connected_peers():
                self._peer_connected(peer)

    def _peer_connected(self, server_name: str) -> None:
        self.sender.peer_connected(server_name)
        self.sync.peer_connected(server_name)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # -- hooks ---------------------------------------------------------------------------------

    def on_edu(self, edu_type: str, handler: EduHandler) -> None:
        """Call ``handler(origin, content)`` for each received EDU of ``edu_type``."""
        self.server.edu_handlers[edu_type] = handler

    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> None:
        self.sender.send_edu(destination, edu_type, content)

    # -- membership the node initiates ----------------------------------------------------------

    async def invite(
        self, room_id: str, sender: str, target: str, *, reason: str | None = None
    ) -> str:
        """Invite ``target``: a local event, then the ``invite`` handshake with its server."""
        event_id = await self.engine.invite(room_id, sender, target, reason)
        server = sender_server(target)
        if server != self.server_name:
            self._spawn(self._send_invite, server, room_id, event_id, sender)
        return event_id

    async def _send_invite(self, server: str, room_id: str, event_id: str, inviter: str) -> None:
        event = self.store.load_event(event_id)
        if event is None:
            return
        try:
            await self.client.invite(
                server,
                room_id,
                event_id,
                room_version=event.room_version.identifier,
                pdu=event.get_pdu_json(),
                invite_room_state=stripped_state(self.store, room_id, inviter),
            )
        except FederationError as exc:
            # The outbound queue delivers it anyway, and relays may too.
            logger.info("invite handshake with %s failed: %s", server[:8], exc)
        else:
            self.knowledge.record(server, room_id, [event_id])

    async def join(
        self,
        room_id: str,
        user_id: str,
        *,
        via: Sequence[str] = (),
        content: Mapping[str, Any] | None = None,
    ) -> str:
        """Join ``user_id`` (ours) to a room; return the join's event ID.

        With the room's DAG here (e.g. after an invite), the join is a local
        event. Otherwise through the servers ``via``, in turn, with
        ``make_join``/``send_join``.
        """
        if has_dag(self.store, room_id):
            return await self.engine.join(room_id, user_id, content)

        async def join_through(server: str) -> str:
            return await self._remote_join(server, room_id, user_id, content)

        return await self._through_servers("join", room_id, user_id, via, join_through)

    async def _remote_join(
        self, server: str, room_id: str, user_id: str, content: Mapping[str, Any] | None
    ) -> str:
        event, version = await self._membership_event(server, room_id, user_id, "join", content)
        answer = await self.client.send_join(server, room_id, event.event_id, event.get_pdu_json())
        # The resident's answer holds the state before our join and its
        # auth chain: the engine checks them and places our join on them.
        result = await self.engine.accept_send_join(
            server,
            event.get_pdu_json(),
            answer["state"],
            answer["auth_chain"],
            room_version=version,
        )
        if not result.accepted:
            raise MatrixError(f"our join was not accepted here: {result.reason}")
        self.knowledge.record(server, room_id, [event.event_id])
        stored = self.store.load_event(event.event_id)
        if stored is not None:
            self.sender.relay(stored, received_from=None)
        return event.event_id

    async def knock(
        self,
        room_id: str,
        user_id: str,
        *,
        via: Sequence[str],
        content: Mapping[str, Any] | None = None,
    ) -> tuple[str, str, list[dict[str, Any]]]:
        """Knock on a room whose DAG we do not hold, through one of ``via``.

        ``make_knock`` / ``send_knock``; returns the knock's event ID, the
        server that took it, and the room's stripped state it answered
        (``knock_room_state``). The room's DAG is not fetched: a knocking
        server may not see it; an invite, if the room lets the user in,
        brings it.
        """

        async def knock_through(server: str) -> tuple[str, str, list[dict[str, Any]]]:
            event, _ = await self._membership_event(server, room_id, user_id, "knock", content)
            state = await self.client.send_knock(
                server, room_id, event.event_id, event.get_pdu_json()
            )
            return event.event_id, server, state

        return await self._through_servers("knock", room_id, user_id, via, knock_through)

    async def leave(self, room_id: str, user_id: str, *, via: Sequence[str] = ()) -> str:
        """Leave a room (or reject an invite, withdraw a knock).

        Locally when our DAG of the room holds the user in it (joined,
        invited, knocking); else -- we hold no DAG, or one from before the
        user left, which a knock through another server is newer than -- by
        handshake (``make_leave``/``send_leave``) through ``via``.
        """
        membership = self.store.current_membership(room_id, user_id)
        if has_dag(self.store, room_id) and membership not in (None, "leave"):
            return await self.engine.leave(room_id, user_id)

        async def leave_through(server: str) -> str:
            event, _ = await self._membership_event(server, room_id, user_id, "leave")
            await self.client.send_leave(server, room_id, event.event_id, event.get_pdu_json())
            return event.event_id

        return await self._through_servers("leave", room_id, user_id, via, leave_through)

    async def _membership_event(
        self,
        server: str,
        room_id: str,
        user_id: str,
        membership: str,
        content: Mapping[str, Any] | None = None,
    ) -> tuple[Event, RoomVersion]:
        """Our membership event from ``server``'s template (make_join, make_knock or
        make_leave): checked to be the one we asked for, filled in and signed."""
        template, version_id = await self.client.make_membership(
            server, membership, room_id, user_id
        )
        version = get_room_version(version_id)
        check_template(template, room_id=room_id, user_id=user_id, membership=membership)
        event = fill_template(
            template,
            version,
            self.engine.signing_key,
            server_name=self.server_name,
            content=content,
        )
        return event, version

    async def _through_servers(
        self,
        what: str,
        room_id: str,
        user_id: str,
        via: Sequence[str],
        attempt: Callable[[str], Awaitable[T]],
    ) -> T:
        """``attempt`` a membership handshake through each of ``via`` in turn, until one works.

        The last server's error is raised (its errcode kept) when none does.
        """
        servers = [s for s in dict.fromkeys(via) if s != self.server_name]
        if not servers:
            raise NotFound(f"room {room_id} is not known here; name a server in it ({what})")
        errors: list[Exception] = []
        for server in servers:
            try:
                result = await attempt(server)
                logger.info("%s: %s of %s through %s", user_id, what, room_id, server[:8])
                return result
            except (FederationError, MatrixError) as exc:
                logger.info("%s of %s through %s failed: %s", what, room_id, server[:8], exc)
                errors.append(exc)
        last = errors[-1]
        raise MatrixError(
            f"could not {what} {room_id} through {len(servers)} server(s): {last}",
            errcode=getattr(last, "errcode", None) or "M_UNKNOWN",
        )
