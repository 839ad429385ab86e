"""SIGKILL a real node at arbitrary moments: nothing acknowledged is lost, nothing doubled.

Two ``p2pserver run`` processes on 127.0.0.1 (own data directories, meeting
through ``--bootstrap``) share a room. alice, a client of node A, and bob,
of node B, each send a steady stream over the Client-Server API (plain
HTTP) as a client would: one transaction ID per message, retried with the
same ID until a 200 answers it (now and then a topic change instead, which
has no transaction ID). An event counts as acknowledged once its 200 with
an ``event_id`` arrived. Both also follow /sync, long-polling from their
last ``next_batch`` across the kills. Meanwhile one node (A, then B) is
killed with SIGKILL at a few seeded moments and started again on the same
data directory; right after each kill its database must pass ``PRAGMA
integrity_check`` as the kill left it.

The kill lands wherever the node happens to be (the timing is real), so
the assertions hold for any moment:

- every acknowledged event is in both timelines (/messages) and reached
  both /sync followers;
- no event appears twice in a timeline or a /sync stream, and no message
  either: a client retrying a transaction ID the node had already stored
  an event for gets that event, not a second one (spec: "Transaction
  identifiers");
- both databases pass ``PRAGMA integrity_check`` and the store's own
  invariants once the nodes are stopped;
- A's and B's room state agree.

The random moments rarely land between an event's commit and the answer;
the last test kills the node exactly there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from p2pserver.storage import Store
from p2pserver.storage.database import DATABASE_FILE_NAME
from tests.clientapi.conftest import auth, register_raw
from tests.node.test_multiprocess import NodeProcess, root, wait_for  # noqa: F401 (fixture)

V3 = "/_matrix/client/v3"
KILLS = 4
# SIGKILL_SEED=<n> tries other moments.
SEED = int(os.environ.get("SIGKILL_SEED", "20240611"))
# Every TOPIC_EVERY-th item of the stream is a topic change (a state event).
TOPIC_EVERY = 7
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})


class ClientNodeProcess(NodeProcess):
    """A :class:`NodeProcess` whose client API URL is known after each start."""

    url = ""

    def start(self, *bootstrap: str) -> ClientNodeProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        super().start(*bootstrap)
        text = self.log.read_bytes()[offset:].decode(errors="replace")
        marker = "client API at "
        self.url = text[text.index(marker) + len(marker) :].split()[0]
        assert self.url.startswith("http://127.0.0.1:"), self.url
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        assert self.proc.wait(timeout=20) == -signal.SIGKILL
        self.proc = None

    def database_problems(self) -> list[str]:
        """``PRAGMA integrity_check`` and foreign keys of the stopped node's database.

        Read-only, so it sees the files as the kill left them
        (:class:`Database` would open them for writing, and migrate).
        """
        conn = apsw.Connection(
            str(self.data_dir / DATABASE_FILE_NAME), flags=apsw.SQLITE_OPEN_READONLY
        )
        try:
            problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
            if problems == ["ok"]:
                problems = []
            problems += [f"foreign key: {r}" for r in conn.execute("PRAGMA foreign_key_check")]
            return problems
        finally:
            conn.close()


class Worker:
    """A client's loop in a thread, talking to whatever URL its node has now."""

    def __init__(self, node: ClientNodeProcess, token: str, room_id: str) -> None:
        self.node = node
        self.token = token
        self.room_id = room_id
        self.retries = 0  # requests that met a dead node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()
        self.check()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException as exc:
            self._error = exc

    def step(self) -> None:
        raise NotImplementedError

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The answer to a request, retried as it is until the node answers it with a 200."""
        while True:
            try:
                response = httpx.request(
                    method,
                    self.node.url + V3 + path,
                    headers=auth(self.token),
                    timeout=20,
                    **kwargs,
                )
            except httpx.TransportError:  # the node is down, or died mid-request
                self.retries += 1
                time.sleep(0.05)
                continue
            assert response.status_code == 200, (method, path, response.status_code, response.text)
            data = response.json()
            assert isinstance(data, dict)
            return data


class Sender(Worker):
    """Sends a steady stream: messages (transaction ID ``<prefix><n>``) and now and then a topic."""

    def __init__(self, node: ClientNodeProcess, token: str, room_id: str, prefix: str) -> None:
        super().__init__(node, token, room_id)
        self.prefix = prefix
        self.acknowledged: list[str] = []  # event IDs, in the order their 200s came

    def step(self) -> None:
        n = len(self.acknowledged) + 1
        if n % TOPIC_EVERY == 0:
            # State is not idempotent by transaction ID: a retry may set it twice.
            path = f"/rooms/{self.room_id}/state/m.room.topic"
            answer = self.request("PUT", path, json={"topic": f"{self.prefix}{n}"})
        else:
            txn = f"{self.prefix}{n}"
            path = f"/rooms/{self.room_id}/send/m.room.message/{txn}"
            answer = self.request("PUT", path, json={"msgtype": "m.text", "body": txn})
        self.acknowledged.append(str(answer["event_id"]))

    def wait_for_more(self, count: int) -> None:
        target = len(self.acknowledged) + count
        wait_for(lambda: len(self.acknowledged) >= target or self._error, 30, "acknowledgements")
        self.check()


class Syncer(Worker):
    """Follows /sync (long-polls from the last ``next_batch``) and keeps the room's timeline."""

    def __init__(self, node: ClientNodeProcess, token: str, room_id: str) -> None:
        super().__init__(node, token, room_id)
        self.since = self.request("GET", "/sync", params={"timeout": 0})["next_batch"]
        self.event_ids: list[str] = []
        self.limited = 0

    def step(self) -> None:
        params = {"since": self.since, "timeout": 500, "filter": SYNC_FILTER}
        data = self.request("GET", "/sync", params=params)
        room = data.get("rooms", {}).get("join", {}).get(self.room_id)
        if room is not None:
            self.event_ids += [e["event_id"] for e in room["timeline"]["events"]]
            self.limited += bool(room["timeline"].get("limited"))
        self.since = data["next_batch"]

    def wait_for_all(self, event_ids: list[str]) -> None:
        wanted = set(event_ids)
        what = f"{self.node.name}'s /sync to show every acknowledged event"
        wait_for(lambda: wanted <= set(self.event_ids) or self._error, 30, what)
        self.check()


def timeline(node: ClientNodeProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    """Every event of the room a user sees, oldest first (/messages, paged forwards)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dir": "f", "limit": 1000}
    with httpx.Client(base_url=node.url, timeout=30) as http:
        while True:
            page = http.get(f"{V3}/rooms/{room_id}/messages", params=params, headers=auth(token))
            assert page.status_code == 200, page.text
            data = page.json()
            events += data["chunk"]
            if "end" not in data or not data["chunk"]:
                return events
            params["from"] = data["end"]


def duplicates(items: list[str]) -> list[str]:
    return sorted(i for i, count in Counter(items).items() if count > 1)


@pytest.fixture
def two_nodes(root: Path) -> Iterator[tuple[ClientNodeProcess, ClientNodeProcess]]:  # noqa: F811
    a = ClientNodeProcess(root, "a")
    b = ClientNodeProcess(root, "b")
    try:
        a.start()
        b.start(a.address)
        yield a, b
    finally:
        for node in (a, b):
            if node.proc is not None:
                node.proc.kill()
                node.proc.wait(timeout=10)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("victim", ["a", "b"])
def test_sigkill_loses_and_duplicates_nothing(
    two_nodes: tuple[ClientNodeProcess, ClientNodeProcess], victim: str
) -> None:
    started = time.monotonic()
    a, b = two_nodes
    rng = random.Random(f"{SEED}-{victim}")
    with httpx.Client(base_url=a.url, timeout=30) as http:
        _, alice_token = register_raw(http, "alice")
        bob = f"@bob:{b.server_name}"
        # Both may set the topic: concurrent state from both sides.
        powers = {"users": {bob: 50}}
        created = http.post(
            f"{V3}/createRoom",
            headers=auth(alice_token),
            json={"preset": "public_chat", "invite": [bob], "power_level_content_override": powers},
        )
        assert created.status_code == 200, created.text
        room_id = created.json()["room_id"]
    with httpx.Client(base_url=b.url, timeout=30) as http:
        _, bob_token = register_raw(http, "bob")
        wait_for(lambda: b.has(a("room", room_id=room_id)["forward_extremities"][0]), 30, "invite")
        joined = http.post(f"{V3}/join/{room_id}", headers=auth(bob_token), json={})
        assert joined.status_code == 200, joined.text
    wait_for(lambda: bob in a("room", room_id=room_id)["members"], 30, "bob's join on A")

    target, other = (a, b) if victim == "a" else (b, a)
    kills: list[int] = []  # how many of alice's messages had been acknowledged at each kill
    alice_sync = Syncer(a, alice_token, room_id)
    bob_sync = Syncer(b, bob_token, room_id)
    with alice_sync, bob_sync:
        alice_sends = Sender(a, alice_token, room_id, "a")
        bob_sends = Sender(b, bob_token, room_id, "b")
        with alice_sends, bob_sends:
            alice_sends.wait_for_more(5)
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.0, 1.5))
                kills.append(len(alice_sends.acknowledged))
                target.kill()
                # As the kill left it, before anything recovers it.
                assert target.database_problems() == [], target.name
                target.start(other.address)
                alice_sends.wait_for_more(3)
                bob_sends.wait_for_more(3)
        acknowledged = alice_sends.acknowledged + bob_sends.acknowledged
        assert len(alice_sends.acknowledged) >= KILLS * 3 + 5

        # Both syncing clients see every acknowledged event (they follow /sync
        # across the kills with the same tokens).
        alice_sync.wait_for_all(acknowledged)
        bob_sync.wait_for_all(acknowledged)
    wait_for(
        lambda: a("room", room_id=room_id)["state"] == b("room", room_id=room_id)["state"],
        30,
        "A's and B's room state to agree",
    )
    for node, token, syncer in ((a, alice_token, alice_sync), (b, bob_token, bob_sync)):
        events = timeline(node, token, room_id)
        ids = [e["event_id"] for e in events]
        assert [e for e in acknowledged if e not in ids] == [], node.name
        assert duplicates(ids) == [], node.name
        bodies = [e["content"].get("body", "") for e in events if e["type"] == "m.room.message"]
        assert duplicates(bodies) == [], (node.name, kills)
        assert duplicates(syncer.event_ids) == [], node.name
        assert syncer.limited == 0, node.name
    for node in (a, b):
        node.stop()
        store = Store.open_data_dir(node.data_dir)
        try:
            assert store.check_consistency() == [], node.name
        finally:
            store.close()
    print(
        f"victim {victim}: {len(alice_sends.acknowledged)}+{len(bob_sends.acknowledged)}"
        f" acknowledged, kills after {kills}, {alice_sends.retries}+{bob_sends.retries} retries,"
        f" {time.monotonic() - started:.1f}s"
    )


# Loaded into a node's process (as ``sitecustomize``): while the file ARMED
# exists, the next local event to commit removes it and SIGKILLs the node,
# before anything answers the request that made the event.
KILL_AFTER_COMMIT = """
import os, signal
from p2pserver.engine.notifier import Notifier

ARMED = {armed!r}
_notify = Notifier.notify

def notify(self, update):
    if update.local and os.path.exists(ARMED):
        os.unlink(ARMED)
        os.kill(os.getpid(), signal.SIGKILL)
    _notify(self, update)

Notifier.notify = notify
"""


@pytest.mark.parametrize("request_kind", ["send", "redact"])
def test_a_kill_right_after_the_commit_leaves_the_transaction_id_known(
    root: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    request_kind: str,
) -> None:
    """The client got no answer and retries the transaction ID: the event, not a second one."""
    armed = root / "armed"
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER_COMMIT.format(armed=str(armed)))
    monkeypatch.setenv("PYTHONPATH", str(hook), prepend=os.pathsep)
    node = ClientNodeProcess(root, "a")
    try:
        node.start()
        with httpx.Client(base_url=node.url, timeout=30) as http:
            _, token = register_raw(http, "alice")
            created = http.post(f"{V3}/createRoom", headers=auth(token), json={})
            assert created.status_code == 200, created.text
            room_id = created.json()["room_id"]
            body: dict[str, Any] = {"msgtype": "m.text", "body": "hello"}
            path = f"/rooms/{room_id}/send/m.room.message/t1"
            if request_kind == "redact":
                sent = http.put(V3 + path, json=body, headers=auth(token))
                assert sent.status_code == 200, sent.text
                path, body = f"/rooms/{room_id}/redact/{sent.json()['event_id']}/t1", {}
        armed.touch()
        with pytest.raises(httpx.TransportError):
            httpx.put(node.url + V3 + path, json=body, headers=auth(token), timeout=20)
        assert node.proc is not None and node.proc.wait(timeout=20) == -signal.SIGKILL
        node.proc = None
        assert not armed.exists()  # the kill came after the event's commit
        assert node.database_problems() == []
        node.start()
        retried = httpx.put(node.url + V3 + path, json=body, headers=auth(token), timeout=20)
        assert retried.status_code == 200, retried.text
        kind = "m.room.redaction" if request_kind == "redact" else "m.room.message"
        made = [e["event_id"] for e in timeline(node, token, room_id) if e["type"] == kind]
        assert made == [retried.json()["event_id"]]
    finally:
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(timeout=10)
