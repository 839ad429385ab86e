"""Real nodes in separate processes on 127.0.0.1, driven through their control sockets.

Each node is ``python -m p2pserver run`` with its own data directory; nodes
meet only through ``--bootstrap``. Node 3 bootstraps to node 2 and is never
given node 1's address, so whatever passes between nodes 1 and 3 goes
through node 2.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pserver.node.control import control_request
from p2pserver.node.status import read_status

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class NodeProcess:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.data_dir = root / name
        self.data_dir.mkdir()
        # A short pulls interval as a backstop; flows here should not need it.
        (self.data_dir / "config.toml").write_text("sync_interval = 10\n")
        self.socket = root / f"{name}.sock"
        # The node picks its port on the first start (a port picked here could
        # be taken as another connection's source port before the node binds
        # it); restarts keep it.
        self.port = 0
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_name = ""
        self.address = ""

    def start(self, *bootstrap: str) -> NodeProcess:
        args = [
            sys.executable, "-m", "p2pserver", "run",
            "--data-dir", str(self.data_dir),
            "--listen", f"/ip4/127.0.0.1/tcp/{self.port}",
            "--control-socket", str(self.socket),
            "--client-listen", "127.0.0.1:0",
            # Loopback only: no multicast on the host's interfaces, and these
            # tests need nodes that do not all find each other.
            "--no-mdns",
        ]  # fmt: skip
        for address in bootstrap:
            args += ["--bootstrap", address]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        pid = self.proc.pid

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            status = read_status(self.data_dir)
            if status and status.get("pid") == pid and self.socket.exists():
                return status
            return None

        status = wait_for(ready, STARTUP_TIMEOUT, f"{self.name} to start")
        self.server_name = status["server_name"]
        self.address = status["listen_addresses"][0]
        self.port = int(self.address.split("/tcp/")[1].split("/")[0])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.proc = None

    def __call__(self, op: str, **fields: Any) -> dict[str, Any]:
        answer = control_request(self.socket, {"op": op, **fields})
        assert "error" not in answer, (self.name, op, answer)
        return answer

    def say(self, room_id: str, sender: str, content: dict[str, Any]) -> str:
        """Send an m.room.message; its event ID."""
        answer = self(
            "send", room_id=room_id, sender=sender, type="m.room.message", content=content
        )
        return str(answer["event_id"])

    def user(self, name: str) -> str:
        return f"@{name}:{self.server_name}"

    def status_of(self, event_id: str) -> str | None:
        return self("event", event_id=event_id)["status"]

    def has(self, event_id: str) -> bool:
        return self.status_of(event_id) == "accepted"

    def wait_has(self, *event_ids: str, timeout: float = 30.0) -> None:
        wait_for(
            lambda: all(self.has(e) for e in event_ids), timeout, f"{self.name} to get {event_ids}"
        )


@pytest.fixture
def root() -> Iterator[Path]:
    # Unix socket paths must stay under ~100 bytes: not under pytest's tmp_path.
    path = Path(tempfile.mkdtemp(prefix="p2pn", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nodes(root: Path) -> Iterator[Callable[[str], NodeProcess]]:
    made: list[NodeProcess] = []

    def make(name: str) -> NodeProcess:
        node = NodeProcess(root, name)
        made.append(node)
        return node

    yield make
    for node in made:
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(timeout=10)


def test_three_nodes_invite_join_both_ways_and_catch_up_through_a_member(nodes):
    n1 = nodes("n1").start()
    n2 = nodes("n2").start(n1.address)
    n3 = nodes("n3").start(n2.address)
    room = n1("create_room", user="alice", request={"preset": "private_chat"})["room_id"]
    # Node 2 joins by invite; events flow both ways.
    n2.wait_has(n1("invite", room_id=room, sender="alice", target=n2.user("bob"))["event_id"])
    n1.wait_has(n2("join", room_id=room, user="bob")["event_id"])
    hello = n1.say(room, "alice", {"body": "hello"})
    hi = n2.say(room, "bob", {"body": "hi"})
    n2.wait_has(hello)
    n1.wait_has(hi)
    # Node 3, which node 1 cannot reach, is invited and joins through node 2.
    invite = n1("invite", room_id=room, sender="alice", target=n3.user("carol"))["event_id"]
    n3.wait_has(invite)
    join = n3("join", room_id=room, user="carol")["event_id"]
    n1.wait_has(join)
    assert n3.server_name not in n1("peers")["connected"]
    # Node 3 goes away; the room moves on; node 1 goes away; node 3 comes back.
    n3.stop()
    missed = [n1.say(room, "alice", {"n": i}) for i in range(5)] + [n2.say(room, "bob", {"n": 9})]
    n2.wait_has(*missed)
    n1.stop(signal.SIGKILL)
    n3.start(n2.address)
    n3.wait_has(*missed)
    assert n3("room", room_id=room)["state"] == n2("room", room_id=room)["state"]
    bodies = [e["content"] for e in n3("messages", room_id=room, limit=50)["events"]]
    assert all({"n": i} in bodies for i in (0, 1, 2, 3, 4, 9))
    # Events from before node 3 was invited are in its DAG too (their content as
    # history visibility let node 2 serve them to a server that was only invited).
    assert n3.has(hello) and n3.has(hi)
    # And node 3's own messages reach node 2.
    back = n3.say(room, "carol", {"body": "back"})
    n2.wait_has(back)


def test_a_node_killed_with_sigkill_delivers_its_queue_after_restart(nodes):
    n1 = nodes("n1").start()
    n2 = nodes("n2").start(n1.address)
    room = n1("create_room", user="alice", request={"preset": "public_chat"})["room_id"]
    n2.wait_has(n1("invite", room_id=room, sender="alice", target=n2.user("bob"))["event_id"])
    n1.wait_has(n2("join", room_id=room, user="bob")["event_id"])
    n1.stop()
    queued = [n2.say(room, "bob", {"n": i}) for i in range(5)]
    wait_for(lambda: n2("peers")["queued"].get(n1.server_name) == 5, 10, "the queue")
    n2.stop(signal.SIGKILL)
    n2.start(n1.address)
    assert n2("peers")["queued"].get(n1.server_name) == 5  # survived the kill
    n1.start()
    n1.wait_has(*queued)
    wait_for(lambda: not n2("peers")["queued"].get(n1.server_name), 30, "the queue to drain")


def test_bad_peers_are_refused_while_the_node_serves_others(nodes):
    import trio

    from p2pserver.rooms.signing import SigningKey
    from p2pserver.transport.framing import MAX_REQUEST_FRAME
    from p2pserver.transport.libp2p_network import (
        PROTOCOL_ID,
        Libp2pNetwork,
        peer_id_for_server_name,
    )
    from p2pserver.transport.network import RemoteError

    n1 = nodes("n1").start()
    n2 = nodes("n2").start(n1.address)
    room = n1("create_room", user="alice", request={"preset": "public_chat"})["room_id"]
    n2.wait_has(n1("invite", room_id=room, sender="alice", target=n2.user("bob"))["event_id"])
    n1.wait_has(n2("join", room_id=room, user="bob")["event_id"])
    head = n1("room", room_id=room)["forward_extremities"][0]
    pdu = n1("event", event_id=head)["pdu"]
    mallory_key = SigningKey.generate()

    async def attack() -> None:
        from libp2p.peer.peerinfo import PeerInfo
        from multiaddr import Multiaddr

        mallory = Libp2pNetwork(mallory_key, listen_ips=["127.0.0.1"], port=0)
        async with mallory.running():
            address = n1.address.rsplit("/p2p/", 1)[0]
            mallory.add_peer_address(n1.server_name, [address])

            async def refused(method: str, body: dict, errcode: str) -> None:
                with pytest.raises(RemoteError) as info:
                    await mallory.request(n1.server_name, method, body, timeout=10)
                assert info.value.errcode == errcode, info.value

            # Claiming to be node 2.
            txn = {"txn_id": "1", "origin": n2.server_name, "origin_server_ts": 0, "pdus": []}
            await refused("send_transaction", txn, "M_FORBIDDEN")
            await refused(
                "make_join",
                {"room_id": room, "user_id": n2.user("bob"), "ver": ["12"]},
                "M_FORBIDDEN",
            )
            # A forged event (node 1's event with its content changed and re-signed
            # by mallory under node 1's name) and an unauthorised one.
            forged = dict(pdu, content={"body": "forged"})
            forged["signatures"] = {n1.server_name: {"ed25519:x": "A" * 86}}
            stranger = dict(pdu, sender=f"@m:{mallory_key.server_name}")
            txn = {
                "txn_id": "2",
                "origin": mallory_key.server_name,
                "origin_server_ts": 0,
                "pdus": [forged, stranger],
            }
            answer = await mallory.request(n1.server_name, "send_transaction", txn, timeout=10)
            assert all("error" in r for r in answer["pdus"].values()) and len(answer["pdus"]) == 2
            # Garbage and an oversized frame on raw streams: reset, peer struck.
            host = mallory._host
            assert host is not None
            peer_id = peer_id_for_server_name(n1.server_name)
            await host.connect(PeerInfo(peer_id, [Multiaddr(address)]))
            for garbage in (
                (9).to_bytes(4, "big") + b"\xff" * 9,
                (MAX_REQUEST_FRAME + 1).to_bytes(4, "big"),
            ):
                stream = await host.new_stream(peer_id, [PROTOCOL_ID])
                await stream.write(garbage)
                with trio.move_on_after(5):
                    try:
                        while await stream.read(65536):
                            pass
                    except Exception:
                        pass  # reset: what we expect

    trio.run(attack)
    # Node 1 still serves node 2, and events still flow.
    assert n1.proc is not None and n1.proc.poll() is None
    msg = n2.say(room, "bob", {"body": "still ok"})
    n1.wait_has(msg)
    log = n1.log.read_text()
    assert "protocol violation" in log


def test_peers_command_shows_connected_and_known_peers(nodes):
    n1 = nodes("n1").start()
    n2 = nodes("n2").start(n1.address)
    wait_for(lambda: n1.server_name in n2("peers")["connected"], 20, "the connection")
    out = subprocess.run(
        [sys.executable, "-m", "p2pserver", "peers", "--data-dir", str(n2.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "running" in out and n1.server_name in out and "connected" in out
    n2.stop()
    out = subprocess.run(
        [sys.executable, "-m", "p2pserver", "peers", "--data-dir", str(n2.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert '"running": false' in out


def test_run_refuses_a_bootstrap_address_without_a_peer_id(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "p2pserver", "run", "--data-dir", str(tmp_path), "--no-mdns"]
        + ["--bootstrap", "/ip4/127.0.0.1/tcp/1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert result.returncode == 2 and "/p2p/<PeerID>" in result.stderr
