"""Client-Server API figures: initial /sync, start-up time, idle memory.

Usage: .venv/bin/python benchmarks/client.py [--rooms 20] [--messages 10] [--samples 50]

- initial /sync: one user in ``--rooms`` rooms (each made by another user,
  with ``--messages`` messages), over HTTP on 127.0.0.1 with the default
  filter; p50 / p90 of ``--samples`` requests. Target: <= 20 ms.
- start-up: from launching ``python -m p2pserver.clientapi`` (a fresh data
  directory, so the key and database are created too) to the first 200 on
  ``/_matrix/client/versions``. Target: <= 1 s.
- idle RSS: the same process's resident memory one second after it first
  answered. Target: <= 60 MiB.
- idle RSS of a full node: a fresh ``p2pserver run --data-dir DIR``, the
  default configuration (client API, libp2p on every interface, federation,
  the DHT and mDNS), 2 s after its "ready" log line, no peers; median of
  ``--startup-runs``. Target: <= 60 MiB. It runs alone in a private network
  namespace (:class:`~p2pserver.discovery.lanlab.LanLab`: loopback and one
  LAN interface that exists only there), so mDNS has a LAN to advertise on
  and nothing leaves the machine. A second line gives the same with
  ``--no-mdns``, for comparison. Where namespaces cannot be made (not
  root), mDNS would go out on the machine's own LAN, so only the
  ``--no-mdns`` line is measured, on loopback, and the target line says why
  it is missing.
- cross-node latency: two ``p2pserver run`` processes on 127.0.0.1 (the
  second bootstraps to the first), one user on each in one room, each with
  a long-polling /sync loop running. ``--latency-messages`` messages,
  alternating senders, one at a time: from just before the PUT /send to the
  event's arrival in the other user's /sync. p50 / p95. Target: p50 <= 15 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import trio

from p2pserver.clientapi import serve_client_api
from p2pserver.discovery.lanlab import LanLab
from p2pserver.engine import RoomEngine
from p2pserver.node.config import NodeConfig
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage import Store

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.clientapi.test_two_nodes import READY, ClientNode, start_two_nodes  # noqa: E402

V3 = "/_matrix/client/v3"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class ServerThread:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        engine = RoomEngine(Store.open(), SigningKey.generate())
        config = NodeConfig(data_dir=Path("/nonexistent"), client_listen="127.0.0.1:0")
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_client_api, engine, None, config)
            self.url = handle.url
            self.token = trio.lowlevel.current_trio_token()
            self.cancel = nursery.cancel_scope
            self.ready.set()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self.cancel.cancel, trio_token=self.token)
        self.thread.join(10)


def register(http: httpx.Client, name: str) -> tuple[str, dict[str, str]]:
    body = {"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}}
    data = http.post(f"{V3}/register", json=body).json()
    return data["user_id"], {"Authorization": f"Bearer {data['access_token']}"}


def initial_sync(rooms: int, messages: int, samples: int) -> None:
    with ServerThread() as server, httpx.Client(base_url=server.url, timeout=60) as http:
        _, owner = register(http, "owner")
        user, headers = register(http, "reader")
        for r in range(rooms):
            room_id = http.post(
                f"{V3}/createRoom", headers=owner, json={"name": f"room {r}", "invite": [user]}
            ).json()["room_id"]
            http.post(f"{V3}/join/{room_id}", headers=headers).raise_for_status()
            for m in range(messages):
                http.put(
                    f"{V3}/rooms/{room_id}/send/m.room.message/{r}-{m}",
                    headers=owner,
                    json={"msgtype": "m.text", "body": f"message {m}"},
                ).raise_for_status()
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            response = http.get(f"{V3}/sync", headers=headers)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
        joined = len(response.json()["rooms"]["join"])
        assert joined == rooms, joined
        # The first answer also computes the unread counts, which later ones
        # take from memory while the rooms are unchanged.
        print(f"initial /sync, first request (cold): {times[0]:.1f} ms")
        print(
            f"initial /sync, {rooms} rooms x {messages} messages: "
            f"p50={pct(times, 50):.1f} ms  p90={pct(times, 90):.1f} ms  "
            f"min={min(times):.1f} ms  mean={statistics.fmean(times):.1f} ms  (target <= 20 ms)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def startup(runs: int) -> None:
    times, rss = [], []
    for _ in range(runs):
        port = free_port()
        with tempfile.TemporaryDirectory() as data_dir:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "p2pserver.clientapi",
                    "--data-dir",
                    data_dir,
                    "--client-listen",
                    f"127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                url = f"http://127.0.0.1:{port}/_matrix/client/versions"
                while True:
                    try:
                        if httpx.get(url, timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None:
                        raise RuntimeError("the server exited")
                    time.sleep(0.005)
                times.append(time.perf_counter() - started)
                time.sleep(1)
                rss.append(rss_mib(proc.pid))
            finally:
                proc.terminate()
                proc.wait(10)
    print(
        f"start-up to first /versions: p50={pct(times, 50) * 1000:.0f} ms  "
        f"max={max(times) * 1000:.0f} ms over {runs} runs  (target <= 1000 ms)"
    )
    print(
        f"idle RSS, client API only (python -m p2pserver.clientapi, 1 s after first "
        f"answer): {pct(rss, 50):.1f} MiB  (target <= 60 MiB)"
    )


def _node_rss(lab: LanLab | None, *options: str) -> float:
    """Idle RSS of one fresh ``p2pserver run [options]``, 2 s after it said "ready"."""
    with tempfile.TemporaryDirectory(prefix="p2pb", dir="/tmp") as root:
        argv = [sys.executable, "-m", "p2pserver", "run", "--data-dir", f"{root}/data", *options]
        if lab is None:  # the machine's own namespace: loopback only, no mDNS
            assert "--no-mdns" in options
            argv += [
                "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
                "--client-listen", f"127.0.0.1:{free_port()}",
            ]  # fmt: skip
        log = Path(root, "node.log")
        with log.open("wb") as out:
            if lab is not None:  # `ip netns exec` execs argv: the same process
                proc = lab.popen(0, argv, stdout=out, stderr=out, cwd=REPO)
            else:
                proc = subprocess.Popen(argv, stdout=out, stderr=out, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while not READY.search(log.read_text()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node not ready:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            time.sleep(2)
            if "--no-mdns" not in options and "mDNS: advertising" not in log.read_text():
                raise RuntimeError(f"mDNS is not running:\n{log.read_text()[-3000:]}")
            return rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def full_node_rss(runs: int) -> None:
    why_not = LanLab.unavailable()
    where = "alone on a private LAN" if why_not is None else "loopback only"
    with ExitStack() as stack:
        lab = stack.enter_context(LanLab(1)) if why_not is None else None
        for label, options, target in (
            ("default configuration, mDNS on", (), "  (target <= 60 MiB)"),
            ("--no-mdns", ("--no-mdns",), ""),
        ):
            if lab is None and "--no-mdns" not in options:
                print(f"idle RSS, full `p2pserver run` node, {label}: not measured ({why_not})")
                continue
            rss = [_node_rss(lab, *options) for _ in range(runs)]
            print(
                f"idle RSS, full `p2pserver run` node, {label} ({where}; 2 s after 'ready', "
                f"no peers): {pct(rss, 50):.1f} MiB  (median of {runs}; "
                f"max {max(rss):.1f} MiB){target}"
            )


async def _latency(n1: ClientNode, n2: ClientNode, messages: int) -> list[float]:
    async with (
        httpx.AsyncClient(base_url=n1.url, timeout=60) as h1,
        httpx.AsyncClient(base_url=n2.url, timeout=60) as h2,
    ):
        users: list[tuple[httpx.AsyncClient, dict[str, str]]] = []
        user_ids = []
        for http, name in ((h1, "alice"), (h2, "bob")):
            body = {"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}}
            data = (await http.post(f"{V3}/register", json=body)).json()
            users.append((http, {"Authorization": f"Bearer {data['access_token']}"}))
            user_ids.append(data["user_id"])
        created = await h1.post(
            f"{V3}/createRoom",
            headers=users[0][1],
            json={"preset": "private_chat", "invite": [user_ids[1]]},
        )
        room_id = created.json()["room_id"]
        # (index of the user whose /sync saw it, event ID or "join <user>") -> perf_counter
        arrived: dict[tuple[int, str], float] = {}
        changed = asyncio.Condition()

        async def sync_loop(me: int) -> None:
            http, headers = users[me]
            params = {"timeout": "30000"}
            while True:
                response = await http.get(f"{V3}/sync", headers=headers, params=params)
                now = time.perf_counter()
                data = response.json()
                params["since"] = data["next_batch"]
                room = data.get("rooms", {}).get("join", {}).get(room_id, {})
                for event in room.get("timeline", {}).get("events", []):
                    arrived.setdefault((me, event["event_id"]), now)
                    if (
                        event["type"] == "m.room.member"
                        and event["content"]["membership"] == "join"
                    ):
                        arrived.setdefault((me, f"join {event['state_key']}"), now)
                async with changed:
                    changed.notify_all()

        async def seen(me: int, key: str) -> float:
            async with changed:
                await asyncio.wait_for(changed.wait_for(lambda: (me, key) in arrived), 30)
            return arrived[(me, key)]

        loops = [asyncio.create_task(sync_loop(me)) for me in (0, 1)]
        try:
            # Bob's node must have had the invite before it can join.
            h2, bh = users[1]
            for _ in range(300):
                if (await h2.post(f"{V3}/join/{room_id}", headers=bh)).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            await seen(0, f"join {user_ids[1]}")
            times = []
            for i in range(messages + 10):  # the first 10 warm up
                sender = i % 2
                http, headers = users[sender]
                started = time.perf_counter()
                response = await http.put(
                    f"{V3}/rooms/{room_id}/send/m.room.message/lat{i}",
                    headers=headers,
                    json={"msgtype": "m.text", "body": f"m{i}"},
                )
                response.raise_for_status()
                delivered = await seen(1 - sender, response.json()["event_id"])
                if i >= 10:
                    times.append((delivered - started) * 1000)
            return times
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)


def cross_node_latency(messages: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pb", dir="/tmp") as root:
        n1, n2 = start_two_nodes(Path(root))
        try:
            times = asyncio.run(_latency(n1, n2, messages))
        finally:
            n2.stop()
            n1.stop()
    print(
        f"cross-node latency, send -> other user's long-poll /sync, {messages} messages "
        f"(alternating directions): p50={pct(times, 50):.1f} ms  p95={pct(times, 95):.1f} ms  "
        f"max={max(times):.1f} ms  (target p50 <= 15 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--latency-messages", type=int, default=200)
    args = parser.parse_args()
    initial_sync(args.rooms, args.messages, args.samples)
    startup(args.startup_runs)
    full_node_rss(args.startup_runs)
    cross_node_latency(args.latency_messages)


if __name__ == "__main__":
    main()
