"""Running a scenario: nodes, room, traffic and timeline in virtual time; the Python API.

::

    from sims import load_scenario, Simulation
    result = Simulation(load_scenario("outage", {"nodes.count": 10}), seed=3).run()
    result.table("messages")          # list of dicts
    result.dataframe("messages")      # the same as a pandas DataFrame (pandas needed)
    result.write("out/")              # CSV + JSON + summary.json + PNG plots

Theory of operation. :meth:`Simulation.run` builds a :class:`~sims.network.SimHub`
and one :class:`~sims.node.SimNode` per scenario node, then runs under
:func:`sims.determinism.deterministic_run` a fixed set of tasks:

- the hub's scheduler; the nodes (started at their drawn start times);
- the room setup: the creator's user creates the room, invites each
  member, and each member's user joins once its server holds the invite;
- the traffic: every message's time and sender are drawn up front from the
  ``traffic`` stream, then each send runs as a task of its sender node
  (a sender that is down or not joined skips its turn);
- the timeline (``[[events]]``), in time order, file order on ties;
- the observer: state agreement every ``sample_interval``, convergence
  watches after each heal, discovery completion and progress, all in one
  task (:meth:`Simulation.observe`).

Everything a node's *user* does runs as a task of that node
(:meth:`SimNode.spawn`), so a crash cancels it like the rest of the node.
Observation never changes the results: an extra task, or a task waking
at the same instant as a node's timer, would change trio's (seeded)
shuffle of runnable tasks and with it every later step. So all observation
runs in one task that wakes only at offset instants, alone; what is
observed, and how often, leaves the nodes' trajectory as it is.

Convergence at time t: every running node whose user is joined in its own
view has the same resolved room state, as held (SHA-256 of the canonical
JSON of its sorted ``[type, state_key, event_id, form]``, the form being
whole or redacted: :func:`held_state`), and holds every message due at it.
A full heal (every link up) starts a watch that polls every
``convergence_poll`` seconds for at most ``settle`` seconds; it records when the states first agreed
(``state_time``) and when everything had converged (``convergence_time``),
both counted from the heal.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pserver.engine.engine import RoomEngine
from p2pserver.engine.notifier import RoomUpdate
from p2pserver.federation.membership import fill_template
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.errors import MatrixError
from p2pserver.transport.network import NetworkError
from sims.determinism import Seeds, deterministic_run, hash_seed, virtual_clock_ms
from sims.metrics import Recorder, traffic_rows, write_json, write_table
from sims.network import SimHub
from sims.node import SimNode
from sims.scenario import Action, Scenario, ScenarioError

ProgressCallback = Callable[[float, float, str], None]
"""``progress(virtual_now, virtual_end, note)``."""

PROGRESS_STEPS = 200
# Observation happens this long after round times, where no node timer fires.
OBSERVER_OFFSET = 0.000_123_457
INVITE_POLL = 0.25


def held_state(
    state: Mapping[tuple[str, str], str], redacted: Collection[str] = ()
) -> list[list[str]]:
    """A resolved state as held: sorted ``[type, state_key, event_id, form]``,
    ``form`` being "redacted" for the events in ``redacted``, else "whole".

    The form counts because a redacted copy has the same event ID as the
    whole event (the ID hashes the redacted form): a node holding the room's
    name stripped shows its clients no name, whatever the IDs say.
    """
    return sorted(
        [t, k, e, "redacted" if e in redacted else "whole"] for (t, k), e in state.items()
    )


def state_fingerprint(
    state: Mapping[tuple[str, str], str], redacted: Collection[str] = ()
) -> bytes:
    """SHA-256 of the canonical JSON of :func:`held_state`."""
    return hashlib.sha256(encode_canonical_json(held_state(state, redacted))).digest()


@dataclass
class SimResult:
    """What a run produced. Tables are lists of flat dicts (see :mod:`sims.metrics`)."""

    scenario: Scenario
    seed: int
    summary: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    perf: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None  # the fuzzer's report when a check failed

    def table(self, name: str) -> list[dict[str, Any]]:
        return self.tables[name]

    def dataframe(self, name: str) -> Any:
        import pandas  # optional: only for notebooks

        return pandas.DataFrame.from_records(self.tables[name])

    def write(self, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
        """Write every table (CSV and JSON), summary.json, perf.json and the plots."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, rows in self.tables.items():
            written += write_table(out, name, rows)
        write_json(out / "summary.json", self.summary)
        write_json(out / "perf.json", self.perf)
        written += [out / "summary.json", out / "perf.json"]
        if plots:
            from sims.plots import plot_result

            written += plot_result(self, out)
        return written


class Simulation:
    """One run of a (timeline) scenario with one seed."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int | None = None,
        workdir: str | Path | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.seeds = Seeds(self.seed)
        self.workdir = Path(workdir) if workdir is not None else None
        if self.workdir is not None and any((self.workdir / "nodes").glob("*")):
            # The nodes would open the earlier run's databases: not this scenario's start.
            raise ScenarioError(
                f"workdir {self.workdir} holds the node databases of an earlier run "
                "(nodes/); give an empty or new folder"
            )
        self.progress = progress
        self.room_id: str | None = None
        self.nodes: list[SimNode] = []
        self._fingerprints: dict[tuple[int, int, frozenset[str]], bytes] = {}
        self._observations: list[tuple[float, int, Callable[[], bool | None], float | None]] = []
        self._observation_seq = itertools.count()
        self._observer_wait: trio.CancelScope | None = None

    # --- entry point ------------------------------------------------------------------

    def run(self) -> SimResult:
        wall = time.perf_counter()
        cpu = time.process_time()
        with tempfile.TemporaryDirectory(prefix="p2psim-") as tmp:
            base = self.workdir or Path(tmp)
            result = deterministic_run(self._main, base, seed=self.seed)
            for node in self.nodes:
                node.close()
        result.perf = {
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "nodes": len(self.nodes),
        }
        return result

    async def _main(self, base: Path) -> SimResult:
        self.t0 = trio.current_time()
        self.build(base)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.hub.run)
            await self.run_tasks(nursery)
            nursery.cancel_scope.cancel()
        return self.result()

    # --- building ---------------------------------------------------------------------

    def build(self, base: Path) -> None:
        """The hub and the nodes (called inside the trio run)."""
        sc = self.scenario
        net = sc.network
        self.clock = virtual_clock_ms(self.t0)
        self.hub = SimHub(
            self.seeds,
            default=net.default,
            partition_mode=net.partition_mode,
            dial_round_trips=net.dial_round_trips,
            max_retransmits=net.max_retransmits,
            min_rto=net.min_rto,
            keepalive_timeout=net.keepalive_timeout,
            connect_timeout=net.connect_timeout,
            dht="dht" in net.discovery,
            track_links=net.track_links,
        )
        if sc.nodes.storage == "disk":
            (base / "nodes").mkdir(parents=True, exist_ok=True)
        self.nodes = [
            SimNode(
                i,
                self.seeds,
                self.hub,
                config=sc.federation,
                clock=self.clock,
                db_path=(base / "nodes" / f"{i}.db") if sc.nodes.storage == "disk" else None,
                cache_events=sc.nodes.cache_events,
            )
            for i in range(sc.nodes.count)
        ]
        names = [n.server_name for n in self.nodes]
        if "static" in net.discovery:
            everyone = set(names)
            for node in self.nodes:
                node.bootstrap = everyone - {node.server_name}
        for seg in sc.segments:
            self.hub.add_segment(
                seg.name,
                [names[i] for i in seg.nodes],
                seg.profile,
                mdns=seg.mdns and "mdns" in net.discovery,
                mdns_interval=seg.mdns_interval,
            )
        for link in net.links:
            for a in link.a:
                for b in link.b:
                    if a != b:
                        self.hub.set_profile(names[a], names[b], link.profile)
        self.recorder = Recorder(names, self.t0)

    def now(self) -> float:
        """Virtual seconds since the run began."""
        return trio.current_time() - self.t0

    async def sleep_until(self, t: float) -> None:
        await trio.sleep_until(self.t0 + t)

    def log(self, action: str, nodes: Any = (), detail: str = "") -> None:
        self.recorder.log(trio.current_time(), action, nodes, detail)

    # --- the run ----------------------------------------------------------------------

    async def run_tasks(self, nursery: trio.Nursery) -> None:
        sc = self.scenario
        await nursery.start(self._observer)
        step = max(sc.duration / PROGRESS_STEPS, 1.0)
        self.observe(0.0, lambda: self._tick(sc.duration), every=step)
        self.observe(sc.metrics.sample_interval, self.sample, every=sc.metrics.sample_interval)
        if sc.room is not None and sc.room.setup == "prefab":
            await self.prefab_room()
        await self._start_nodes(nursery)
        if self.discovery_watch_needed():
            self.watch_discovery()
        if sc.room is not None:
            if sc.room.setup == "protocol":
                nursery.start_soon(self._setup_room)
            nursery.start_soon(self._traffic)
        nursery.start_soon(self._timeline)
        await self.sleep_until(sc.duration)
        self.sample()
        if self.progress is not None:
            self.progress(sc.duration, sc.duration, self.progress_note())

    async def _start_nodes(self, nursery: trio.Nursery) -> None:
        spread = self.scenario.nodes.start_spread
        rng = self.seeds.rng("start")
        order = sorted(
            (rng.uniform(0, spread) if spread else 0.0, i) for i in range(len(self.nodes))
        )
        if spread:
            nursery.start_soon(self._staggered_start, order)
        else:
            for _, i in order:
                await self.start_node(self.nodes[i])

    async def _staggered_start(self, order: list[tuple[float, int]]) -> None:
        for at, i in order:
            await self.sleep_until(at)
            await self.start_node(self.nodes[i])

    async def start_node(self, node: SimNode) -> None:
        await node.start(self.nursery, [self._wire])

    def _wire(self, node: SimNode) -> None:
        """Follow a new incarnation's room updates."""
        assert node.federation is not None
        index = node.index
        recorder = self.recorder
        store = node.store

        me = ("m.room.member", node.user_id)

        def listener(update: RoomUpdate) -> None:
            if me in update.state_delta and update.room_id == self.room_id:
                recorder.self_joined[index] = node.is_joined(update.room_id)
            recorder.on_update(
                index, update, trio.current_time(), lambda: store.joined_servers(update.room_id)
            )

        if self.room_id is not None:
            recorder.self_joined[index] = node.is_joined(self.room_id)
        node.federation.engine.notifier.add_listener(listener)

    def _tick(self, end: float) -> None:
        if self.progress is not None:
            self.progress(self.now(), end, self.progress_note())

    # --- the observer -----------------------------------------------------------------

    def observe(
        self, at: float, fn: Callable[[], bool | None], *, every: float | None = None
    ) -> None:
        """Call ``fn()`` at virtual time ``at`` (then every ``every`` s while it returns not False).

        Observation must not change what it observes. It runs in one task
        started with the run, whatever is observed, and it wakes only at
        times offset by :data:`OBSERVER_OFFSET`, so it is alone in its
        batch of trio's scheduler and leaves the scheduler's shuffles (and
        so the nodes' timing) as they would be without it.
        """
        at = max(at, self.now()) + OBSERVER_OFFSET
        heapq.heappush(self._observations, (at, next(self._observation_seq), fn, every))
        wait = self._observer_wait
        if wait is not None and self.t0 + at < wait.deadline:
            wait.deadline = self.t0 + at

    async def _observer(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._observations
        task_status.started()
        while True:
            now = self.now()
            while heap and heap[0][0] <= now:
                at, _, fn, every = heapq.heappop(heap)
                if fn() is not False and every is not None:
                    heapq.heappush(heap, (at + every, next(self._observation_seq), fn, every))
            deadline = self.t0 + heap[0][0] if heap else math.inf
            with trio.CancelScope(deadline=deadline) as self._observer_wait:
                await trio.sleep_forever()
            self._observer_wait = None

    def progress_note(self) -> str:
        return f"{len(self.recorder.messages)} msgs"

    # --- room and traffic -------------------------------------------------------------

    def power_request(self) -> dict[str, Any]:
        room = self.scenario.room
        assert room is not None
        request: dict[str, Any] = {"preset": room.preset}
        if room.power:
            defaults = {"users_default": 0}
            request["power_level_content_override"] = {
                **defaults,
                "users": {self.nodes[i].user_id: level for i, level in room.power},
            }
        return request

    async def _setup_room(self) -> None:
        room = self.scenario.room
        assert room is not None
        await self.sleep_until(room.at)
        creator = self.nodes[room.creator]
        await self.wait_for(lambda: creator.running, timeout=math.inf)
        assert creator.federation is not None
        self.room_id = await creator.federation.engine.create_room(
            creator.user_id, self.power_request()
        )
        self.recorder.room_id = self.room_id
        self.recorder.self_joined[creator.index] = creator.is_joined(self.room_id)
        self.log("create_room", [room.creator], self.room_id)
        async with trio.open_nursery() as setup:
            for i in room.members:
                setup.start_soon(self.invite_and_join, self.nodes[i])
        ready = [i for i in room.members if self.nodes[i].is_joined(self.room_id)]
        self.log("room_ready", ready, f"{len(ready)} of {len(room.members)} members joined")

    async def prefab_room(self) -> None:
        """Build the room's first events once, on the creator; members start from a copy.

        The creator's engine (no peers: nothing to fetch) creates the room;
        each member's join is made the way a remote join is -- the creator's
        ``make_join`` template, filled and signed with the member's key --
        and received by the creator's engine with every check. Then each
        member's database becomes a copy of the creator's: as if all the joins
        had propagated, which is what a large room's history looks like to a
        node that holds it. Only for ``storage = "disk"``.
        """
        room = self.scenario.room
        assert room is not None
        creator = self.nodes[room.creator]
        assert creator.db_path is not None
        engine = RoomEngine(creator.store, creator.key, clock=self.clock)
        room_id = await engine.create_room(creator.user_id, self.power_request())
        for i in room.members:
            node = self.nodes[i]
            template, version = engine.build_membership_template(
                room_id, node.user_id, "join", now_ms=self.clock()
            )
            event = fill_template(
                template, version, node.key, server_name=node.server_name, now_ms=self.clock()
            )
            result = await engine.receive_pdu(node.server_name, event.get_pdu_json())
            if not result.accepted:
                raise RuntimeError(f"prefab join of node {i} refused: {result.reason}")
        creator.store.close()
        for i in room.members:
            node = self.nodes[i]
            assert node.db_path is not None
            node.store.close()
            shutil.copyfile(creator.db_path, node.db_path)
            node.store = node.reopen_store()
        creator.store = creator.reopen_store()
        self.room_id = self.recorder.room_id = room_id
        for node in self.nodes:
            self.recorder.self_joined[node.index] = node.is_joined(room_id)
        self.log("prefab_room", [room.creator], f"{room_id}: {len(room.members)} members joined")

    async def invite_and_join(self, node: SimNode, *, timeout: float | None = None) -> bool:
        """The creator invites ``node``'s user; once its server holds the invite, it joins."""
        room_id = self.room_id
        assert room_id is not None and self.scenario.room is not None
        creator = self.nodes[self.scenario.room.creator]
        timeout = self.scenario.metrics.settle if timeout is None else timeout
        invited = trio.Event()
        holder: list[str] = []

        async def invite() -> None:
            assert creator.federation is not None
            try:
                holder.append(
                    await creator.federation.invite(room_id, creator.user_id, node.user_id)
                )
            except (MatrixError, NetworkError) as exc:
                self.log("invite_failed", [node.index], str(exc))
            invited.set()

        if not creator.spawn(invite):
            self.log("invite_failed", [node.index], "creator down")
            return False
        await invited.wait()
        if not holder:
            return False
        invite_id = holder[0]
        if not await self.wait_for(lambda: node.running and node.holds(invite_id), timeout=timeout):
            self.log("join_failed", [node.index], "invite never arrived")
            return False
        return await self.join(node, timeout=timeout)

    async def join(self, node: SimNode, *, timeout: float) -> bool:
        """``node``'s user joins (locally: its server holds the room); retried until ``timeout``."""
        room_id = self.room_id
        assert room_id is not None
        deadline = self.now() + timeout
        while self.now() < deadline:
            done = trio.Event()
            errors: list[str] = []

            async def attempt(done: trio.Event = done, errors: list[str] = errors) -> None:
                try:
                    assert node.federation is not None
                    await node.federation.join(room_id, node.user_id)
                except (MatrixError, NetworkError) as exc:
                    errors.append(str(exc))
                finally:
                    done.set()

            if node.spawn(attempt):
                with trio.move_on_after(max(deadline - self.now(), 0.0)):
                    await done.wait()
                if done.is_set() and not errors:
                    return True
            await trio.sleep(1.0)
        self.log("join_failed", [node.index], "timed out")
        return False

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float, step: float = INVITE_POLL
    ) -> bool:
        deadline = self.now() + timeout
        while not predicate():
            if self.now() >= deadline:
                return False
            await trio.sleep(step)
        return True

    def traffic_plan(self) -> list[tuple[float, int, int]]:
        """(time, sender, body bytes) of every message, drawn from the seed up front."""
        rng = self.seeds.rng("traffic")
        plan: list[tuple[float, int, int, int]] = []
        for k, spec in enumerate(self.scenario.traffic):
            times: list[float] = []
            if spec.count is not None:
                times = sorted(rng.uniform(spec.start, spec.end) for _ in range(spec.count))
            elif spec.rate:
                t = spec.start
                while True:
                    t += rng.expovariate(spec.rate)
                    if t >= spec.end:
                        break
                    times.append(t)
            for t in times:
                plan.append((t, k, rng.choice(spec.senders), spec.body_bytes))
        plan.sort()
        return [(t, sender, size) for t, _, sender, size in plan]

    async def _traffic(self) -> None:
        plan = self.traffic_plan()
        for seq, (t, sender, size) in enumerate(plan):
            await self.sleep_until(t)
            self.send_message(self.nodes[sender], seq, size)

    def send_message(self, node: SimNode, seq: int, size: int) -> None:
        room_id = self.room_id
        if room_id is None or not node.running or not node.is_joined(room_id):
            self.recorder.skipped_sends += 1
            return
        body = f"m{seq} "
        content = {"msgtype": "m.text", "body": body + "x" * max(0, size - len(body)), "sim": seq}

        async def send() -> None:
            assert node.federation is not None
            try:
                await node.federation.engine.send_message(room_id, node.user_id, content)
            except MatrixError as exc:
                self.recorder.failed_sends += 1
                self.log("send_failed", [node.index], f"m{seq}: {exc.message}")

        node.spawn(send)

    # --- the timeline -----------------------------------------------------------------

    async def _timeline(self) -> None:
        self._extra_seq = 1_000_000_000  # messages from [[events]] get their own seq range
        for action in self.scenario.events:
            await self.sleep_until(action.at)
            await self.do(action)

    async def do(self, action: Action) -> None:
        p = action.params
        names = [n.server_name for n in self.nodes]
        kind = action.action
        if kind == "partition":
            self.hub.partition(*[[names[i] for i in g] for g in p["groups"]])
            self.log("partition", (), " | ".join(" ".join(map(str, g)) for g in p["groups"]))
        elif kind == "heal" and "a" in p:
            # A partial heal: other cuts may stay, so no convergence is awaited.
            for a in p["a"]:
                for b in p["b"]:
                    if a != b:
                        self.hub.set_link(names[a], names[b], up=True)
            self.log("heal", p["a"], "with " + " ".join(map(str, p["b"])))
        elif kind == "heal":
            self.hub.heal()
            self.log("heal")
            self.recorder.convergence.append({})
            self.watch_convergence(len(self.recorder.convergence) - 1)
        elif kind == "cut":
            self.hub.cut([names[i] for i in p["a"]], [names[i] for i in p["b"]])
            self.log("cut", p["a"], "from " + " ".join(map(str, p["b"])))
        elif kind == "set_link":
            for a in p["a"]:
                for b in p["b"]:
                    if a != b:
                        self.hub.set_profile(names[a], names[b], p["profile"])
            self.log("set_link", p["a"], "to " + " ".join(map(str, p["b"])))
        elif kind == "crash":
            for i in p["nodes"]:
                if self.nodes[i].running:
                    self.nodes[i].crash()
            self.log("crash", p["nodes"])
        elif kind == "restart":
            for i in p["nodes"]:
                if not self.nodes[i].running:
                    await self.start_node(self.nodes[i])
            self.log("restart", p["nodes"])
        elif kind == "churn":
            for i in p["nodes"]:
                self.nursery.start_soon(self._churn, action, self.nodes[i])
            self.log("churn", p["nodes"], f"until {p['until']}")
        elif kind == "state":
            for i in p["nodes"]:
                self.send_state(self.nodes[i], p["type"], p["state_key"], p["content"])
            self.log("state", p["nodes"], f"{p['type']} {p['state_key']!r}")
        elif kind == "power":
            for i in p["nodes"]:
                self.send_power(self.nodes[i], p["users"])
            self.log("power", p["nodes"], " ".join(f"{u}={lv}" for u, lv in p["users"].items()))
        elif kind == "message":
            for i in p["nodes"]:
                for _ in range(p["count"]):
                    self.send_message(self.nodes[i], self._extra_seq, 64)
                    self._extra_seq += 1
            self.log("message", p["nodes"], f"x{p['count']}")
        elif kind == "leave":
            for i in p["nodes"]:
                self.leave(self.nodes[i])
            self.log("leave", p["nodes"])
        elif kind == "join":
            for i in p["nodes"]:
                self.nursery.start_soon(self._join_action, self.nodes[i])
            self.log("join", p["nodes"])
        else:  # pragma: no cover - the scenario parser knows the same list
            raise ValueError(f"unknown action {kind}")

    async def _join_action(self, node: SimNode) -> None:
        if self.room_id is None:
            return
        if (
            node.running
            and node.store.current_membership(self.room_id, node.user_id)
            in (
                "leave",
                "join",
            )
            and node.store.forward_extremities(self.room_id)
        ):
            await self.join(node, timeout=self.scenario.metrics.settle)
        else:
            await self.invite_and_join(node)

    def send_state(
        self, node: SimNode, event_type: str, state_key: str, content: dict[str, Any]
    ) -> None:
        room_id = self.room_id
        if room_id is None:
            return
        filled = _fill(content, node.index)

        async def send() -> None:
            assert node.federation is not None
            try:
                await node.federation.engine.send_state(
                    room_id, node.user_id, event_type, state_key, filled
                )
            except MatrixError as exc:
                self.log("state_refused", [node.index], exc.message)

        if not node.spawn(send):
            self.log("state_skipped", [node.index], "node down")

    def send_power(self, node: SimNode, levels: dict[int, int]) -> None:
        """``node``'s user sets the given users' power levels in the content it sees."""
        room_id = self.room_id
        if room_id is None or not node.running:
            self.log("power_skipped", [node.index], "node down")
            return
        event_id = node.store.current_state(room_id).get(("m.room.power_levels", ""))
        event = node.store.load_event(event_id) if event_id else None
        content = copy.deepcopy(dict(event.content)) if event is not None else {}
        users = dict(content.get("users", {}))
        for i, level in levels.items():
            users[self.nodes[i].user_id] = level
        content["users"] = users
        self.send_state(node, "m.room.power_levels", "", content)

    def leave(self, node: SimNode) -> None:
        room_id = self.room_id
        if room_id is None:
            return

        async def leave() -> None:
            assert node.federation is not None
            try:
                await node.federation.leave(room_id, node.user_id)
            except (MatrixError, NetworkError) as exc:
                self.log("leave_failed", [node.index], str(exc))

        node.spawn(leave)

    async def _churn(self, action: Action, node: SimNode) -> None:
        p = action.params
        rng = self.seeds.rng(f"churn/{action.index}/{node.index}")
        until = p["until"]
        while self.now() < until:
            if node.running:
                await trio.sleep(min(rng.expovariate(1 / p["mean_up"]), until - self.now()))
                if self.now() < until and node.running:
                    node.crash()
                    self.log("churn_down", [node.index])
            else:
                await trio.sleep(min(rng.expovariate(1 / p["mean_down"]), until - self.now()))
                if not node.running:
                    await self.start_node(node)
                    self.log("churn_up", [node.index])
        if not node.running:
            await self.start_node(node)
            self.log("churn_up", [node.index])

    # --- observation ------------------------------------------------------------------

    def fingerprint(self, node: SimNode) -> bytes | None:
        """The node's resolved state fingerprint, as held (cached per state group and form)."""
        assert self.room_id is not None
        record = node.store.room(self.room_id)
        if record is None or record.current_state_group is None:
            return None
        redacted = frozenset(node.store.redacted_current_state(self.room_id))
        key = (node.index, record.current_state_group, redacted)
        fp = self._fingerprints.get(key)
        if fp is None:
            state = node.store.current_state(self.room_id)
            fp = self._fingerprints[key] = state_fingerprint(state, redacted)
        return fp

    def joined_running(self) -> list[SimNode]:
        room_id = self.room_id
        if room_id is None:
            return []
        return [n for n in self.nodes if n.running and n.is_joined(room_id)]

    def sample(self) -> None:
        if self.room_id is None:
            return
        joined = self.joined_running()
        classes: dict[bytes | None, int] = {}
        heads: set[tuple[str, ...]] = set()
        for node in joined:
            fp = self.fingerprint(node)
            classes[fp] = classes.get(fp, 0) + 1
            heads.add(tuple(sorted(node.store.forward_extremities(self.room_id))))
        self.recorder.agreement.append(
            {
                "time": round(self.now(), 3),
                "running": sum(1 for n in self.nodes if n.running),
                "joined": len(joined),
                "states": len(classes),
                "agreement": round(max(classes.values()) / len(joined), 6) if joined else None,
                "heads": len(heads),
                "messages": len(self.recorder.messages),
            }
        )

    def states_agree(self) -> bool:
        """Every running node joined in its own view holds the same resolved state."""
        joined = self.joined_running()
        if not joined:
            return False
        first = self.fingerprint(joined[0])
        return all(self.fingerprint(n) == first for n in joined[1:])

    def memberships_agree(self) -> bool:
        """The nodes that see themselves joined are the users the agreed state has joined.

        A node that left while cut off holds its leave until it reaches the
        others; until then the room has not converged, even if the states of
        the nodes still joined already agree.
        """
        joined = self.joined_running()
        room_id = self.room_id
        if not joined or room_id is None:
            return False
        store = joined[0].store
        in_state = {
            user
            for (event_type, user) in store.current_state(room_id)
            if event_type == "m.room.member" and store.current_membership(room_id, user) == "join"
        }
        expected = {n.user_id for n in self.nodes if n.user_id in in_state}
        return {n.user_id for n in joined} == expected

    def converged(self) -> bool:
        """States and memberships agree, and every running node holds the messages due to it.

        Due means joined when the message was sent: a node that has left
        since is still owed it, so it is waited for too.
        """
        if not self.states_agree() or not self.memberships_agree():
            return False
        for node in (n for n in self.nodes if n.running):
            for record in self.recorder.missing(node.index):
                if node.holds(record.event_id):
                    self.recorder.mark_held(record, node.index)
                else:
                    return False
        return True

    def watch_convergence(self, heal: int) -> None:
        """From now, poll for convergence every ``convergence_poll`` s, for ``settle`` s at most."""
        metrics = self.scenario.metrics
        heal_at = self.now()
        row: dict[str, Any] = {
            "heal": heal,
            "heal_at": round(heal_at, 6),
            "state_time": None,
            "converged_at": None,
            "convergence_time": None,
            "converged": False,
        }
        self.recorder.convergence[heal] = row

        def poll() -> bool:
            # Milliseconds: finer than any poll interval, free of the observer's offset.
            elapsed = round(self.now() - heal_at, 3)
            if row["state_time"] is None and self.states_agree():
                row["state_time"] = elapsed
            if self.converged():
                row.update(
                    converged_at=round(self.now(), 3), convergence_time=elapsed, converged=True
                )
            elif elapsed + metrics.convergence_poll > metrics.settle:
                row["converged"] = False
            else:
                return True
            self.log("converged" if row["converged"] else "not_converged", (), f"heal {heal}")
            return False

        self.observe(heal_at, poll, every=metrics.convergence_poll)

    def discovery_watch_needed(self) -> bool:
        return any(seg.mdns for seg in self.hub.segments.values())

    def watch_discovery(self) -> None:
        """Record when each node first knows every other member of its segment."""
        pending = {
            n.index: seg
            for n in self.nodes
            if (seg := self.hub.segment_of(n.server_name)) is not None and seg.mdns
        }

        def poll() -> bool:
            for i in list(pending):
                node = self.nodes[i]
                net = node.network
                if net is None or not node.running:
                    continue
                if pending[i].members - {node.server_name} <= net.known_peers():
                    self.recorder.discovery[i] = self.now()
                    del pending[i]
            return bool(pending)

        self.observe(0.0, poll, every=self.scenario.metrics.convergence_poll)

    # --- results ----------------------------------------------------------------------

    def result(self) -> SimResult:
        sc = self.scenario
        rec = self.recorder
        names = [n.server_name for n in self.nodes]
        tables: dict[str, list[dict[str, Any]]] = {
            "messages": rec.message_rows(),
            "traffic": traffic_rows(names, self.hub.node_traffic),
            "agreement": rec.agreement,
            "convergence": [r for r in rec.convergence if r],
            "timeline": rec.timeline,
        }
        if sc.metrics.deliveries:
            tables["deliveries"] = rec.delivery_rows()
        if self.discovery_watch_needed():
            tables["discovery"] = [
                {
                    "node": i,
                    "complete_at": round(rec.discovery[i], 3) if i in rec.discovery else None,
                }
                for i in range(len(self.nodes))
                if self.hub.segment_of(names[i]) is not None
            ]
        summary = self.summary(tables)
        return SimResult(sc, self.seed, summary, tables)

    def summary(self, tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        sc = self.scenario
        hub = self.hub
        traffic = hub.traffic
        sent = sorted(c.bytes_sent for c in hub.node_traffic.values()) or [0]
        last = self.recorder.agreement[-1] if self.recorder.agreement else {}
        convergence = tables["convergence"]
        out: dict[str, Any] = {
            "scenario": sc.name,
            "source": sc.source,
            "seed": self.seed,
            "hash_seed": hash_seed(),
            "nodes": len(self.nodes),
            "virtual_seconds": round(self.now(), 6),
            "room_id": self.room_id,
            "delivery": self.recorder.delivery_summary(),
            "convergence": {
                "heals": len(convergence),
                "converged": sum(1 for r in convergence if r.get("converged")),
                "times": [r.get("convergence_time") for r in convergence],
                "state_times": [r.get("state_time") for r in convergence],
            },
            "final": {
                "joined": last.get("joined"),
                "states": last.get("states"),
                "agreement": last.get("agreement"),
            },
            "traffic": {
                "messages_sent": traffic.messages_sent,
                "bytes_sent": traffic.bytes_sent,
                "messages_received": traffic.messages_received,
                "bytes_received": traffic.bytes_received,
                "bytes_by_method": dict(sorted(traffic.bytes_by_method.items())),
                "bytes_sent_per_node_median": sent[len(sent) // 2],
                "bytes_sent_per_node_max": sent[-1],
                "retransmitted_frames": hub.retransmitted_frames,
                "retransmitted_bytes": hub.retransmitted_bytes,
                "connection_resets": hub.connection_resets,
            },
            "crashes": sum(n.crashes for n in self.nodes),
        }
        if hub.dht is not None:
            out["dht"] = {"lookups": hub.dht.lookups, "found": hub.dht.found}
        if "discovery" in tables:
            times = [r["complete_at"] for r in tables["discovery"]]
            done = [t for t in times if t is not None]
            out["discovery"] = {
                "nodes": len(times),
                "complete": len(done),
                "all_complete_at": max(done) if done and len(done) == len(times) else None,
            }
        return out


def _fill(value: Any, node: int) -> Any:
    """``{node}`` in strings of a state event's content becomes the sender's index."""
    if isinstance(value, str):
        return value.replace("{node}", str(node))
    if isinstance(value, dict):
        return {k: _fill(v, node) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, node) for v in value]
    return value


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * 1024 if os.uname().sysname == "Linux" else peak


def run_scenario(
    scenario: Scenario,
    *,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    workdir: str | Path | None = None,
) -> SimResult:
    """Run any scenario (timeline or fuzzer) once."""
    if scenario.kind == "fuzzer":
        from sims.converge import ConvergeFuzzer

        return ConvergeFuzzer(scenario, seed=seed, progress=progress, workdir=workdir).run()
    return Simulation(scenario, seed=seed, progress=progress, workdir=workdir).run()
