"""The libp2p `Network`: TCP + Noise + Yamux with py-libp2p 0.8.1.

Identity. The libp2p identity is the node's ed25519 signing key, so the
PeerID is derived from the server name and back: a peer's server name is the
lowercase hex of the ed25519 public key inside the PeerID that the Noise
handshake authenticated. Handlers receive that name as ``origin``; peers
with any other key type are disconnected.

Wire protocol ``/p2pserver/federation/1``. The dialler opens one stream per
peer and reuses it for all its requests: request frames carry ids and
responses may come back in any order (frames: :mod:`~p2pserver.transport.framing`).
A reused stream answers in ~1.6 ms where a stream per request costs 6-9 ms of
multistream negotiation (measured in shared/notes/py-libp2p.md and
benchmarks/transport.py), and the end-to-end target is p50 <= 15 ms. The
price is that one broken stream fails every request in flight on it with
PeerUnreachable; the next request opens a new stream. A request cancelled
while its frame is half written poisons the stream the same way.

Connections. Made on demand, one per peer (``max_connections_per_peer=1``,
which also avoids libp2p's fixed 250 ms dial delay); known addresses are
tried in order, each ``dial_stagger`` seconds after the previous one unless
it failed sooner, and the first to succeed wins. At most ``max_connections``
stay open: when over, the least recently used peer with nothing in flight in
either direction is disconnected, and connections idle longer than
``idle_timeout`` are closed. libp2p's own auto-dialler is stopped (it would
dial every peer in the peerstore) and its pruner never reaches its high
watermark.

Defence. Every stream handler is wrapped: no exception reaches libp2p (an
exception there kills the host). Inbound requests pass a per-peer token
bucket and a per-peer cap on requests in flight; beyond either the peer gets
M_LIMIT_EXCEEDED at once, so reading never pauses (Yamux resets a stream
whose reader stalls for 5 s). Protocol violations -- a malformed or oversized
frame, a frame stalled half way for ``stall_timeout``, too many streams --
reset the stream and earn a strike; ``strikes_to_ban`` strikes within
``strike_window`` ban the peer (disconnected, refused both ways) for
``ban_duration``. Handlers get ``handler_timeout`` to answer.

Addresses. By default the node listens on the concrete IPv4 address of
every interface (libp2p must not listen on 0.0.0.0 for mDNS to advertise
usable addresses) on one port, chosen once and remembered in
``<data_dir>/libp2p-port``. libp2p binds with SO_REUSEPORT, which would let
a second process share a taken port (and half its connections), so the
port is probed first; a remembered port that is taken is replaced. An
address that appears later (the device joins a network after start) is
listened on too, within ``interface_interval`` seconds, on the same port:
two devices switched on before their ad-hoc network came up still reach
each other. (A listener on an address that went away stays; discovery
advertises only addresses still on an interface.) QUIC stays off (flaky
reconnects with one connection per peer).

Lifecycle. ``async with net.running():`` starts the host and a nursery that
owns every task this module starts; on exit, requests in flight fail with
PeerUnreachable, tasks are cancelled and ``host.close()`` runs (leaving
``host.run()`` alone leaks the listener). libp2p's logging is demoted to
DEBUG under ``p2pserver.transport.libp2p.lib`` (see
:func:`configure_libp2p_logging`).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ifaddr
import multiaddr
import trio

# Before any libp2p import: importing libp2p_slim makes libp2p load only the
# modules we use (see its docstring).
from p2pserver.transport import libp2p_slim  # noqa: F401

# isort: split

from libp2p.abc import IHost, INetConn, INetStream, INotifee, ITransport
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TMuxerOptions, TProtocol, TSecurityOptions
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore
from libp2p.rcmgr.manager import new_resource_manager
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.manager import TransportManager
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader

from p2pserver.identity import peer_id_from_public_key
from p2pserver.rooms.signing import SigningKey, server_name_verify_key
from p2pserver.transport.framing import (
    HEADER_SIZE,
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    FrameError,
    FrameReader,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
)
from p2pserver.transport.network import (
    DEFAULT_TIMEOUT,
    Network,
    PeerUnreachable,
    PendingRequest,
    RequestTimeout,
    check_timeout,
    error_frame,
    response_result,
)
from p2pserver.transport.ratelimit import Penalties, TokenBucket

logger = logging.getLogger(__name__)

PROTOCOL_ID = TProtocol("/p2pserver/federation/1")
PORT_FILE_NAME = "libp2p-port"
READ_SIZE = 65536
MAX_ADDRS_PER_PEER = 16


@dataclass(frozen=True)
class Libp2pConfig:
    """Limits and timeouts; the defaults suit a phone with hundreds of known peers."""

    max_connections: int = 64
    idle_timeout: float = 300.0
    dial_timeout: float = 10.0
    dial_stagger: float = 0.25
    # a sequential caller peaks near 600 requests/s; the cap is for floods
    requests_per_second: float = 200.0
    request_burst: int = 1000
    max_inflight_per_peer: int = 32
    max_inbound_streams_per_peer: int = 4
    handler_timeout: float = 120.0
    stall_timeout: float = 10.0
    strikes_to_ban: int = 3
    strike_window: float = 600.0
    ban_duration: float = 300.0
    maintenance_interval: float = 30.0
    # How often the machine's interfaces are checked for new addresses.
    interface_interval: float = 5.0
    shutdown_timeout: float = 10.0


# --- identity -------------------------------------------------------------------


def keypair_from_signing_key(signing_key: SigningKey) -> KeyPair:
    private = Ed25519PrivateKey(signing_key.key)
    return KeyPair(private, private.get_public_key())


def peer_id_for_server_name(server_name: str) -> ID:
    """The PeerID a server name stands for; ValueError if it is not 64 lowercase hex digits."""
    if server_name_verify_key(server_name) is None:
        raise ValueError(f"not a server name (64 lowercase hex digits): {server_name!r}")
    return ID.from_base58(peer_id_from_public_key(bytes.fromhex(server_name)))


def server_name_for_peer_id(peer_id: ID) -> str | None:
    """Lowercase hex of the ed25519 key inside ``peer_id``; None for other key types."""
    try:
        key = peer_id.extract_public_key()
    except Exception:
        return None
    if key is None or key.get_type() != KeyType.Ed25519:
        return None
    raw = key.to_bytes()
    return raw.hex() if len(raw) == 32 else None


def new_host(
    key_pair: KeyPair,
    *,
    sec_opt: TSecurityOptions,
    muxer_opt: TMuxerOptions,
    connection_config: ConnectionConfig,
    transports: Sequence[ITransport] | None = None,
) -> IHost:
    """What ``libp2p.new_host`` builds for these arguments (TCP unless ``transports``).

    The steps of py-libp2p 0.8.1's ``new_host``/``new_swarm`` with no QUIC,
    mDNS, UPnP, AutoTLS, metrics or bootstrap: a peerstore holding our key
    pair, an upgrader with the given security and muxer options, a swarm,
    the default resource manager and a BasicHost. (``libp2p.new_host`` lives
    in the package initialiser that libp2p_slim skips;
    tests/transport/test_libp2p_slim.py checks both build the same host.)
    """
    peer_id = ID.from_pubkey(key_pair.public_key)
    peerstore = PeerStore()
    peerstore.add_key_pair(peer_id, key_pair)
    upgrader = TransportUpgrader(
        secure_transports_by_protocol=sec_opt, muxer_transports_by_protocol=muxer_opt
    )
    swarm = Swarm(
        peer_id,
        peerstore,
        upgrader,
        transports=list(transports) if transports is not None else [TCP()],
        connection_config=connection_config,
        transport_manager=TransportManager(port_demuxers={}),
    )
    resource_manager = new_resource_manager()
    swarm.set_resource_manager(resource_manager)
    return BasicHost(network=swarm, resource_manager=resource_manager)


# --- addresses --------------------------------------------------------------------


def interface_ipv4_addresses() -> list[str]:
    """Every interface's concrete IPv4 address, loopback included."""
    ips: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and ip.ip not in ips:
                ips.append(ip.ip)
    return ips


def port_is_free(ip: str, port: int) -> bool:
    """Whether nothing listens on ``ip:port`` (bind without SO_REUSEPORT, as a probe)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def read_port_file(data_dir: Path) -> int | None:
    try:
        text = (data_dir / PORT_FILE_NAME).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    logger.warning("ignoring malformed %s", data_dir / PORT_FILE_NAME)
    return None


def write_port_file(data_dir: Path, port: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / PORT_FILE_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    os.replace(tmp, path)


def _normalise_address(server_name: str, addr: str) -> str:
    """A dialable ``/ip4|ip6/.../tcp/N`` multiaddr string without ``/p2p``; ValueError otherwise."""
    try:
        maddr = multiaddr.Multiaddr(addr)
    except Exception as e:
        raise ValueError(f"bad multiaddr {addr!r}: {e}") from None
    names = [p.name for p in maddr.protocols()]
    if "p2p" in names:
        claimed = maddr.value_for_protocol("p2p")
        if str(claimed) != str(peer_id_for_server_name(server_name)):
            raise ValueError(f"{addr} names another peer than {server_name}")
        maddr = maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{claimed}"))
        names = [p.name for p in maddr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ValueError(f"only /ip4|ip6/<ip>/tcp/<port> addresses are dialable: {addr}")
    return str(maddr)


# --- logging ----------------------------------------------------------------------

_LIB_LOGGER = "p2pserver.transport.libp2p.lib"
_logging_configured = False


class _DemoteToDebug(logging.Handler):
    """Re-log library records at DEBUG under our name."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(_LIB_LOGGER)
        if target.isEnabledFor(logging.DEBUG):
            target.debug("%s: %s", record.name, record.getMessage())


class _DemoteLibp2pRootRecords(logging.Filter):
    """Some libp2p modules log through the root logger; demote those records."""

    def __init__(self) -> None:
        super().__init__()
        import libp2p

        self._prefix = os.path.dirname(libp2p.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.startswith(self._prefix):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.name = _LIB_LOGGER
            return logging.getLogger(_LIB_LOGGER).isEnabledFor(logging.DEBUG)
        return True


def configure_libp2p_logging() -> None:
    """Keep libp2p from drowning the node's own logs (idempotent).

    Its records stop at the ``libp2p`` logger (WARNING and above are kept,
    demoted to DEBUG under ``p2pserver.transport.libp2p.lib``), and records it
    sends through the root logger are demoted the same way.
    """
    global _logging_configured
    if _logging_configured:
        return
    _logging_configured = True
    lib = logging.getLogger("libp2p")
    lib.setLevel(logging.WARNING)
    lib.propagate = False
    lib.addHandler(_DemoteToDebug())
    logging.getLogger().addFilter(_DemoteLibp2pRootRecords())


# --- per-peer state ---------------------------------------------------------------------


class _Outbound:
    """Our request stream to one peer, with the requests waiting on it."""

    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self.pending: dict[int, PendingRequest[Response]] = {}
        self.write_lock = trio.Lock()
        self.broken: str | None = None  # why, once it can no longer be used

    def fail_all(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        for pending in self.pending.values():
            pending.fail(PeerUnreachable(reason))


class _Peer:
    def __init__(self, name: str, peer_id: ID, config: Libp2pConfig, now: float) -> None:
        self.name = name
        self.peer_id = peer_id
        self.addrs: list[str] = []
        self.connections = 0
        self.closing = False
        self.seen = False  # has been connected since we last forgot it
        self.last_active = now
        self.inflight_in = 0
        self.inflight_out = 0
        self.inbound_streams = 0
        self.outbound: _Outbound | None = None
        self.open_lock = trio.Lock()
        self.bucket = TokenBucket(config.requests_per_second, config.request_burst, now)
        self.penalties = Penalties(config.strikes_to_ban, config.strike_window, config.ban_duration)

    @property
    def busy(self) -> bool:
        return bool(self.inflight_in or self.inflight_out or self.open_lock.locked())


def _now() -> float:
    """trio's clock; 0 outside trio (add_peer_address may be called before running)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


class _StreamBroken(Exception):
    pass


async def _read_some(stream: INetStream) -> bytes:
    """Next chunk from ``stream``; b"" at EOF (libp2p raises StreamEOF there)."""
    try:
        return await stream.read(READ_SIZE)
    except StreamEOF:
        return b""
    except Exception as e:
        raise _StreamBroken(f"{type(e).__name__}: {e}") from None


async def _reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2), suppress(Exception):
        await stream.reset()


async def _close_host(host: IHost) -> None:
    """Close every connection at once (each close sleeps 0.1 s inside libp2p), then the host."""
    swarm: Any = host.get_network()
    async with trio.open_nursery() as nursery:
        for conns in list(swarm.connections.values()):
            for conn in list(conns):
                nursery.start_soon(_close_quietly, conn)
    await host.close()


async def _close_quietly(conn: INetConn) -> None:
    with suppress(Exception):
        await conn.close()


class _Notifee(INotifee):
    """Feeds libp2p connection events to the Libp2pNetwork (must never block)."""

    def __init__(self, network: Libp2pNetwork) -> None:
        self._network = network

    async def connected(self, network: Any, conn: INetConn) -> None:
        self._network._on_connection(conn.muxed_conn.peer_id, +1)

    async def disconnected(self, network: Any, conn: INetConn) -> None:
        self._network._on_connection(conn.muxed_conn.peer_id, -1)

    async def opened_stream(self, network: Any, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: Any, stream: INetStream) -> None:
        pass

    async def listen(self, network: Any, maddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: Any, maddr: multiaddr.Multiaddr) -> None:
        pass


# --- the network ----------------------------------------------------------------------


class Libp2pNetwork(Network):
    """A node on libp2p. See the module docstring.

    ``listen_ips``: IPv4 addresses to listen on (default: every interface's).
    ``port``: TCP port (0: any); default: the one remembered in ``data_dir``
    (chosen on first start), or any when there is no ``data_dir``.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        *,
        data_dir: Path | None = None,
        listen_ips: Sequence[str] | None = None,
        port: int | None = None,
        config: Libp2pConfig | None = None,
    ) -> None:
        super().__init__(signing_key.server_name)
        configure_libp2p_logging()
        self.config = config or Libp2pConfig()
        self._signing_key = signing_key
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._listen_ips = list(listen_ips) if listen_ips is not None else None
        self._port = port
        self._peers: dict[str, _Peer] = {}
        self._ids = itertools.count(1)
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._inbound_scopes: set[trio.CancelScope] = set()
        self._listen_addrs: list[str] = []

    # --- lifecycle ------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self._host is not None:
            raise RuntimeError("this network is already running")
        keypair = keypair_from_signing_key(self._signing_key)
        host = new_host(
            keypair,
            sec_opt={
                NOISE_ID: NoiseTransport(keypair, noise_privkey=new_x25519_key_pair().private_key)
            },
            muxer_opt=cast(Any, {YAMUX_ID: Yamux}),
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                # libp2p's pruner starts above high_watermark: keep it out of our way
                max_connections=max(300, 2 * self.config.max_connections),
                high_watermark=max(300, 2 * self.config.max_connections),
                dial_timeout=self.config.dial_timeout,
            ),
        )
        host.get_network().retry_config = RetryConfig(max_retries=0)  # type: ignore[attr-defined]
        host.set_stream_handler(PROTOCOL_ID, self._on_stream)
        host.get_network().register_notifee(_Notifee(self))
        self._host = host
        try:
            async with host.run(listen_addrs=[]):
                try:
                    # It dials every peer in the peerstore to reach its low watermark.
                    await host.get_network().auto_connector.stop()  # type: ignore[attr-defined]
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        try:
                            await self._listen(host)
                            nursery.start_soon(self._maintenance)
                            if self._listen_ips is None:
                                nursery.start_soon(self._follow_interfaces, host)
                            logger.info(
                                "%s: listening on %s", self.server_name[:8], self._listen_addrs
                            )
                            yield
                        finally:
                            self._stop_local_work("network stopped")
                            nursery.cancel_scope.cancel()
                finally:
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(self.config.shutdown_timeout),
                    ):
                        await _close_host(host)
        finally:
            self._host = None
            self._nursery = None
            self._listen_addrs = []
            for peer in self._peers.values():
                peer.connections = 0
                peer.outbound = None
            self._connected.clear()
            self._close_subscribers()
            logger.info("%s: stopped", self.server_name[:8])

    def _stop_local_work(self, reason: str) -> None:
        for peer in self._peers.values():
            if peer.outbound is not None:
                peer.outbound.fail_all(reason)
        for scope in self._inbound_scopes:
            scope.cancel()

    async def _listen(self, host: IHost) -> None:
        ips = self._listen_ips if self._listen_ips is not None else interface_ipv4_addresses()
        if not ips:
            raise OSError("no IPv4 address to listen on")
        port = self._port
        remembered = port is None and self._data_dir is not None
        if port is None:
            port = (read_port_file(self._data_dir) if self._data_dir is not None else None) or 0
        # libp2p listens with SO_REUSEPORT, so a second listener on a taken port
        # would silently share its connections: probe first.
        taken = [ip for ip in ips if port and not port_is_free(ip, port)]
        if taken and remembered:
            logger.warning("remembered port %d is taken; choosing a new one", port)
            port = 0
        elif taken:
            raise OSError(f"port {port} is already in use on {taken}")
        swarm = host.get_network()
        bound = await self._listen_on(swarm, ips, port)
        if not bound:
            raise OSError(f"could not listen on any of {ips} (port {port})")
        self._listen_addrs = [str(a) for a in host.get_transport_addrs()]
        actual = int(multiaddr.Multiaddr(self._listen_addrs[0]).value_for_protocol("tcp"))
        if remembered and self._data_dir is not None and actual != read_port_file(self._data_dir):
            write_port_file(self._data_dir, actual)

    async def _follow_interfaces(self, host: IHost) -> None:
        """Listen on interface addresses that appear after start (see the module docstring)."""
        while True:
            await trio.sleep(self.config.interface_interval)
            listened = {
                multiaddr.Multiaddr(a).value_for_protocol("ip4") for a in self._listen_addrs
            }
            new = [ip for ip in interface_ipv4_addresses() if ip not in listened]
            if not new or not self._listen_addrs:
                continue
            port = int(multiaddr.Multiaddr(self._listen_addrs[0]).value_for_protocol("tcp"))
            free = [ip for ip in new if port_is_free(ip, port)]
            if free and await self._listen_on(host.get_network(), free, port):
                self._listen_addrs = [str(a) for a in host.get_transport_addrs()]
                logger.info("%s: now also listening on %s", self.server_name[:8], free)

    async def _listen_on(self, swarm: Any, ips: list[str], port: int) -> bool:
        """Listen on every IP with one port (the first IP picks it when ``port`` is 0)."""
        assert self._host is not None
        bound = False
        for ip in ips:
            if bound and not port_is_free(ip, port):
                logger.warning("port %d is taken on %s; not listening there", port, ip)
                continue
            if await swarm.listen(multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{port}")):
                if not bound and port == 0:
                    port = int(self._host.get_transport_addrs()[-1].value_for_protocol("tcp"))
                bound = True
            else:
                logger.warning("cannot listen on %s port %d", ip, port)
        return bound

    # --- the interface ------------------------------------------------------------------

    def listen_addresses(self) -> list[str]:
        return list(self._listen_addrs)

    @property
    def host(self) -> IHost | None:
        """The libp2p host while running (None otherwise), for services that
        share it, such as the DHT (p2pserver.dht). They must wrap their
        stream handlers the way this module does."""
        return self._host

    def add_peer_address(self, server_name: str, addrs: Iterable[str]) -> None:
        if server_name == self.server_name:
            return
        normalised = [_normalise_address(server_name, a) for a in addrs]
        peer = self._peer(server_name)
        for addr in reversed(normalised):  # newest first, keep the given order
            if addr in peer.addrs:
                peer.addrs.remove(addr)
            peer.addrs.insert(0, addr)
        del peer.addrs[MAX_ADDRS_PER_PEER:]

    def known_peers(self) -> set[str]:
        return {name for name, p in self._peers.items() if p.addrs or p.seen}

    async def connect(self, destination: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        check_timeout(timeout)
        self._check_destination(destination)
        peer = self._peer(destination)
        self._require_running()
        with trio.move_on_after(timeout):
            async with peer.open_lock:
                await self._ensure_connection(peer)
            return
        raise RequestTimeout(f"connecting to {destination[:8]} timed out after {timeout}s")

    async def request(
        self,
        destination: str,
        method: str,
        body: dict[str, Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        check_timeout(timeout)
        self._check_destination(destination)
        peer = self._peer(destination)
        request_id = next(self._ids)
        frame = encode_request(Request(request_id, method, body))
        self._require_running()
        with trio.move_on_after(timeout):
            out = await self._outbound(peer)
            return await self._call(peer, out, request_id, method, frame)
        raise RequestTimeout(f"{method} to {destination[:8]} timed out after {timeout}s")

    # --- outbound -----------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._host is None or self._nursery is None:
            raise RuntimeError("the network is not running")

    def _peer(self, server_name: str) -> _Peer:
        peer = self._peers.get(server_name)
        if peer is None:
            peer_id = peer_id_for_server_name(server_name)
            peer = _Peer(server_name, peer_id, self.config, _now())
            self._peers[server_name] = peer
        return peer

    async def _outbound(self, peer: _Peer) -> _Outbound:
        out = peer.outbound
        if out is not None and out.broken is None:
            return out
        async with peer.open_lock:
            out = peer.outbound
            if out is not None and out.broken is None:
                return out
            await self._ensure_connection(peer)
            assert self._host is not None and self._nursery is not None
            try:
                stream = await self._host.new_stream(peer.peer_id, [PROTOCOL_ID])
            except Exception as e:
                raise PeerUnreachable(f"cannot open a stream to {peer.name[:8]}: {e}") from None
            out = peer.outbound = _Outbound(stream)
            self._nursery.start_soon(self._read_responses, peer, out)
            return out

    async def _call(
        self, peer: _Peer, out: _Outbound, request_id: int, method: str, frame: bytes
    ) -> dict[str, Any]:
        pending = out.pending[request_id] = PendingRequest[Response]()
        peer.inflight_out += 1
        peer.last_active = trio.current_time()
        try:
            async with out.write_lock:
                if out.broken is not None:
                    raise PeerUnreachable(out.broken)
                writing = True
                try:
                    await out.stream.write(frame)
                    writing = False
                finally:
                    if writing:  # failed or cancelled half way: the stream is unusable
                        out.fail_all(f"stream to {peer.name[:8]} broke while writing")
                        await _reset_quietly(out.stream)
            self.traffic.count_sent(len(frame), method)
            await pending.done.wait()
        except PeerUnreachable:
            raise
        except Exception as e:  # the stream's write failed
            raise PeerUnreachable(f"stream to {peer.name[:8]} failed: {e}") from None
        finally:
            out.pending.pop(request_id, None)
            peer.inflight_out -= 1
            peer.last_active = trio.current_time()
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return response_result(pending.response)

    async def _read_responses(self, peer: _Peer, out: _Outbound) -> None:
        """Deliver responses from ``out`` to their waiting requests until the stream ends."""
        reader = FrameReader(MAX_RESPONSE_FRAME)
        reason = "stream closed by peer"
        try:
            while True:
                data = await self._read_chunk(out.stream, reader)
                if not data:
                    break
                reader.feed(data)
                while (payload := reader.next_payload()) is not None:
                    response = decode_response(payload)
                    self.traffic.count_received(len(payload) + HEADER_SIZE)
                    pending = out.pending.get(response.id)
                    if pending is not None:  # else: its caller gave up already
                        pending.resolve(response)
        except FrameError as e:
            reason = f"{peer.name[:8]} sent a bad response: {e}"
            self._strike(peer, reason)
        except _StreamBroken as e:
            reason = f"stream to {peer.name[:8]} broke: {e}"
        finally:
            out.fail_all(reason)
            if peer.outbound is out:
                peer.outbound = None
            await _reset_quietly(out.stream)

    async def _read_chunk(self, stream: INetStream, reader: FrameReader) -> bytes:
        """Read on; a frame left half-received for stall_timeout is a violation."""
        if not reader.partial:
            return await _read_some(stream)
        with trio.move_on_after(self.config.stall_timeout):
            return await _read_some(stream)
        raise FrameError(f"frame stalled for {self.config.stall_timeout}s")

    async def _ensure_connection(self, peer: _Peer) -> None:
        """Dial ``peer`` unless connected. Call with ``peer.open_lock`` held."""
        assert self._host is not None
        if peer.penalties.is_banned(trio.current_time()):
            raise PeerUnreachable(f"{peer.name[:8]} is banned for protocol violations")
        swarm: Any = self._host.get_network()
        if swarm.get_connections(peer.peer_id):
            return
        addrs = self._dial_addresses(peer)
        if not addrs:
            raise PeerUnreachable(f"no known address for {peer.name[:8]}")
        self._schedule_pruning(exclude=peer.name, extra=1)
        winner: list[str] = []
        errors: list[str] = []

        async def attempt(addr: str, failed: trio.Event, nursery: trio.Nursery) -> None:
            try:
                await swarm.dial_addr(multiaddr.Multiaddr(addr), peer.peer_id)
            except Exception as e:
                cause = e.__cause__ or e
                errors.append(f"{addr}: {type(cause).__name__}: {cause}")
                failed.set()
                return
            winner.append(addr)
            nursery.cancel_scope.cancel()

        with trio.move_on_after(self.config.dial_timeout):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    failed = trio.Event()
                    nursery.start_soon(attempt, addr, failed, nursery)
                    with trio.move_on_after(self.config.dial_stagger):
                        await failed.wait()
        if not winner:
            detail = "; ".join(errors) if errors else "timed out"
            raise PeerUnreachable(f"cannot connect to {peer.name[:8]}: {detail}")
        if peer.addrs and winner[0] in peer.addrs:  # try the working address first next time
            peer.addrs.remove(winner[0])
            peer.addrs.insert(0, winner[0])

    def _dial_addresses(self, peer: _Peer) -> list[str]:
        addrs = list(peer.addrs)
        assert self._host is not None
        try:  # addresses learnt by libp2p's identify, e.g. from a peer that dialled us
            learnt = self._host.get_peerstore().addrs(peer.peer_id)
        except Exception:
            learnt = []
        for maddr in learnt:
            try:
                addr = _normalise_address(peer.name, str(maddr))
            except ValueError:
                continue
            if addr not in addrs:
                addrs.append(addr)
        return addrs

    # --- inbound ------------------------------------------------------------------------

    async def _on_stream(self, stream: INetStream) -> None:
        """libp2p's stream handler: never lets an exception through."""
        try:
            origin = server_name_for_peer_id(stream.muxed_conn.peer_id)
            if origin is None:
                logger.info("refusing a stream from a non-ed25519 peer")
                await _reset_quietly(stream)
                return
            await self._serve_stream(self._peer(origin), stream)
        except Exception:
            logger.exception("unexpected error serving a stream")
            await _reset_quietly(stream)

    async def _serve_stream(self, peer: _Peer, stream: INetStream) -> None:
        now = trio.current_time()
        if peer.penalties.is_banned(now) or self._nursery is None:
            await _reset_quietly(stream)
            return
        if peer.inbound_streams >= self.config.max_inbound_streams_per_peer:
            self._strike(peer, "too many streams")
            await _reset_quietly(stream)
            return
        peer.inbound_streams += 1
        scope = trio.CancelScope()  # cancelled by running() on shutdown
        self._inbound_scopes.add(scope)
        outcome = "cancelled"
        try:
            with scope:
                outcome = await self._serve_requests(peer, stream)
        finally:
            self._inbound_scopes.discard(scope)
            peer.inbound_streams -= 1
        if outcome == "eof":  # the handlers have answered; close our side too
            with trio.move_on_after(self.config.stall_timeout), suppress(Exception):
                await stream.close()
                return
        elif outcome not in ("cancelled", "broken"):
            self._strike(peer, outcome)
        await _reset_quietly(stream)

    async def _serve_requests(self, peer: _Peer, stream: INetStream) -> str:
        """Serve one stream's requests: "eof" once the peer is done and every
        request answered, "broken", or the protocol violation that stopped it."""
        write_lock = trio.Lock()
        outcome = "eof"
        async with trio.open_nursery() as handlers:
            try:
                await self._read_requests(peer, stream, handlers, write_lock)
            except FrameError as e:
                outcome = str(e) or "malformed frame"
                handlers.cancel_scope.cancel()
            except _StreamBroken:
                outcome = "broken"
                handlers.cancel_scope.cancel()
        return outcome

    async def _read_requests(
        self, peer: _Peer, stream: INetStream, handlers: trio.Nursery, write_lock: trio.Lock
    ) -> None:
        reader = FrameReader(MAX_REQUEST_FRAME)
        while True:
            data = await self._read_chunk(stream, reader)
            if not data:
                if reader.partial:
                    raise FrameError("stream ended inside a frame")
                return
            reader.feed(data)
            while (payload := reader.next_payload()) is not None:
                request = decode_request(payload)
                self.traffic.count_received(len(payload) + HEADER_SIZE)
                now = trio.current_time()
                peer.last_active = now
                wait = peer.bucket.take(now)
                if wait > 0:
                    refusal = error_frame(
                        request.id, "M_LIMIT_EXCEEDED", "too many requests", int(wait * 1000) + 1
                    )
                    await self._write(stream, write_lock, refusal, request.method)
                elif peer.inflight_in >= self.config.max_inflight_per_peer:
                    refusal = error_frame(
                        request.id, "M_LIMIT_EXCEEDED", "too many requests in flight", 100
                    )
                    await self._write(stream, write_lock, refusal, request.method)
                else:
                    peer.inflight_in += 1
                    handlers.start_soon(self._answer, peer, stream, write_lock, request)

    async def _answer(
        self, peer: _Peer, stream: INetStream, write_lock: trio.Lock, request: Request
    ) -> None:
        """Run one request's handler and write its response (inflight_in already counted)."""
        try:
            frame: bytes | None = None
            with trio.move_on_after(self.config.handler_timeout):
                frame = await self._serve_request(peer.name, request)
            if frame is None:
                logger.warning("handler for %s from %s timed out", request.method, peer.name[:8])
                frame = error_frame(request.id, "M_UNKNOWN", "handler timed out")
            await self._write(stream, write_lock, frame, request.method)
        except _StreamBroken as e:
            logger.debug("cannot answer %s from %s: %s", request.method, peer.name[:8], e)
        finally:
            peer.inflight_in -= 1
            peer.last_active = trio.current_time()

    async def _write(
        self, stream: INetStream, write_lock: trio.Lock, frame: bytes, method: str
    ) -> None:
        async with write_lock:
            try:
                await stream.write(frame)
            except Exception as e:
                raise _StreamBroken(f"{type(e).__name__}: {e}") from None
        self.traffic.count_sent(len(frame), method)

    # --- connections, pruning and penalties ------------------------------------------------

    def _on_connection(self, peer_id: ID, delta: int) -> None:
        """A libp2p connection to ``peer_id`` opened (+1) or closed (-1)."""
        if self._host is None:
            return
        name = server_name_for_peer_id(peer_id)
        if name is None:
            if delta > 0:
                logger.info("disconnecting %s: not an ed25519 identity", peer_id)
                self._spawn(self._disconnect_peer_id, peer_id)
            return
        if name == self.server_name:
            return
        peer = self._peer(name)
        peer.connections = max(0, peer.connections + delta)
        peer.seen = True
        peer.last_active = trio.current_time()
        if peer.connections == 0:
            peer.closing = False
            if peer.outbound is not None:
                peer.outbound.fail_all(f"connection to {name[:8]} closed")
        if delta > 0 and peer.penalties.is_banned(trio.current_time()):
            self._spawn(self._close_peer, peer, "banned")
            return
        self._set_connected(name, peer.connections > 0)
        if delta > 0:
            self._schedule_pruning(exclude=name)

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _disconnect_peer_id(self, peer_id: ID) -> None:
        assert self._host is not None
        try:
            await self._host.disconnect(peer_id)
        except Exception as e:
            logger.debug("disconnecting %s failed: %s", peer_id, e)

    async def _close_peer(self, peer: _Peer, why: str) -> None:
        if peer.closing or self._host is None:
            return
        peer.closing = True
        logger.info("%s: closing connection to %s (%s)", self.server_name[:8], peer.name[:8], why)
        try:
            await self._host.disconnect(peer.peer_id)
        except Exception as e:
            logger.debug("disconnecting %s failed: %s", peer.name[:8], e)
        finally:
            if peer.connections > 0:  # still open (e.g. the close failed): may retry later
                peer.closing = False

    def _schedule_pruning(self, *, exclude: str, extra: int = 0) -> None:
        """Close least-recently-used idle connections while over max_connections.

        ``extra`` counts a connection about to be dialled. Busy peers (requests
        in flight either way, or a dial/stream open in progress) are never
        pruned, so the limit can be exceeded while everyone is busy.
        """
        open_peers = [p for p in self._peers.values() if p.connections > 0 and not p.closing]
        excess = len(open_peers) + extra - self.config.max_connections
        if excess <= 0:
            return
        idle = sorted(
            (p for p in open_peers if p.name != exclude and not p.busy),
            key=lambda p: p.last_active,
        )
        for peer in idle[:excess]:
            self._spawn(self._close_peer, peer, "least recently used")
        if len(idle) < excess:
            logger.info("over the connection limit: every other connection is busy")

    def _strike(self, peer: _Peer, reason: str) -> None:
        now = trio.current_time()
        logger.warning(
            "%s: protocol violation by %s: %s", self.server_name[:8], peer.name[:8], reason
        )
        if peer.penalties.strike(now):
            logger.warning(
                "%s: banning %s for %.0fs",
                self.server_name[:8],
                peer.name[:8],
                self.config.ban_duration,
            )
            if peer.outbound is not None:
                peer.outbound.fail_all(f"{peer.name[:8]} is banned")
            self._spawn(self._close_peer, peer, "banned")

    async def _maintenance(self) -> None:
        """Close idle connections and forget peers nobody needs any more."""
        while True:
            await trio.sleep(self.config.maintenance_interval)
            now = trio.current_time()
            for peer in list(self._peers.values()):
                idle = now - peer.last_active
                if peer.connections > 0:
                    if idle > self.config.idle_timeout and not peer.busy and not peer.closing:
                        self._spawn(self._close_peer, peer, "idle")
                elif (
                    not peer.addrs
                    and not peer.busy
                    and idle > self.config.idle_timeout
                    and peer.penalties.is_clean(now)
                ):
                    del self._peers[peer.name]
