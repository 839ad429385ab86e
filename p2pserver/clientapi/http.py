"""A small HTTP/1.1 server on trio and h11, for the client API.

Why our own: the client API needs one thing from HTTP, request in and JSON
out, with keep-alive and long-polls, and it must start fast and stay small
(a node answers /versions within a second of launch, in tens of MiB). h11
does the protocol (parsing, framing, keep-alive, ``Expect: 100-continue``);
this module adds the sockets, limits and timeouts, and nothing else.

Rules:
- One trio task per connection; requests on a connection are answered in
  order (HTTP/1.1 keep-alive; no pipelining beyond what h11 buffers).
- A request body larger than :data:`MAX_BODY_BYTES` is refused with 413
  M_TOO_LARGE as soon as that is known: from ``Content-Length`` before
  reading any of it, or while reading a chunked body. The connection is
  then closed, since the rest of the body is not read.
- Headers larger than :data:`MAX_HEADER_BYTES` or malformed HTTP get a 400
  and the connection is closed (h11's verdict).
- A connection idle for :data:`IDLE_TIMEOUT` seconds between requests, or
  slower than :data:`READ_TIMEOUT` to send a request, is closed. Handlers
  (long-polling /sync) have no timeout here: they bound themselves.
- Every response has ``Content-Length`` and the CORS headers the spec asks
  for ("Web Browser Clients"); the application decides everything else.
- A handler that raises (a bug: the application answers every error it
  knows) costs that request a 500 M_UNKNOWN, logged; the connection and
  the server go on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import h11
import trio

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT = 75.0
READ_TIMEOUT = 30.0
MAX_CONNECTIONS = 512
_RECEIVE_SIZE = 64 * 1024

# Spec, "Web Browser Clients": the headers every response carries.
CORS_HEADERS: tuple[tuple[str, str], ...] = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization"),
)


@dataclass
class Request:
    method: str
    # The raw path, still percent-encoded (routing splits before decoding).
    path: str
    query: dict[str, list[str]]
    # Lower-case names; repeated headers joined with ", ".
    headers: dict[str, str]
    body: bytes
    client: str = ""

    def query_value(self, name: str) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    pass


def _plain_error(status: int, errcode: str, message: str) -> Response:
    import json

    body = json.dumps({"errcode": errcode, "error": message}).encode()
    return Response(status, body)


class HttpServer:
    def __init__(self, handler: Handler, *, max_body: int = MAX_BODY_BYTES) -> None:
        self.handler = handler
        self.max_body = max_body
        self._connections = trio.Semaphore(MAX_CONNECTIONS)

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                await self._connections.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    self._connections.release()
                    raise
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self.handle_stream(stream, _peer_host(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            self._connections.release()

    async def handle_stream(self, stream: trio.abc.Stream, client: str) -> None:
        """Serve requests on one connection until either side closes it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            try:
                with trio.fail_after(IDLE_TIMEOUT if conn.our_state is h11.IDLE else READ_TIMEOUT):
                    event = await _next_event(conn, stream)
            except trio.TooSlowError:
                return
            except h11.RemoteProtocolError as exc:
                await self._fail(conn, stream, exc.error_status_hint, str(exc))
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            try:
                with trio.fail_after(READ_TIMEOUT):
                    request = await self._read_request(conn, stream, event, client)
            except BodyTooLarge:
                await self._send(
                    conn,
                    stream,
                    _plain_error(413, "M_TOO_LARGE", f"request body over {self.max_body} bytes"),
                    close=True,
                )
                return
            except trio.TooSlowError:
                return
            except h11.RemoteProtocolError as exc:
                await self._fail(conn, stream, exc.error_status_hint, str(exc))
                return
            try:
                response = await self.handler(request)
            except Exception:
                logger.exception("%s %s: the handler failed", request.method, request.path)
                response = _plain_error(500, "M_UNKNOWN", "internal server error")
            await self._send(conn, stream, response, close=False)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, event: h11.Request, client: str
    ) -> Request:
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise BodyTooLarge
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(
                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            next_event = await _next_event(conn, stream)
            if isinstance(next_event, h11.Data):
                size += len(next_event.data)
                if size > self.max_body:
                    raise BodyTooLarge
                chunks.append(bytes(next_event.data))
            elif isinstance(next_event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed mid-body
                raise trio.BrokenResourceError("connection closed during the request body")
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        return Request(
            method=event.method.decode("latin-1").upper(),
            path=path,
            query=parse_qs(query, keep_blank_values=True),
            headers=headers,
            body=b"".join(chunks),
            client=client,
        )

    async def _send(
        self, conn: h11.Connection, stream: trio.abc.Stream, response: Response, *, close: bool
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-cache, no-store, must-revalidate"),
            *CORS_HEADERS,
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if response.body:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)

    async def _fail(
        self, conn: h11.Connection, stream: trio.abc.Stream, status: int, message: str
    ) -> None:
        """Answer a malformed request if the protocol state still allows it."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(
            h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            await self._send(
                conn, stream, _plain_error(status, "M_UNKNOWN", f"bad HTTP: {message}"), close=True
            )


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            continue
        return event


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
