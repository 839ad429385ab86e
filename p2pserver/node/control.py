"""The control socket: a local JSON Lines interface to a running node, for tests and tools.

This is a development and test tool, not an API: the client API replaces
its uses. It listens only on a Unix socket (``p2pserver run
--control-socket PATH``, mode 0600, so only the node's user can connect)
and never on the network.

Protocol: each request is one line holding a JSON object with an ``op``;
each answer is one line holding a JSON object: the result, or
``{"error": {"errcode": ..., "message": ...}}``. Users may be given as
full user IDs of this node or as bare localparts (``"alice"``).

====================  =====================================================
op                    fields -> result
====================  =====================================================
info                  -> server_name, peer_id, listen_addresses
peers                 -> connected, known, queued, backing_off
add_peer              multiaddr (with /p2p/PeerID) -> server_name
create_room           user, request (createRoom body, optional),
                      room_version (optional) -> room_id
invite                room_id, sender, target -> event_id
join                  room_id, user, via (server names, optional) -> event_id
leave                 room_id, user, via (optional) -> event_id
send                  room_id, sender, type, content, state_key (optional)
                      -> event_id
event                 event_id -> status (accepted, soft_failed, rejected,
                      outlier or null), pdu
room                  room_id -> forward_extremities, joined_servers,
                      members, state ({"type|state_key": event_id})
messages              room_id, limit (default 100) -> events (type, sender,
                      content, event_id, depth), newest first
====================  =====================================================
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import sender_server
from p2pserver.rooms.room_versions import get_room_version
from p2pserver.storage.store import IN_DAG

if TYPE_CHECKING:
    from p2pserver.node.node import Node

logger = logging.getLogger(__name__)

MAX_LINE = 1 << 20
MAX_MESSAGES = 10_000


class ControlError(MatrixError):
    errcode = "M_BAD_JSON"


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError(f"{key!r} must be a non-empty string")
    return value


class ControlCommands:
    """The ops, over a running :class:`~p2pserver.node.node.Node`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "info": self.info,
            "peers": self.peers,
            "add_peer": self.add_peer,
            "create_room": self.create_room,
            "invite": self.invite,
            "join": self.join,
            "leave": self.leave,
            "send": self.send,
            "event": self.event,
            "room": self.room,
            "messages": self.messages,
        }

    def _user(self, request: dict[str, Any], key: str) -> str:
        value = _text(request, key)
        if value.startswith("@"):
            return value
        return f"@{value}:{self.node.server_name}"

    async def dispatch(self, request: object) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ControlError("a request is a JSON object")
        op = self.ops.get(request.get("op"))  # type: ignore[arg-type]
        if op is None:
            raise MatrixError(f"unknown op {request.get('op')!r}", errcode="M_UNRECOGNIZED")
        return await op(request)

    async def info(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "server_name": self.node.server_name,
            "peer_id": self.node.peer_id,
            "listen_addresses": self.node.listen_addresses(),
        }

    async def peers(self, request: dict[str, Any]) -> dict[str, Any]:
        status = self.node.status()
        return {k: status[k] for k in ("connected", "known", "queued", "backing_off")}

    async def add_peer(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            server_name = self.node.add_bootstrap(_text(request, "multiaddr"))
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"server_name": server_name}

    async def create_room(self, request: dict[str, Any]) -> dict[str, Any]:
        body = request.get("request", {})
        if not isinstance(body, dict):
            raise ControlError("'request' must be a createRoom body")
        version = request.get("room_version")
        creator = self._user(request, "user")
        room_version = get_room_version(version) if version is not None else None
        room_id = await self.node.engine.create_room(creator, body, room_version=room_version)
        return {"room_id": room_id}

    async def invite(self, request: dict[str, Any]) -> dict[str, Any]:
        room_id = _text(request, "room_id")
        sender, target = self._user(request, "sender"), self._user(request, "target")
        return {"event_id": await self.node.federation.invite(room_id, sender, target)}

    def _via(self, request: dict[str, Any]) -> list[str]:
        via = request.get("via", [])
        if not isinstance(via, list) or not all(isinstance(v, str) for v in via):
            raise ControlError("'via' must be a list of server names")
        return via

    async def join(self, request: dict[str, Any]) -> dict[str, Any]:
        room_id, user, via = (
            _text(request, "room_id"),
            self._user(request, "user"),
            self._via(request),
        )
        return {"event_id": await self.node.federation.join(room_id, user, via=via)}

    async def leave(self, request: dict[str, Any]) -> dict[str, Any]:
        room_id, user, via = (
            _text(request, "room_id"),
            self._user(request, "user"),
            self._via(request),
        )
        return {"event_id": await self.node.federation.leave(room_id, user, via=via)}

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        content = request.get("content", {})
        state_key = request.get("state_key")
        if not isinstance(content, dict) or not (state_key is None or isinstance(state_key, str)):
            raise ControlError("'content' must be an object and 'state_key' a string")
        room_id, sender = _text(request, "room_id"), self._user(request, "sender")
        event_type = _text(request, "type")
        event_id = await self.node.engine.send_event(
            room_id, sender, event_type, content, state_key=state_key
        )
        return {"event_id": event_id}

    async def event(self, request: dict[str, Any]) -> dict[str, Any]:
        event_id = _text(request, "event_id")
        store = self.node.engine.store
        meta = store.event_meta(event_id)
        event = store.load_event(event_id, allow_rejected=True)
        return {
            "status": meta.status.value if meta is not None else None,
            "pdu": event.get_pdu_json() if event is not None else None,
        }

    async def room(self, request: dict[str, Any]) -> dict[str, Any]:
        room_id = _text(request, "room_id")
        store = self.node.engine.store
        return {
            "forward_extremities": store.forward_extremities(room_id),
            "joined_servers": sorted(store.joined_servers(room_id)),
            "members": store.joined_members(room_id),
            "state": {f"{t}|{k}": v for (t, k), v in sorted(store.current_state(room_id).items())},
        }

    async def messages(self, request: dict[str, Any]) -> dict[str, Any]:
        """The room's DAG events reachable from its forward extremities, deepest first."""
        room_id = _text(request, "room_id")
        limit = request.get("limit", 100)
        if not isinstance(limit, int) or not 0 < limit <= MAX_MESSAGES:
            raise ControlError(f"'limit' must be 1-{MAX_MESSAGES}")
        store = self.node.engine.store
        seen: set[str] = set()
        frontier = store.forward_extremities(room_id)
        found = []
        while frontier and len(seen) < limit:
            metas = store.event_metas(frontier)
            next_frontier: list[str] = []
            for event_id in frontier:
                meta = metas.get(event_id)
                if event_id in seen or meta is None or meta.status not in IN_DAG:
                    continue
                seen.add(event_id)
                found.append(meta)
                next_frontier += store.prev_event_ids(meta.nid)
            frontier = next_frontier
        found.sort(key=lambda m: (-m.depth, -(m.stream_ordering or 0)))
        events = store.load_events(m.event_id for m in found[:limit])
        return {
            "events": [
                {
                    "event_id": e.event_id,
                    "type": e.type,
                    "sender": e.sender,
                    "origin": sender_server(e.sender),
                    "content": e.content,
                    "depth": e.depth,
                }
                for e in (events.get(m.event_id) for m in found[:limit])
                if e is not None
            ]
        }


async def serve_control(
    path: Path, commands: ControlCommands, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the control socket at ``path`` until cancelled (removes it on exit)."""
    if path.exists() or path.is_symlink():
        path.unlink()  # a stale socket from a node that crashed
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
    except BaseException:
        sock.close()
        raise
    logger.info("control socket (a test/dev tool) at %s", path)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(
                lambda stream: _serve_connection(stream, commands),
                [listener],
                handler_nursery=nursery,
            )
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        path.unlink(missing_ok=True)


async def _serve_connection(stream: trio.SocketStream, commands: ControlCommands) -> None:
    buffer = b""
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = await _answer(commands, line)
                try:
                    await stream.send_all(json.dumps(answer).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if len(buffer) > MAX_LINE:
                await stream.send_all(
                    b'{"error": {"errcode": "M_TOO_LARGE", "message": "line too long"}}\n'
                )
                return


async def _answer(commands: ControlCommands, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"error": {"errcode": "M_NOT_JSON", "message": str(exc)}}
    try:
        return await commands.dispatch(request)
    except MatrixError as exc:
        return {"error": {"errcode": exc.errcode, "message": exc.message}}
    except ValueError as exc:  # e.g. a user of another server for a local action
        return {"error": {"errcode": "M_INVALID_PARAM", "message": str(exc)}}
    except Exception as exc:
        logger.exception("control op failed")
        return {"error": {"errcode": "M_UNKNOWN", "message": f"{type(exc).__name__}: {exc}"}}


def control_request(
    path: str | os.PathLike[str], request: dict[str, Any], *, timeout: float = 30.0
) -> dict[str, Any]:
    """Send one request to a node's control socket and return the answer (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the node closed the control socket")
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("the node sent a non-object answer")
    return answer
