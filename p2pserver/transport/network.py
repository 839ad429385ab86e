"""The `Network` interface: how a node talks to other nodes.

One interface, two implementations: :class:`~p2pserver.transport.memory.MemoryNetwork`
(tests and simulations, driven by trio's clock) and
:class:`~p2pserver.transport.libp2p_network.Libp2pNetwork` (TCP + Noise + Yamux).
Protocol code (engine, federation, client API) takes a `Network` and never
asks which one it has.

Theory of operation:

- A node is named by its server name. ``request(destination, method, body,
  timeout=...)`` sends one request and waits for its response; there are no
  one-way messages. The destination's request handler runs as
  ``await handler(origin, method, body)`` and returns the response body.
  ``origin`` is the *authenticated* server name of the requesting node (for
  libp2p: read off the PeerID proven by the Noise handshake), never a claim
  taken from the body.
- Bodies and responses are JSON objects (dicts); they travel as CBOR frames
  with size limits (see :mod:`p2pserver.transport.framing`). A body that
  cannot be sent raises FrameError/FrameTooLarge in the caller.
- Failures reach the caller as exactly one of:
  :class:`PeerUnreachable` (no connection could be made, or it broke before
  the response arrived: the request may or may not have run),
  :class:`RequestTimeout` (no response within ``timeout`` seconds; this
  covers connecting too), :class:`RemoteError` (the handler refused: a
  :class:`~p2pserver.rooms.errors.MatrixError` on the remote side arrives
  with its errcode and message; any other exception in a handler arrives as
  ``M_UNKNOWN`` and is logged on the remote side, which keeps serving).
- Connections are made on demand by ``request`` (or ahead of time by
  ``connect``) to peers whose addresses were given with
  ``add_peer_address``; a peer that connected to us is also known.
  ``connected_peers()`` is the set of peers with an open connection, and
  ``subscribe_peer_events()`` yields a :class:`PeerEvent` at each change, so
  higher layers can catch up with peers that come back.
- Lifecycle: ``async with network.running():`` starts the node (listening,
  serving requests) and stops it on exit, cancelling everything it started.
  Every task lives in a nursery opened by ``running()``.
- ``traffic`` counts request and response frames (and their bytes as sent on
  the wire, without transport overhead) for tests and measurements.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from p2pserver.rooms.errors import MatrixError
from p2pserver.transport.framing import (
    ErrorBody,
    FrameError,
    FrameTooLarge,
    Request,
    Response,
    encode_response,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
PEER_EVENT_BUFFER = 256

RequestHandler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""``async def handler(origin, method, body) -> response body``."""


class NetworkError(Exception):
    """Base class of the failures `Network.request` raises."""


class PeerUnreachable(NetworkError):
    """No connection to the peer, or the connection broke mid-request."""


class RequestTimeout(NetworkError):
    """No response arrived within the timeout."""


class RemoteError(NetworkError):
    """The remote handler refused the request with a Matrix errcode."""

    def __init__(self, errcode: str, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{errcode}: {message}")
        self.errcode = errcode
        self.message = message
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class PeerEvent:
    """``server_name`` got its first open connection (connected=True) or lost its last one."""

    server_name: str
    connected: bool


@dataclass
class TrafficCounters:
    """Frames and their on-the-wire bytes (header included), per direction."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    # bytes of requests and their responses, attributed to the request's method
    bytes_by_method: dict[str, int] = field(default_factory=dict)

    def count_sent(self, size: int, method: str | None = None) -> None:
        self.messages_sent += 1
        self.bytes_sent += size
        if method is not None:
            self.bytes_by_method[method] = self.bytes_by_method.get(method, 0) + size

    def count_received(self, size: int) -> None:
        self.messages_received += 1
        self.bytes_received += size


class Network(abc.ABC):
    """A node's view of the network. See the module docstring for the rules."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.traffic = TrafficCounters()
        self._handler: RequestHandler | None = None
        self._connected: set[str] = set()
        self._subscribers: list[trio.MemorySendChannel[PeerEvent]] = []

    # --- the interface ---------------------------------------------------

    @abc.abstractmethod
    async def request(
        self,
        destination: str,
        method: str,
        body: dict[str, Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one request and return the response body."""

    @abc.abstractmethod
    async def connect(self, destination: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Open a connection ahead of requests. Raises PeerUnreachable or RequestTimeout."""

    @abc.abstractmethod
    def add_peer_address(self, server_name: str, addrs: Iterable[str]) -> None:
        """Remember where ``server_name`` listens (addresses as `listen_addresses()` gives them)."""

    @abc.abstractmethod
    def known_peers(self) -> set[str]:
        """Peers we could try to reach: given addresses, or connected to us before."""

    @abc.abstractmethod
    def listen_addresses(self) -> list[str]:
        """Where this node can be reached (empty while not running)."""

    @abc.abstractmethod
    def running(self) -> AbstractAsyncContextManager[None]:
        """``async with network.running():`` runs the node for the duration of the block."""

    def set_request_handler(self, handler: RequestHandler | None) -> None:
        """Install the handler for incoming requests (None: refuse with M_UNRECOGNIZED)."""
        self._handler = handler

    def connected_peers(self) -> set[str]:
        return set(self._connected)

    def subscribe_peer_events(
        self, buffer: int = PEER_EVENT_BUFFER
    ) -> trio.MemoryReceiveChannel[PeerEvent]:
        """A channel of PeerEvents from now on; it ends when the network stops.

        A subscriber that falls ``buffer`` events behind has its channel
        closed (logged) rather than blocking the network; it can resubscribe
        and resynchronise from ``connected_peers()``.
        """
        send, receive = trio.open_memory_channel[PeerEvent](buffer)
        self._subscribers.append(send)
        return receive

    # --- shared machinery for the implementations --------------------------

    def _check_destination(self, destination: str) -> None:
        if not isinstance(destination, str) or not destination:
            raise ValueError("destination must be a server name")
        if destination == self.server_name:
            raise ValueError("a node does not send requests to itself")

    def _set_connected(self, server_name: str, connected: bool) -> None:
        """Record a peer-level connection change and tell the subscribers."""
        if connected == (server_name in self._connected):
            return
        if connected:
            self._connected.add(server_name)
        else:
            self._connected.discard(server_name)
        logger.info(
            "%s: peer %s %s",
            self.server_name[:8],
            server_name[:8],
            "connected" if connected else "disconnected",
        )
        event = PeerEvent(server_name, connected)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                logger.warning("peer event subscriber fell behind; closing its channel")
                self._drop_subscriber(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop_subscriber(send)

    def _drop_subscriber(self, send: trio.MemorySendChannel[PeerEvent]) -> None:
        self._subscribers.remove(send)
        send.close()

    def _close_subscribers(self) -> None:
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()

    async def _serve_request(self, origin: str, request: Request) -> bytes:
        """Run the handler for ``request`` and return the encoded response frame.

        Never raises (except Cancelled): a MatrixError becomes its errcode, any
        other exception M_UNKNOWN (logged), an unencodable result M_UNKNOWN
        and an oversized one M_TOO_LARGE.
        """
        handler = self._handler
        if handler is None:
            return error_frame(request.id, "M_UNRECOGNIZED", "this node serves no requests")
        try:
            result = await handler(origin, request.method, request.body)
        except MatrixError as e:
            return error_frame(request.id, e.errcode, e.message)
        except Exception:
            logger.exception("handler for %s from %s failed", request.method, origin[:8])
            return error_frame(request.id, "M_UNKNOWN", "internal error")
        if not isinstance(result, dict):
            logger.error(
                "handler for %s returned %s, not a dict", request.method, type(result).__name__
            )
            return error_frame(request.id, "M_UNKNOWN", "internal error")
        try:
            return encode_response(Response(request.id, ok=result))
        except FrameTooLarge as e:
            logger.warning("response to %s from %s too large: %s", request.method, origin[:8], e)
            return error_frame(request.id, "M_TOO_LARGE", "response too large")
        except FrameError as e:
            logger.error("response to %s cannot be encoded: %s", request.method, e)
            return error_frame(request.id, "M_UNKNOWN", "internal error")


# What a pending request resolves to: a decoded Response, or raw frame bytes.
ResponseT = TypeVar("ResponseT")


class PendingRequest(Generic[ResponseT]):
    """A request waiting for its response: resolved or failed once, then done.

    Both implementations park callers on one of these while the answer
    travels; the first outcome wins, so a late response after a timeout or
    a broken link is simply ignored.
    """

    __slots__ = ("done", "response", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: ResponseT | None = None
        self.error: Exception | None = None

    def resolve(self, response: ResponseT) -> None:
        if not self.done.is_set():
            self.response = response
            self.done.set()

    def fail(self, error: Exception) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


def error_frame(
    request_id: int, errcode: str, message: str, retry_after_ms: int | None = None
) -> bytes:
    return encode_response(Response(request_id, error=ErrorBody(errcode, message, retry_after_ms)))


def response_result(response: Response) -> dict[str, Any]:
    """The body of an ok response; raises RemoteError for an error response."""
    if response.error is not None:
        raise RemoteError(
            response.error.errcode,
            response.error.message,
            retry_after_ms=response.error.retry_after_ms,
        )
    assert response.ok is not None
    return response.ok


def check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, (int, float)) and timeout > 0 and not math.isnan(timeout)):
        raise ValueError("timeout must be a positive number of seconds")
