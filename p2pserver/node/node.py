"""A running node: storage, the room engine, libp2p and federation, wired together.

:class:`Node` is what ``p2pserver run`` starts. It needs no configuration:
the data directory holds the signing key (created on first start), the
database and the remembered p2p port.

Start-up, in order: the key and the database; the room engine and the
client API (answering clients within a fraction of a second, while libp2p,
slow to import, loads in a worker thread); the libp2p network (listening);
federation, attached to the engine and the client API; discovery (mDNS on
the LAN unless switched off, the DHT: room records follow our joins, and our
public rooms are listed in the shared directory) (request handler, the outbound queue's sender
resuming whatever was queued before a stop or crash, the pull loop); the
bootstrap peers, dialled now and re-dialled with backoff while not
connected; the peers snapshot (:mod:`.status`); the control socket if
asked for (:mod:`.control`, a test/dev tool). Then one log line says who
the node is and where it listens, in the form other nodes pass to
``--bootstrap``.

Bootstrap addresses are multiaddrs that end in ``/p2p/<PeerID>``: the
PeerID names the server (its ed25519 key), so the address is also the
identity we expect to meet there.

Stopping (SIGINT, SIGTERM, or cancelling :meth:`Node.run`) closes the
network and the database; nothing needs flushing, since every commit is
already durable, so SIGKILL loses nothing either.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import multiaddr
import trio

from p2pserver.clientapi.server import ClientApiHandle, serve_client_api
from p2pserver.e2ee import connect as connect_client_api
from p2pserver.engine.engine import RoomEngine
from p2pserver.federation import Federation, FederationConfig
from p2pserver.federation.client import FederationClient
from p2pserver.identity import (
    load_or_create_signing_key,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from p2pserver.node.config import ConfigError, NodeConfig
from p2pserver.node.control import ControlCommands, serve_control
from p2pserver.node.remote import NodeRemote
from p2pserver.node.status import write_status
from p2pserver.storage.store import Store
from p2pserver.transport.network import NetworkError, PeerEvent

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI
    from p2pserver.discovery import Discovery

logger = logging.getLogger(__name__)

# How often the node's public rooms are (re)published in the shared directory;
# records live an hour in the DHT, and summaries (member counts) go stale.
PUBLIC_ROOMS_INTERVAL = 300.0

STATUS_INTERVAL = 2.0
BOOTSTRAP_RETRY_INITIAL = 2.0
BOOTSTRAP_RETRY_MAX = 60.0


def release_freed_memory() -> None:
    """Return the memory freed during start-up to the OS (glibc's malloc_trim; elsewhere a no-op).

    Start-up imports ~850 modules (libp2p in a worker thread) and compiles
    and discards a lot on the way; glibc keeps such freed memory for reuse
    unless asked. Once, after start-up: ~1.2 MiB of idle RSS, and the heap
    grows again as needed.
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


def parse_bootstrap(address: str) -> tuple[str, str]:
    """``(server_name, address)`` for a ``.../p2p/<PeerID>`` multiaddr; ConfigError otherwise.

    Parsed without libp2p, so that reading the configuration stays fast.
    """
    try:
        maddr = multiaddr.Multiaddr(address)
        peer_id = str(maddr.value_for_protocol("p2p"))
    except Exception:
        raise ConfigError(
            f"bootstrap address {address!r} must be a multiaddr ending in /p2p/<PeerID>"
        ) from None
    public_key = public_key_from_peer_id(peer_id)
    if public_key is None:
        raise ConfigError(f"bootstrap address {address!r}: {peer_id} is not an ed25519 PeerID")
    return public_key.hex(), address


def listen_params(config: NodeConfig) -> tuple[list[str] | None, int | None]:
    """Listen IPs and port from ``config.listen`` (``/ip4/<ip>/tcp/<port>`` each) and ``p2p_port``."""
    ips: list[str] = []
    ports: set[int] = set()
    for address in config.listen:
        try:
            maddr = multiaddr.Multiaddr(address)
            names = [p.name for p in maddr.protocols()]
            if names != ["ip4", "tcp"]:
                raise ValueError
            ips.append(str(maddr.value_for_protocol("ip4")))
            ports.add(int(maddr.value_for_protocol("tcp")))
        except Exception:
            raise ConfigError(f"listen address {address!r} must be /ip4/<ip>/tcp/<port>") from None
    port = config.p2p_port
    if port is None and ports:
        if len(ports) > 1:
            raise ConfigError("all listen addresses must use the same port")
        port = ports.pop()
    return ips or None, port


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        control_socket: Path | None = None,
        federation_config: FederationConfig | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.control_socket = control_socket
        self.federation_config = federation_config or FederationConfig(
            fanout=config.fanout, sync_interval=config.sync_interval
        )
        self.listen_ips, self.port = listen_params(config)
        self.bootstrap = [parse_bootstrap(a) for a in config.bootstrap]
        self._federation: Federation | None = None
        self._client_api: ClientApiHandle | None = None
        self._discovery: Discovery | None = None
        self._bootstrap_wakeup = trio.Event()

    # -- what a running node offers ------------------------------------------------------------

    @property
    def federation(self) -> Federation:
        if self._federation is None:
            raise RuntimeError("the node is not running")
        return self._federation

    @property
    def engine(self) -> Any:
        return self.federation.engine

    @property
    def server_name(self) -> str:
        return self.federation.server_name

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(bytes.fromhex(self.server_name))

    def listen_addresses(self) -> list[str]:
        return [f"{a}/p2p/{self.peer_id}" for a in self.federation.network.listen_addresses()]

    def add_bootstrap(self, address: str) -> str:
        """Remember and dial a peer (ValueError for a bad address)."""
        try:
            server_name, address = parse_bootstrap(address)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self.federation.network.add_peer_address(server_name, [address])
        if (server_name, address) not in self.bootstrap:
            self.bootstrap.append((server_name, address))
        self._bootstrap_wakeup.set()
        return server_name

    def status(self) -> dict[str, Any]:
        federation = self.federation
        network = federation.network
        now = trio.current_time()
        queue = federation.store.outbound
        return {
            "server_name": self.server_name,
            "peer_id": self.peer_id,
            "pid": os.getpid(),
            "updated_at": time.time(),
            "listen_addresses": self.listen_addresses(),
            "control_socket": str(self.control_socket) if self.control_socket else None,
            "connected": sorted(network.connected_peers()),
            "known": sorted(network.known_peers()),
            "around": [p.to_json() for p in self._discovery.peers()] if self._discovery else [],
            "queued": {d: queue.pending(d) for d in queue.destinations()},
            "backing_off": {
                d: round(max(0.0, until - now), 1)
                for d, until in federation.sender.backing_off().items()
            },
        }

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key, created = load_or_create_signing_key(self.data_dir)
        if created:
            logger.info("created a new node identity in %s", self.data_dir)
        store = Store.open(self.config.database_path)
        try:
            # The engine first, with no peers yet, so the client API answers
            # while libp2p (1-2 s to import) loads in a worker thread.
            engine = RoomEngine(store, key)
            async with trio.open_nursery() as nursery:
                client_api = await nursery.start(
                    serve_client_api, engine, None, self.config
                )
                self._client_api = client_api
                logger.info("client API at %s for server %s", client_api.url, engine.server_name)
                libp2p_network = await trio.to_thread.run_sync(
                    importlib.import_module, "p2pserver.transport.libp2p_network"
                )
                discovery_module = await trio.to_thread.run_sync(
                    importlib.import_module, "p2pserver.discovery"
                )
                libp2p_network.configure_libp2p_logging()
                network = libp2p_network.Libp2pNetwork(
                    key, data_dir=self.data_dir, listen_ips=self.listen_ips, port=self.port
                )
                client = FederationClient(network)
                engine.peers = client
                federation = Federation(engine, network, client, self.federation_config)
                self._federation = federation
                discovery = discovery_module.Discovery(
                    network, key, discovery_module.DiscoveryConfig(mdns=self.config.mdns)
                )
                self._discovery = discovery
                client_api.api.remote = NodeRemote(federation, discovery)
                connect_client_api(client_api.api, federation)
                for server_name, address in self.bootstrap:
                    network.add_peer_address(server_name, [address])
                    discovery.note_bootstrap_peer(server_name, [address])
                async with network.running():
                    await nursery.start(federation.run)
                    await nursery.start(discovery.run)
                    stop_following_rooms = discovery.follow_rooms(engine)
                    nursery.start_soon(self._publish_public_rooms, client_api.api, discovery)
                    nursery.start_soon(self._keep_bootstrap_peers)
                    if self.control_socket is not None:
                        await nursery.start(
                            serve_control, self.control_socket, ControlCommands(self)
                        )
                    # Last: a snapshot with our pid means everything above is up.
                    nursery.start_soon(self._write_status, network.subscribe_peer_events())
                    logger.info(
                        "node %s ready; client API at %s; listening on %s",
                        self.server_name,
                        client_api.url,
                        " ".join(self.listen_addresses()),
                    )
                    release_freed_memory()
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        stop_following_rooms()
        finally:
            self._federation = None
            self._client_api = None
            self._discovery = None
            store.close()
            logger.info("node stopped")

    async def _publish_public_rooms(self, api: ClientAPI, discovery: Discovery) -> None:
        """List our public rooms in the shared directory (the DHT), and withdraw the rest."""
        from p2pserver.clientapi.directory import public_room_chunk

        published: set[str] = set()
        while True:
            public = {r for r in api.accounts.public_room_ids() if api.store.room(r)}
            for room_id in sorted(public):
                summary = public_room_chunk(api, room_id)
                del summary["room_id"]
                await discovery.publish_public_room(room_id, summary)
            for room_id in sorted(published - public):
                await discovery.unpublish_public_room(room_id)
            published = public
            await trio.sleep(PUBLIC_ROOMS_INTERVAL)

    async def _keep_bootstrap_peers(self) -> None:
        """Dial bootstrap peers we are not connected to, backing off while they are away."""
        delay = BOOTSTRAP_RETRY_INITIAL
        while True:
            network = self.federation.network
            missing = [n for n, _ in self.bootstrap if n not in network.connected_peers()]
            if missing:
                async with trio.open_nursery() as nursery:
                    for server_name in missing:
                        nursery.start_soon(self._dial, server_name)
            self._bootstrap_wakeup = trio.Event()
            with trio.move_on_after(delay):
                await self._bootstrap_wakeup.wait()
                delay = BOOTSTRAP_RETRY_INITIAL
                continue
            delay = min(delay * 2, BOOTSTRAP_RETRY_MAX) if missing else BOOTSTRAP_RETRY_INITIAL

    async def _dial(self, server_name: str) -> None:
        try:
            await self.federation.network.connect(server_name, timeout=10)
        except NetworkError as exc:
            logger.info("bootstrap peer %s not reachable: %s", server_name[:8], exc)

    async def _write_status(self, events: trio.MemoryReceiveChannel[PeerEvent]) -> None:
        """Rewrite the peers snapshot every STATUS_INTERVAL and at each peer change."""
        while True:
            try:
                write_status(self.data_dir, self.status())
            except OSError as exc:
                logger.warning("cannot write the peers snapshot: %s", exc)
            with trio.move_on_after(STATUS_INTERVAL):
                try:
                    await events.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    events = self.federation.network.subscribe_peer_events()


def node_from_options(
    data_dir: Path,
    *,
    config_file: Path | None = None,
    p2p_port: int | None = None,
    bootstrap: Sequence[str] = (),
    listen: Sequence[str] = (),
    client_listen: str | None = None,
    allow_remote_clients: bool | None = None,
    mdns: bool | None = None,
    control_socket: Path | None = None,
) -> Node:
    """The node ``p2pserver run`` starts (ConfigError for bad settings)."""
    from p2pserver.node.config import load_config

    config = load_config(
        data_dir,
        config_file,
        p2p_port=p2p_port,
        bootstrap=list(bootstrap),
        listen=list(listen),
        client_listen=client_listen,
        allow_remote_clients=allow_remote_clients,
        mdns=mdns,
    )
    return Node(config, control_socket=control_socket)
