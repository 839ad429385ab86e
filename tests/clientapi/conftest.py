"""A client API server on 127.0.0.1 in a background thread, for real clients.

The node (room engine, in-memory store, client API) runs under trio in its
own thread, bound to 127.0.0.1 port 0; tests drive it with matrix-nio
(asyncio) or plain HTTP (httpx), and read the node's state with
:meth:`Node.call`, which runs a function in the node's trio thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import pytest
import trio
from nio import AsyncClient, AsyncClientConfig, RegisterResponse

from p2pserver.clientapi import ClientAPI, serve_client_api
from p2pserver.engine import RoomEngine
from p2pserver.node.config import NodeConfig
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage import Store

P = ParamSpec("P")
T = TypeVar("T")

PASSWORD = "correct horse battery staple"


class Node:
    """One node's client API served from a trio thread."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.api: ClientAPI
        self.url: str
        self._error: BaseException | None = None

    async def _main(self) -> None:
        try:
            engine = RoomEngine(Store.open(), SigningKey.generate())
            config = NodeConfig(
                data_dir=Path("/nonexistent"), client_listen="127.0.0.1:0", **self.config
            )
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(serve_client_api, engine, None, config)
                self.api, self.url = handle.api, handle.url
                self._token = trio.lowlevel.current_trio_token()
                self._cancel = nursery.cancel_scope
                self._ready.set()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def start(self) -> Node:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(10)

    @property
    def server_name(self) -> str:
        return self.api.server_name

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the node's thread (the engine is not thread-safe)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="package")
def node() -> Iterator[Node]:
    n = Node().start()
    yield n
    n.stop()


def run_async(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an asyncio test (matrix-nio is asyncio; pytest-asyncio is not installed)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


async def new_client(node: Node, prefix: str = "user") -> AsyncClient:
    """A matrix-nio client registered (m.login.dummy) as a fresh user."""
    name = unique(prefix)
    client = AsyncClient(
        node.url, config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    )
    response = await client.register(name, PASSWORD, device_name="test device")
    assert isinstance(response, RegisterResponse), response
    assert client.user_id == f"@{name}:{node.server_name}"
    assert client.access_token
    return client


def register_raw(http: httpx.Client, name: str | None = None) -> tuple[str, str]:
    """(user ID, access token) of a fresh user registered over plain HTTP."""
    body = {
        "username": name or unique("raw"),
        "password": PASSWORD,
        "auth": {"type": "m.login.dummy"},
    }
    response = http.post("/_matrix/client/v3/register", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return data["user_id"], data["access_token"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
