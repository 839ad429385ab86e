"""mDNS for real: processes in network namespaces on a private bridge.

The tests build their own LAN (:class:`~p2pserver.discovery.lanlab.LanLab`:
namespaces, veths, a bridge; addresses 10.231.x.y that exist only inside
it). The first runs ``python -m p2pserver.discovery.probe`` in each
namespace (advertising, finding, address changes, goodbyes, expiry); the
second runs real nodes (``p2pserver run`` with nothing but a data
directory) and drives them as Matrix clients do, through each node's
client API on its namespace's loopback (``LanLab.call``). They skip, saying
why, only where namespaces cannot be created.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from p2pserver.discovery.directory import HOW_MDNS
from p2pserver.discovery.lanlab import LanLab
from p2pserver.node.status import read_status
from tests.clientapi.test_two_nodes import READY

REPO = Path(__file__).resolve().parents[2]
SECONDARY = "10.231.1.1/24"
# Waits for something one node does in reaction to another (generous: two
# busy cores, three nodes).
WAIT = 30.0

why_not = LanLab.unavailable()
pytestmark = pytest.mark.skipif(why_not is not None, reason=f"no network namespaces: {why_not}")


class Probe:
    """A probe process (or another ``module``) and the JSON events it printed."""

    def __init__(
        self, lab: LanLab, index: int, *args: str, module: str = "p2pserver.discovery.probe"
    ) -> None:
        argv = [sys.executable, "-m", module, "--listen-ip", *args]
        # stderr goes to a file: an undrained pipe would stall a chatty process
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the probe)
        self.process = lab.popen(
            index, argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=REPO
        )
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(json.loads(line))
        self._queue.put(None)

    def wait_for(self, timeout: float, **match: Any) -> dict[str, Any]:
        """The first event (already seen or to come) with these fields."""

        def matching(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            for event in events:
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        return self.wait_until(timeout, matching, str(match))

    def wait_until(
        self, timeout: float, check: Callable[[list[dict[str, Any]]], Any], what: str
    ) -> Any:
        """Wait until ``check(events so far)`` returns something true; return it."""
        deadline = time.monotonic() + timeout
        while not (found := check(self.events)):
            try:
                event = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                event = None
            if event is None:
                self.stderr.seek(0)
                stderr = self.stderr.read()[-3000:]
                raise AssertionError(f"no {what} in {timeout}s; got {self.events}\n{stderr}")
            self.events.append(event)
        return found


def test_nodes_on_a_lan_find_each_other_with_no_configuration() -> None:
    with LanLab(3) as lab:
        lab.add_address(0, SECONDARY)
        ip_a2 = SECONDARY.split("/")[0]
        common = ["--seconds", "60", "--mdns-ttl", "6", "--mdns-recheck", "0.5"]
        a = Probe(lab, 0, lab.ips[0], "--listen-ip", ip_a2, *common)
        b = Probe(lab, 1, lab.ips[1], *common)
        name_a = a.wait_for(30, event="listening")["server_name"]
        name_b = b.wait_for(30, event="listening")["server_name"]

        # Each sees the other, connects through the advertised address, and talks.
        seen_a = b.wait_for(15, event="nearby", peer=name_a)
        assert sorted(seen_a["addrs"]) == sorted(a.wait_for(1, event="listening")["addrs"]), (
            "A advertises both concrete addresses"
        )
        assert all("0.0.0.0" not in addr for addr in seen_a["addrs"])
        b.wait_for(15, event="pong", peer=name_a)
        a.wait_for(15, event="nearby", peer=name_b)
        a.wait_for(15, event="pong", peer=name_b)

        # A third node joins later and is seen by both.
        c = Probe(lab, 2, lab.ips[2], *common[:1], "12", *common[2:])
        name_c = c.wait_for(30, event="listening")["server_name"]
        for probe in (a, b):
            probe.wait_for(15, event="pong", peer=name_c)
        c.wait_for(15, event="pong", peer=name_a)
        c.wait_for(15, event="pong", peer=name_b)

        # A's second address goes away: it re-advertises without it.
        lab.remove_address(0, SECONDARY)
        changed = b.wait_for(15, event="lan_addrs", peer=name_a)
        assert all(ip_a2 not in addr for addr in changed["addrs"]) and changed["addrs"]

        # C stops (goodbye): the others notice at once.
        stopped = c.wait_for(30, event="stopped")
        assert stopped["max_loop_lag_s"] < 0.5, "mDNS must never block the trio loop"
        b.wait_for(10, event="lost", peer=name_c)

        # A vanishes without a goodbye: its records expire (TTL 6 s here).
        a.process.send_signal(signal.SIGKILL)
        b.wait_for(30, event="lost", peer=name_a)

        b.process.send_signal(signal.SIGINT)
        b.process.wait(timeout=20)


class LanNode:
    """A ``p2pserver run`` process in one of the lab's namespaces, configured
    with nothing but its data directory: its client API is the default
    127.0.0.1:8008 of that namespace, and it finds its peers by itself."""

    def __init__(self, lab: LanLab, index: int, root: Path) -> None:
        self.lab, self.index = lab, index
        self.data_dir = root / f"node{index}"
        self.log = root / f"node{index}.log"
        with self.log.open("ab") as log:
            argv = [sys.executable, "-m", "p2pserver", "run", "--data-dir", str(self.data_dir)]
            self.process = lab.popen(index, argv, stdout=log, stderr=log, cwd=REPO)
        self.server_name = self.url = ""

    def wait_ready(self, timeout: float = 45) -> LanNode:
        deadline = time.monotonic() + timeout
        while not (match := READY.search(self.log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if self.process.poll() is not None else "not ready"
                raise AssertionError(f"node {self.index} {state}:\n{self.tail()}")
            time.sleep(0.1)
        self.server_name, self.url = match[1], match[2]
        assert self.url == "http://127.0.0.1:8008", self.url  # the default, untouched
        return self

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def connected(self) -> set[str]:
        """The peers the node's snapshot (``p2pserver peers``) says it is connected to."""
        status = read_status(self.data_dir)
        return set(status["connected"]) if status else set()

    def found_by(self, server_name: str) -> list[str]:
        status = read_status(self.data_dir) or {}
        return next(
            (p["found_by"] for p in status.get("around", []) if p["server_name"] == server_name),
            [],
        )

    def request(self, method: str, path: str, body: Any = None, token: str = "",
                timeout: float = 30) -> dict[str, Any]:  # fmt: skip
        """A client API request, made from inside the node's namespace."""
        try:
            return self.lab.call(
                self.index, http_json, method, self.url + path, body, token, timeout
            )
        except AssertionError as e:
            raise AssertionError(f"node {self.index}: {e}\n{self.tail()}") from None

    def stop(self) -> None:
        """SIGINT, as Ctrl-C would: the node must stop by itself, promptly and cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise AssertionError(f"node {self.index} ignored SIGINT:\n{self.tail()}") from None
        assert self.process.returncode == 0, f"node {self.index} failed:\n{self.tail()}"


def http_json(method: str, url: str, body: Any, token: str, timeout: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            result: dict[str, Any] = json.load(response)
            return result
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {url}: {e.code} {e.read().decode()[:500]}") from None


class User:
    """One registered user of a node, with a /sync stream."""

    def __init__(self, node: LanNode, name: str) -> None:
        self.node = node
        body = {"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}}
        registered = node.request("POST", "/_matrix/client/v3/register", body)
        self.user_id, self.token = registered["user_id"], registered["access_token"]
        assert self.user_id == f"@{name}:{node.server_name}"
        self.since = self.call("GET", "/sync?timeout=0")["next_batch"]
        self.txn = 0

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return self.node.request(method, "/_matrix/client/v3" + path, body, self.token)

    def sync_until(
        self, found: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT
    ) -> None:
        """Long-poll /sync until one answer satisfies ``found``."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.call("GET", f"/sync?timeout=2000&since={self.since}")
            self.since = response["next_batch"]
            if found(response):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user_id}: no {what} in {timeout}s\n{self.node.tail()}")

    def join(self, room_id: str, via: str) -> None:
        query = urllib.parse.urlencode({"server_name": via})
        joined = self.call("POST", f"/join/{urllib.parse.quote(room_id)}?{query}", {})
        assert joined["room_id"] == room_id
        self.sync_until(lambda r: room_id in r["rooms"]["join"], f"own join of {room_id}")

    def say(self, room_id: str, body: str) -> None:
        self.txn += 1
        path = f"/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/t{self.txn}"
        assert self.call("PUT", path, {"msgtype": "m.text", "body": body})["event_id"]

    def history(self, room_id: str) -> list[str]:
        """Every message body /messages gives paginating back from now, oldest first."""
        bodies: list[str] = []
        token = ""
        for _ in range(20):
            query = urllib.parse.urlencode(
                {"dir": "b", "limit": 10, **({"from": token} if token else {})}
            )
            page = self.call("GET", f"/rooms/{urllib.parse.quote(room_id)}/messages?{query}")
            bodies[:0] = message_bodies(page["chunk"])[::-1]  # the chunk is newest first
            if not page["chunk"] or "end" not in page:
                return bodies
            token = page["end"]
        raise AssertionError(f"{self.user_id}: /messages never ends")


def message_bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def timeline(response: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    room = response["rooms"]["join"].get(room_id)
    return room["timeline"]["events"] if room else []


def saw_message(room_id: str, body: str) -> Callable[[dict[str, Any]], bool]:
    return lambda response: body in message_bodies(timeline(response, room_id))


def saw_join(room_id: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda response: any(
        e["type"] == "m.room.member" and e["state_key"] == user_id
        and e["content"]["membership"] == "join"
        for e in timeline(response, room_id)
    )  # fmt: skip


def wait_connected(node: LanNode, others: list[LanNode], timeout: float = WAIT) -> None:
    """Until ``node`` is connected to every one of ``others`` and has seen
    each on the LAN (mDNS; a connection the other made may come first)."""
    deadline = time.monotonic() + timeout
    names = {other.server_name for other in others}
    while not (
        names <= node.connected() and all(HOW_MDNS in node.found_by(name) for name in names)
    ):
        if time.monotonic() > deadline:
            found_by = {name: node.found_by(name) for name in names}
            raise AssertionError(
                f"node {node.index} connected to {node.connected()}, not {names} "
                f"(found by {found_by})\n{node.tail()}"
            )
        time.sleep(0.2)


@pytest.fixture
def lan() -> Iterator[tuple[LanLab, Path]]:
    with tempfile.TemporaryDirectory(prefix="p2plan") as root, LanLab(3) as lab:
        yield lab, Path(root)


def test_nodes_share_a_room_and_a_late_one_catches_up(lan: tuple[LanLab, Path]) -> None:
    """Three ``p2pserver run`` nodes with no configuration: A and B find each
    other on the LAN and share a room; C starts later, joins, sees the
    conversation from before its join (history from its peers) and what is
    said after it."""
    lab, root = lan
    with ExitStack() as stop:
        a, b = LanNode(lab, 0, root), LanNode(lab, 1, root)
        stop.callback(a.stop)
        stop.callback(b.stop)
        a.wait_ready(), b.wait_ready()
        alice, bob = User(a, "alice"), User(b, "bob")
        wait_connected(a, [b])
        wait_connected(b, [a])

        created = alice.call("POST", "/createRoom", {"preset": "public_chat", "name": "lan"})
        room = created["room_id"]
        bob.join(room, via=a.server_name)
        alice.sync_until(saw_join(room, bob.user_id), "bob's join")
        alice.say(room, "hello from alice")
        bob.sync_until(saw_message(room, "hello from alice"), "alice's message")
        bob.say(room, "hello from bob")
        alice.sync_until(saw_message(room, "hello from bob"), "bob's message")

        # C starts later, with no more configuration than the others.
        c = LanNode(lab, 2, root)
        stop.callback(c.stop)
        c.wait_ready()
        carol = User(c, "carol")
        wait_connected(c, [a, b])
        carol.join(room, via=a.server_name)
        alice.sync_until(saw_join(room, carol.user_id), "carol's join")
        alice.say(room, "welcome carol")
        carol.sync_until(saw_message(room, "welcome carol"), "a message after her join")
        # What was said before C joined, paginated back from now.
        assert carol.history(room) == ["hello from alice", "hello from bob", "welcome carol"]


def test_nodes_switched_on_before_their_network_came_up_find_each_other(
    lan: tuple[LanLab, Path],
) -> None:
    """Both nodes start with only loopback; the LAN's addresses come later (a device
    joining an ad-hoc network after boot): each listens on and advertises its new
    address, and they connect."""
    lab, root = lan
    with ExitStack() as stop:
        for i in (0, 1):
            lab.remove_address(i, f"{lab.ips[i]}/24")
        a, b = LanNode(lab, 0, root), LanNode(lab, 1, root)
        stop.callback(a.stop)
        stop.callback(b.stop)
        a.wait_ready(), b.wait_ready()
        for i in (0, 1):
            lab.add_address(i, f"{lab.ips[i]}/24")
        wait_connected(a, [b])
        wait_connected(b, [a])
