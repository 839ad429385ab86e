"""An in-memory libp2p transport: many hosts in one process, no sockets.

py-libp2p 0.8.1 has no memory transport. This one plugs into ``new_host(transports=[...])``
(:func:`p2pserver.transport.libp2p_network.new_host`):
addresses look like ``/memory/<n>``, a dial makes a ``trio.testing.memory_stream_pair``
and hands one end to the listener. Noise and Yamux run on top as over TCP,
so everything above the socket layer is the real stack. It needs no
network at all and follows trio's clock (MockClock works).

Listeners are registered in a :class:`MemoryTransportHub`, so separate tests
or simulations do not see each other's hosts. A closed stream reads as EOF
(b""), as a TCP socket does; a write to a closed peer raises libp2p's
ConnectionClosedError.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, cast

import multiaddr
import trio
import trio.testing

# Before any libp2p import (see p2pserver.transport.libp2p_slim).
from p2pserver.transport import libp2p_slim  # noqa: F401

# isort: split

from libp2p.abc import IHost, IListener, ITransport
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pserver.rooms.signing import SigningKey
from p2pserver.transport.libp2p_network import keypair_from_signing_key, new_host

Handler = Callable[[Any], Awaitable[None]]


class MemoryTransportHub:
    """Where memory listeners are found by port."""

    def __init__(self) -> None:
        self.listeners: dict[int, _MemoryListener] = {}
        self._ports = itertools.count(1)

    def next_port(self) -> int:
        return next(self._ports)


class _MemoryStream(ReadWriteCloser):
    def __init__(self, stream: trio.abc.HalfCloseableStream | Any, port: int) -> None:
        self._stream = stream
        self._port = port
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise ConnectionClosedError(str(e), transport="memory") from e

    async def read(self, n: int | None = None) -> bytes:
        async with self._read_lock:
            try:
                return bytes(await self._stream.receive_some(n))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""

    async def close(self) -> None:
        await self._stream.aclose()

    def get_remote_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self._port)  # some libp2p code paths want a tuple


class _MemoryListener(IListener):
    def __init__(self, hub: MemoryTransportHub, handler: Handler) -> None:
        self._hub = hub
        self.handler = handler
        self.addrs: list[multiaddr.Multiaddr] = []
        self.nursery: trio.Nursery | None = None

    async def listen(self, maddr: multiaddr.Multiaddr) -> None:
        port = int(maddr.value_for_protocol("memory") or 0) or self._hub.next_port()
        if port in self._hub.listeners:
            raise OSError(f"/memory/{port} is taken")
        self._hub.listeners[port] = self
        self.addrs.append(multiaddr.Multiaddr(f"/memory/{port}"))
        if self.nursery is None:
            ready = trio.Event()

            async def serve() -> None:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    ready.set()
                    await trio.sleep_forever()

            # A system task, as libp2p's TCP listener does: it outlives the caller.
            trio.lowlevel.spawn_system_task(serve)
            await ready.wait()

    def get_addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        return tuple(self.addrs)

    async def close(self) -> None:
        for addr in self.addrs:
            self._hub.listeners.pop(int(addr.value_for_protocol("memory")), None)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()


class MemoryTransport(ITransport):
    def __init__(self, hub: MemoryTransportHub) -> None:
        self.hub = hub

    async def dial(self, maddr: multiaddr.Multiaddr) -> RawConnection:
        port = int(maddr.value_for_protocol("memory"))
        listener = self.hub.listeners.get(port)
        if listener is None or listener.nursery is None:
            raise ConnectionRefusedError(f"nothing listens on /memory/{port}")
        ours, theirs = trio.testing.memory_stream_pair()
        listener.nursery.start_soon(listener.handler, _MemoryStream(theirs, 0))
        return RawConnection(_MemoryStream(ours, port), initiator=True, addresses=[maddr])

    def create_listener(self, handler_function: Handler) -> _MemoryListener:
        return _MemoryListener(self.hub, handler_function)

    def can_dial(self, maddr: multiaddr.Multiaddr) -> bool:
        return "memory" in {p.name for p in maddr.protocols()}

    def can_listen(self, maddr: multiaddr.Multiaddr) -> bool:
        return self.can_dial(maddr)

    def protocols(self) -> list[str]:
        return ["memory"]


def new_memory_host(signing_key: SigningKey, hub: MemoryTransportHub) -> IHost:
    """A libp2p host with the node's identity, Noise and Yamux, on the memory transport.

    Run it with ``async with host.run([multiaddr.Multiaddr("/memory/0")])``
    and ``await host.close()`` afterwards.
    """
    keypair = keypair_from_signing_key(signing_key)
    return new_host(
        keypair,
        sec_opt={
            NOISE_ID: NoiseTransport(keypair, noise_privkey=new_x25519_key_pair().private_key)
        },
        muxer_opt=cast(Any, {YAMUX_ID: Yamux}),
        transports=[MemoryTransport(hub)],
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


async def close_hosts(hosts: list[IHost]) -> None:
    """Close hosts and all their connections at once (each close sleeps in libp2p)."""

    async def close_connection(conn: Any) -> None:
        with suppress(Exception):
            await conn.close()

    async def close_host(host: IHost) -> None:
        swarm: Any = host.get_network()
        async with trio.open_nursery() as nursery:
            for conns in list(swarm.connections.values()):
                for conn in list(conns):
                    nursery.start_soon(close_connection, conn)
        with suppress(Exception):
            await host.close()

    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(close_host, host)
