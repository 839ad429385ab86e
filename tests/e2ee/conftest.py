"""Nodes for the end-to-end encryption tests: client API + federation over a MemoryHub.

Each :class:`E2eeNode` is a store file, a room engine with its Federation
on a :class:`~p2pserver.transport.memory.MemoryHub`, and a
:class:`~p2pserver.clientapi.ClientAPI` wired to it by
:func:`p2pserver.e2ee.connect`, as a node wires them. A node can be
stopped as a crash would stop it (nothing flushed but what was committed)
and started again over the same files: new objects, same identity.

- In-process tests (:func:`run`, under trio's MockClock) call the client
  API directly (:meth:`E2eeNode.call`).
- :class:`LiveCluster` serves the same nodes over HTTP on 127.0.0.1 from a
  trio thread, for matrix-nio (asyncio) in the test's own thread.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trio
import trio.testing

from p2pserver.clientapi.http import Request
from p2pserver.clientapi.server import ClientAPI, serve_client_api
from p2pserver.e2ee import connect
from p2pserver.federation import Federation, FederationConfig, FederationRemote, build_federation
from p2pserver.node.config import NodeConfig
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import Store
from p2pserver.transport.memory import MemoryHub, MemoryNetwork

V3 = "/_matrix/client/v3"
CONFIG = FederationConfig(
    fanout=4, sync_interval=5.0, announce_delay=0.05, backoff_initial=0.2, backoff_max=1.0
)
PASSWORD = "correct horse battery staple"


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``fn`` under a MockClock that jumps whenever every task waits."""
    return trio.run(
        functools.partial(fn, *args), clock=trio.testing.MockClock(autojump_threshold=0)
    )


class ApiFailure(AssertionError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class E2eeNode:
    def __init__(self, hub: MemoryHub, data_dir: Path, *, http: bool = False) -> None:
        self.hub = hub
        self.key = SigningKey.generate()
        self.server_name = self.key.server_name
        self.net: MemoryNetwork = hub.network(self.server_name)
        self.data_dir = data_dir
        self.path = data_dir / "rooms.db"
        self.http = http
        self.port = 0
        self.url = ""
        self._api: ClientAPI | None = None
        self._fed: Federation | None = None
        self._store: Store | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None

    @property
    def api(self) -> ClientAPI:
        assert self._api is not None, "the node is not running"
        return self._api

    @property
    def fed(self) -> Federation:
        assert self._fed is not None, "the node is not running"
        return self._fed

    @property
    def store(self) -> Store:
        assert self._store is not None, "the node is not running"
        return self._store

    @property
    def running(self) -> bool:
        return self._scope is not None

    def user(self, name: str) -> str:
        return f"@{name}:{self.server_name}"

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        assert self._scope is None
        self._scope = await nursery.start(self._run)

    async def stop(self) -> None:
        """Stop as a crash would: cancel everything; the store file keeps what was committed."""
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()
        self._scope = None

    async def _run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = stopped = trio.Event()
        store = Store.open(self.path)
        try:
            with trio.CancelScope() as scope:
                fed = build_federation(store, self.key, self.net, CONFIG)
                async with self.net.running(), trio.open_nursery() as nursery:
                    await nursery.start(fed.run)
                    remote = FederationRemote(fed)
                    if self.http:
                        config = NodeConfig(
                            data_dir=self.data_dir, client_listen=f"127.0.0.1:{self.port}"
                        )
                        handle = await nursery.start(
                            functools.partial(serve_client_api, remote=remote),
                            fed.engine,
                            None,
                            config,
                        )
                        api = handle.api
                        self.port, self.url = handle.port, handle.url
                    else:
                        api = ClientAPI(fed.engine, remote=remote)
                    connect(api, fed)
                    self._store, self._fed, self._api = store, fed, api
                    task_status.started(scope)
                    await trio.sleep_forever()
        finally:
            self._store = self._fed = self._api = None
            store.close()
            stopped.set()

    # -- talking to the client API in-process ------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        *,
        status: int = 200,
    ) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else b""
        path, _, query = path.partition("?")
        response = await self.api.handle(Request(method, V3 + path, parse_qs(query), headers, data))
        answer = json.loads(response.body) if response.body else None
        if response.status != status:
            raise ApiFailure(response.status, answer)
        return answer

    async def register(self, name: str, *, password: str | None = None) -> Account:
        body: dict[str, Any] = {"username": name, "auth": {"type": "m.login.dummy"}}
        if password is not None:
            body["password"] = password
        answer = await self.call("POST", "/register", body)
        return Account(self, answer["user_id"], answer["device_id"], answer["access_token"])

    async def login(self, user_id: str, password: str, device_id: str | None = None) -> Account:
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
        }
        if device_id is not None:
            body["device_id"] = device_id
        answer = await self.call("POST", "/login", body)
        return Account(self, answer["user_id"], answer["device_id"], answer["access_token"])


class Account:
    """A logged-in device on a node, calling its client API."""

    def __init__(self, node: E2eeNode, user_id: str, device_id: str, token: str) -> None:
        self.node = node
        self.user_id = user_id
        self.device_id = device_id
        self.token = token
        self.since: str | None = None

    async def call(self, method: str, path: str, body: Any = None, *, status: int = 200) -> Any:
        return await self.node.call(method, path, body, self.token, status=status)

    async def sync(
        self, *, since: str | None = None, initial: bool = False, timeout: int = 0
    ) -> dict[str, Any]:
        """A /sync from ``since`` (default: the last next_batch; none if ``initial``).

        Remembers the answer's next_batch.
        """
        token = None if initial else (since or self.since)
        query = f"?timeout={timeout}" + (f"&since={token}" if token else "")
        answer = await self.call("GET", "/sync" + query)
        self.since = answer["next_batch"]
        return answer


def cluster(
    tmp_path: Path, count: int = 2, *, http: bool = False
) -> tuple[MemoryHub, list[E2eeNode]]:
    """``count`` nodes that know each other's addresses."""
    hub = MemoryHub(latency=0.002)
    nodes = []
    for i in range(count):
        data_dir = tmp_path / f"node{i}"
        data_dir.mkdir()
        nodes.append(E2eeNode(hub, data_dir, http=http))
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.net.add_peer_address(other.server_name, [f"/memory/{other.server_name}"])
    return hub, nodes


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def shared_room(creator: Account, others: list[Account], *, encrypted: bool = True) -> str:
    """A room made by ``creator`` that ``others`` (on any node) are invited to and joined."""
    body: dict[str, Any] = {"preset": "private_chat", "invite": [a.user_id for a in others]}
    if encrypted:
        body["initial_state"] = [
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ]
    room_id = (await creator.call("POST", "/createRoom", body))["room_id"]
    for account in others:
        store = account.node.store
        await wait_until(
            lambda s=store, a=account: s.current_membership(room_id, a.user_id) == "invite"
        )
        await account.call("POST", f"/join/{room_id}", {})
    everyone = {a.node.server_name for a in [creator, *others]}
    nodes = {a.node for a in [creator, *others]}
    await wait_until(lambda: all(n.store.joined_servers(room_id) == everyone for n in nodes))
    return room_id


class LiveCluster:
    """Nodes served over HTTP from one trio thread; the test thread drives them."""

    def __init__(self, tmp_path: Path, count: int = 2) -> None:
        self.hub, self.nodes = cluster(tmp_path, count, http=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                for node in self.nodes:
                    await node.start(nursery)
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> LiveCluster:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(30)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (sync) in the nodes' thread."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def run(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await afn(*args)`` in the nodes' thread."""
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def stop(self, node: E2eeNode) -> None:
        self.run(node.stop)

    def start(self, node: E2eeNode) -> None:
        self.run(node.start, self._nursery)
