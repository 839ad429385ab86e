"""mDNS for real: discovery processes in network namespaces on a private bridge.

The test builds its own LAN (:class:`~p2pserver.discovery.lanlab.LanLab`:
namespaces, veths, a bridge; addresses 10.231.x.y that exist only inside
it) and runs ``python -m p2pserver.discovery.probe`` in each namespace. It
skips, saying why, only where namespaces cannot be created.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pserver.discovery.lanlab import LanLab

REPO = Path(__file__).resolve().parents[2]
SECONDARY = "10.231.1.1/24"

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


def test_nodes_share_a_room_and_a_late_one_catches_up() -> None:
    """Federation over what discovery found: the room is found in the DHT's
    directory (read from mDNS neighbours) and joined through the servers its
    directory entry and room record name.

    A late joiner catches up with the room's state (its members) and the
    conversation from its join on. (History from before its join is not
    pulled: federation leaves that to backfill on demand.)
    """
    node = "tests.discovery.lan_node"
    with LanLab(3) as lab:
        a = Probe(lab, 0, lab.ips[0], "--create-room", module=node)
        b = Probe(lab, 1, lab.ips[1], "--join-public", module=node)
        name_a = a.wait_for(30, event="listening")["server_name"]
        name_b = b.wait_for(30, event="listening")["server_name"]
        room = a.wait_for(30, event="room")["room"]
        assert b.wait_for(60, event="room")["via"] == [name_a]
        a.wait_for(30, event="message", room=room, body=f"hello from {name_b}")
        b.wait_for(30, event="message", room=room, body=f"tick 2 from {name_a}")

        # A third node joins later and catches up.
        c = Probe(lab, 2, lab.ips[2], "--join-public", module=node)
        name_c = c.wait_for(30, event="listening")["server_name"]
        assert set(c.wait_for(60, event="room", room=room)["via"]) == {name_a, name_b}
        assert c.wait_for(10, event="members")["servers"] == sorted([name_a, name_b, name_c])
        for probe in (a, b):
            probe.wait_for(30, event="message", room=room, body=f"hello from {name_c}")
        for name in (name_a, name_b):
            # Ticks from after its join (history before it is not pulled).
            c.wait_until(30, lambda events, name=name: ticks_from(events, name) >= 2, "ticks")


def ticks_from(events: list[dict[str, Any]], origin: str) -> int:
    return sum(
        1
        for e in events
        if e.get("event") == "message" and e["origin"] == origin and e["body"].startswith("tick")
    )
