"""The converge fuzzer: random episodes of disruption, then proof that the nodes agree.

Like Element's ``converge`` fuzzer, with one difference: the seed fixes not
only the operations but their timing and every message's path, so a
failure replays exactly (``p2pserver sim run converge --seed N``).

Setup: ``nodes.count`` servers, one user each; user 0 creates a public room
and invites the first ``fuzzer.members`` (default: all), who join. Every
user has power 50 (may set state); users 1..``fuzzer.admins`` have 100, 95,
90, may change power levels and demote the admins below them, so state,
power levels and kicks conflict.

An episode (``fuzzer.episode_length`` virtual seconds):

1. Cut: split the nodes into 2 or 3 random groups (every link between
   groups down), or cut a random third of all links.
2. Conflict: one node on each of two sides writes the same state key
   (topic, name or a custom key) at the same moment.
3. ``ops_per_episode`` random operations at random times: messages, state
   and power-level changes, crashes and restarts (at most ``max_crashed`` of
   the nodes down at once), leaves, joins (rejoins, or invites then joins
   for servers not in the room yet) and kicks, drawn with the weights of
   :data:`OPS` (``fuzzer.weights`` changes them, e.g. ``{kick = 0}``).
4. Heal: all links up, every crashed node restarted. Wait up to
   ``settle_timeout`` for convergence (see :mod:`sims.simulation`).

Checks after each heal, all of which must hold:

- every running node whose user is joined (in its own view) has
  byte-identical resolved state as held: the canonical JSON of its sorted
  ``[type, state_key, event_id, form]`` list, ``form`` saying whether the
  node holds the event whole or redacted (a stripped copy has the same
  ID); and the users joined in that state are exactly the users of those
  nodes;
- every message reached (is held by) every server that was joined, in its
  sender's view, when it was sent;
- and, once at the end, anti-vacuity: in at least one episode the joined
  nodes held more than one resolved state just before the heal. A run that
  never diverged proves nothing and fails.

On failure the result carries a report with the seed, the episode, the
broken check and the operation log (also written as ``oplog.csv``/``.json``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import trio

from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.errors import MatrixError
from p2pserver.transport.network import NetworkError
from sims.node import SimNode
from sims.scenario import FuzzerSpec, RoomSpec, Scenario
from sims.simulation import ProgressCallback, SimResult, Simulation, held_state

STATE_KEYS = (
    ("m.room.topic", "", "topic"),
    ("m.room.name", "", "name"),
    ("org.p2pserver.sim.fuzz", "a", "value"),
    ("org.p2pserver.sim.fuzz", "b", "value"),
)
POWER_LEVELS = (0, 50, 75, 95)
# Admins 1, 2, 3, ... get these levels: each may demote the ones below it.
ADMIN_LEVELS = (100, 95, 90)
POWER_EVENT_LEVEL = 90  # who may send m.room.power_levels
# Weights of the random operations of step 3.
OPS = (
    ("message", 30),
    ("state", 22),
    ("power", 8),
    ("crash", 10),
    ("restart", 5),
    ("leave", 7),
    ("join", 10),
    ("kick", 5),
)


class CheckFailed(Exception):
    """A convergence check failed; the message says which and why."""


def state_bytes(node: SimNode, room_id: str) -> bytes:
    """The node's resolved room state as held, in canonical JSON (:func:`held_state`)."""
    store = node.store
    return encode_canonical_json(
        held_state(store.current_state(room_id), store.redacted_current_state(room_id))
    )


class ConvergeFuzzer(Simulation):
    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int | None = None,
        workdir: Any = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        if scenario.fuzzer is None:
            raise ValueError("the converge fuzzer needs a scenario of kind 'fuzzer'")
        spec = scenario.fuzzer
        count = scenario.nodes.count
        members = spec.members or count
        room = RoomSpec(
            at=0.0,
            creator=0,
            members=tuple(range(1, members)),
            preset="public_chat",
            power=tuple(
                (i, ADMIN_LEVELS[min(i - 1, len(ADMIN_LEVELS) - 1)])
                for i in range(1, min(spec.admins, count - 1) + 1)
            ),
        )
        super().__init__(
            dataclasses.replace(scenario, room=room, traffic=(), events=()),
            seed=seed,
            workdir=workdir,
            progress=progress,
        )
        self.spec: FuzzerSpec = spec
        self.oplog: list[dict[str, Any]] = []
        self.episodes: list[dict[str, Any]] = []
        self.failure: str | None = None
        self._seq = 0

    def power_request(self) -> dict[str, Any]:
        request = super().power_request()
        override = request.setdefault("power_level_content_override", {})
        override["users_default"] = 50
        override["events"] = {"m.room.power_levels": POWER_EVENT_LEVEL, "m.room.tombstone": 150}
        return request

    # --- the run ------------------------------------------------------------------------

    def run(self) -> SimResult:
        try:
            return super().run()
        except Exception as exc:
            # A crash in node or engine code is a failure too: keep what
            # replays it (shown after the traceback).
            exc.add_note(self.report(f"the run stopped on an error: {exc!r}"))
            raise

    async def run_tasks(self, nursery: trio.Nursery) -> None:
        total = self.spec.episodes
        await nursery.start(self._observer)
        self.observe(0.0, lambda: self._tick(float(total)), every=10.0)
        interval = self.scenario.metrics.sample_interval
        self.observe(interval, self.sample, every=interval)
        await self._start_nodes(nursery)
        await self._setup_room()
        try:
            if not await self.settle():
                raise CheckFailed("the room never converged after setup")
            for episode in range(total):
                self.episode = episode
                await self.run_episode(episode)
            diverged = sum(1 for e in self.episodes if e["diverged"])
            if diverged == 0:
                raise CheckFailed(
                    f"anti-vacuity: no episode of {total} diverged before its heal, so "
                    "convergence was never tested"
                )
        except CheckFailed as exc:
            self.failure = self.report(str(exc))
        self.sample()

    def _tick(self, end: float) -> None:
        if self.progress is not None:
            self.progress(float(len(self.episodes)), end, self.progress_note())

    def progress_note(self) -> str:
        diverged = sum(1 for e in self.episodes if e["diverged"])
        return f"episodes, {diverged} diverged"

    # --- one episode --------------------------------------------------------------------

    async def run_episode(self, episode: int) -> None:
        rng = self.seeds.rng(f"fuzzer/{episode}")
        spec = self.spec
        start = self.now()
        sides = self.cut(rng) if spec.partitions else [list(range(len(self.nodes)))]
        if spec.conflicts and len(sides) > 1:
            self.conflict(rng, sides)
        count = rng.randint(*spec.ops_per_episode)
        times = sorted(rng.uniform(0.05, 0.8) * spec.episode_length for _ in range(count))
        for t in times:
            await self.sleep_until(start + t)
            self.random_op(rng)
        await self.sleep_until(start + spec.episode_length)
        joined = self.joined_running()
        before = {self.fingerprint(n) for n in joined}
        heads = {tuple(sorted(n.store.forward_extremities(self.room_id or ""))) for n in joined}
        # The agreement table gets the moments that matter, whatever its
        # interval: just before each heal, and once converged. (Reads only:
        # the nodes' trajectory stays as it is.)
        self.sample()
        self.op("heal")
        self.hub.heal()
        for node in self.nodes:
            if not node.running:
                await self.start_node(node)
        heal_at = self.now()
        converged = await self.settle()
        if self.now() > heal_at:
            self.sample()
        row = {
            "episode": episode,
            "start": round(start, 6),
            "heal_at": round(heal_at, 6),
            "sides": len(sides),
            "ops": count,
            "states_before_heal": len(before),
            "heads_before_heal": len(heads),
            "diverged": len(before) > 1,
            "converged": converged,
            "state_time": self.state_time,
            "convergence_time": round(self.now() - heal_at, 6) if converged else None,
            "messages": len(self.recorder.messages),
        }
        self.episodes.append(row)
        self.recorder.convergence.append(
            {
                "heal": episode,
                "heal_at": row["heal_at"],
                "state_time": self.state_time,
                "converged_at": round(self.now(), 3) if converged else None,
                "convergence_time": row["convergence_time"],
                "converged": converged,
            }
        )
        if not converged:
            raise CheckFailed(
                f"episode {episode}: no convergence {self.spec.settle_timeout:g}s after the heal"
                f"\n{self.disagreement()}"
            )
        self.check(episode)

    async def settle(self) -> bool:
        """Wait for convergence (at most ``settle_timeout``); note when states first agreed."""
        poll = self.scenario.metrics.convergence_poll
        start = self.now()
        deadline = start + self.spec.settle_timeout
        self.state_time: float | None = None
        while self.now() <= deadline:
            if self.state_time is None and self.states_agree():
                self.state_time = round(self.now() - start, 6)
            if self.converged():
                return True
            await trio.sleep(poll)
        return False

    # --- the checks -----------------------------------------------------------------------

    def check(self, episode: int) -> None:
        room_id = self.room_id
        assert room_id is not None
        joined = self.joined_running()
        reference = state_bytes(joined[0], room_id)
        for node in joined[1:]:
            if state_bytes(node, room_id) != reference:
                raise CheckFailed(
                    f"episode {episode}: resolved state of node {node.index} differs from node "
                    f"{joined[0].index}\n{self.disagreement()}"
                )
        members = {
            k
            for (t, k), _ in joined[0].store.current_state(room_id).items()
            if t == "m.room.member"
        }
        in_state = {u for u in members if joined[0].store.current_membership(room_id, u) == "join"}
        running_joined = {n.user_id for n in joined}
        expected = {n.user_id for n in self.nodes if n.user_id in in_state}
        if running_joined != expected:
            raise CheckFailed(
                f"episode {episode}: the agreed state has joined {sorted(self.index_of(expected))} "
                f"but the nodes that see themselves joined are {sorted(self.index_of(running_joined))}"
            )
        for record in self.recorder.messages.values():
            for i in record.due:
                if not self.nodes[i].holds(record.event_id):
                    raise CheckFailed(
                        f"episode {episode}: message m{record.seq} ({record.event_id}) from node "
                        f"{record.sender} at {record.sent_at:.3f}s never reached node {i}, "
                        "which was joined when it was sent"
                    )

    def index_of(self, users: set[str]) -> list[int]:
        return [n.index for n in self.nodes if n.user_id in users]

    def disagreement(self) -> str:
        room_id = self.room_id or ""
        lines = []
        for node in self.nodes:
            fp = self.fingerprint(node) if node.running else None
            missing = len(self.recorder.missing(node.index))
            lines.append(
                f"  node {node.index}: running={node.running} joined={node.running and node.is_joined(room_id)} "
                f"state={fp.hex()[:12] if fp else None} missing_messages={missing} "
                f"heads={len(node.store.forward_extremities(room_id)) if node.running else '-'}"
            )
        return "\n".join(lines)

    def report(self, what: str) -> str:
        lines = [
            f"converge fuzzer FAILED (scenario {self.scenario.name}, seed {self.seed}):",
            what,
            f"replay: {self.scenario.replay_command(self.seed)}",
            "operation log (virtual time, episode, operation, nodes, detail, outcome):",
        ]
        for op in self.oplog:
            lines.append(
                f"  {op['time']:10.3f}  ep {op['episode']:3d}  {op['op']:<8} "
                f"{op['nodes']:<12} {op['detail']} -> {op['outcome']}"
            )
        return "\n".join(lines)

    # --- operations ---------------------------------------------------------------------

    def op(
        self, name: str, nodes: list[int] | tuple[int, ...] = (), detail: str = ""
    ) -> dict[str, Any]:
        entry = {
            "time": round(self.now(), 6),
            "episode": getattr(self, "episode", -1),
            "op": name,
            "nodes": " ".join(map(str, nodes)),
            "detail": detail,
            "outcome": "done",
        }
        self.oplog.append(entry)
        return entry

    def cut(self, rng: random.Random) -> list[list[int]]:
        n = len(self.nodes)
        names = [node.server_name for node in self.nodes]
        if rng.random() < 0.2:
            pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
            chosen = rng.sample(pairs, max(1, len(pairs) // 3))
            for a, b in chosen:
                self.hub.set_link(names[a], names[b], up=False)
            self.op("cutlinks", (), f"{len(chosen)} of {len(pairs)} links down")
            # The sides of a random cut: the two ends of the first cut link.
            a, b = chosen[0]
            return [[a], [b]]
        k = 2 if n < 6 or rng.random() < 0.7 else 3
        order = list(range(n))
        rng.shuffle(order)
        bounds = sorted(rng.sample(range(1, n), k - 1))
        groups = [sorted(order[i:j]) for i, j in zip([0, *bounds], [*bounds, n], strict=True)]
        self.hub.partition(*[[names[i] for i in g] for g in groups])
        self.op("partition", (), " | ".join(" ".join(map(str, g)) for g in groups))
        return groups

    def conflict(self, rng: random.Random, sides: list[list[int]]) -> None:
        """One joined, running node on each of two sides writes the same state key."""
        event_type, state_key, field = rng.choice(STATE_KEYS)
        writers = []
        sides = [side for side in sides if any(self.can_act(i) for i in side)]
        if len(sides) < 2:
            sides = [[i] for i in range(len(self.nodes)) if self.can_act(i)]
        for side in rng.sample(sides, min(2, len(sides))):
            writers.append(rng.choice([i for i in side if self.can_act(i)]))
        for i in writers:
            self.write_state(i, event_type, state_key, {field: f"conflict e{self.episode} n{i}"})

    def can_act(self, i: int) -> bool:
        node = self.nodes[i]
        return node.running and self.room_id is not None and node.is_joined(self.room_id)

    def random_op(self, rng: random.Random) -> None:
        weights = [self.spec.weights.get(k, w) for k, w in OPS]
        if not any(weights):
            return
        kind = rng.choices([k for k, _ in OPS], weights)[0]
        n = len(self.nodes)
        actors = [i for i in range(n) if self.can_act(i)]
        crashed = [i for i in range(n) if not self.nodes[i].running]
        if kind == "message" and actors:
            i = rng.choice(actors)
            self._seq += 1
            entry = self.op("message", [i], f"m{self._seq}")
            self.send_message(self.nodes[i], self._seq, 48)
            entry["outcome"] = "sent"
        elif kind == "state" and actors:
            event_type, state_key, field = rng.choice(STATE_KEYS)
            i = rng.choice(actors)
            self.write_state(
                i, event_type, state_key, {field: f"e{self.episode} n{i} {rng.randrange(1000)}"}
            )
        elif kind == "power" and actors:
            admins = [i for i in actors if i <= self.spec.admins]
            i = rng.choice(admins or actors)
            target = rng.randrange(1, n)
            level = rng.choice(POWER_LEVELS)
            entry = self.op("power", [i], f"user {target} -> {level}")
            self.power(i, target, level, entry)
        elif kind == "crash" and len(crashed) + 1 <= math.floor(self.spec.max_crashed * n):
            up = [i for i in range(1, n) if self.nodes[i].running]  # the creator stays up
            if up:
                i = rng.choice(up)
                self.op("crash", [i])
                self.nodes[i].crash()
        elif kind == "restart" and crashed:
            i = rng.choice(crashed)
            self.op("restart", [i])
            self.nursery.start_soon(self.start_node, self.nodes[i])
        elif kind == "leave":
            leavers = [i for i in actors if i != 0]
            if leavers:
                i = rng.choice(leavers)
                entry = self.op("leave", [i])
                self.membership(self.nodes[i], entry, self._leave)
        elif kind == "join":
            outside = [i for i in range(1, n) if self.nodes[i].running and not self.can_act(i)]
            if outside:
                i = rng.choice(outside)
                entry = self.op("join", [i])
                self.nursery.start_soon(self._join_op, self.nodes[i], entry)
        elif kind == "kick" and len(actors) > 1:
            i = rng.choice(actors)
            target = rng.choice([t for t in actors if t not in (i, 0)] or [i])
            if target != i:
                entry = self.op("kick", [i], f"kicks {target}")
                self.membership(self.nodes[i], entry, self._kick, self.nodes[target].user_id)

    def write_state(self, i: int, event_type: str, state_key: str, content: dict[str, Any]) -> None:
        entry = self.op("state", [i], f"{event_type}/{state_key} = {content}")
        node = self.nodes[i]
        room_id = self.room_id
        assert room_id is not None

        async def send() -> None:
            assert node.federation is not None
            try:
                await node.federation.engine.send_state(
                    room_id, node.user_id, event_type, state_key, content
                )
            except MatrixError as exc:
                entry["outcome"] = f"refused: {exc.message}"

        if not node.spawn(send):
            entry["outcome"] = "node down"

    def power(self, i: int, target: int, level: int, entry: dict[str, Any]) -> None:
        node = self.nodes[i]
        room_id = self.room_id
        assert room_id is not None
        event_id = node.store.current_state(room_id).get(("m.room.power_levels", ""))
        event = node.store.load_event(event_id) if event_id else None
        content = dict(event.content) if event is not None else {}
        users = dict(content.get("users", {}))
        users[self.nodes[target].user_id] = level
        content["users"] = users

        async def send() -> None:
            assert node.federation is not None
            try:
                await node.federation.engine.send_state(
                    room_id, node.user_id, "m.room.power_levels", "", content
                )
            except MatrixError as exc:
                entry["outcome"] = f"refused: {exc.message}"

        if not node.spawn(send):
            entry["outcome"] = "node down"

    def membership(self, node: SimNode, entry: dict[str, Any], fn: Any, *args: Any) -> None:
        async def run() -> None:
            try:
                await fn(node, *args)
            except (MatrixError, NetworkError) as exc:
                entry["outcome"] = f"failed: {exc}"

        if not node.spawn(run):
            entry["outcome"] = "node down"

    async def _leave(self, node: SimNode) -> None:
        assert node.federation is not None and self.room_id is not None
        await node.federation.leave(self.room_id, node.user_id)

    async def _kick(self, node: SimNode, target: str) -> None:
        assert node.federation is not None and self.room_id is not None
        await node.federation.engine.kick(self.room_id, node.user_id, target)

    async def _join_op(self, node: SimNode, entry: dict[str, Any]) -> None:
        room_id = self.room_id
        assert room_id is not None
        timeout = self.spec.episode_length
        membership = node.store.current_membership(room_id, node.user_id)
        if membership == "leave" and node.store.forward_extremities(room_id):
            ok = await self.join(node, timeout=timeout)
        else:
            ok = await self.invite_and_join(node, timeout=timeout)
        entry["outcome"] = "joined" if ok else "not joined (yet)"

    # --- results ------------------------------------------------------------------------

    def result(self) -> SimResult:
        result = super().result()
        result.tables["episodes"] = self.episodes
        result.tables["oplog"] = self.oplog
        diverged = sum(1 for e in self.episodes if e["diverged"])
        times = sorted(
            e["convergence_time"] for e in self.episodes if e["convergence_time"] is not None
        )
        result.summary["fuzzer"] = {
            "episodes": len(self.episodes),
            "diverged": diverged,
            "converged": sum(1 for e in self.episodes if e["converged"]),
            "convergence_time_max": times[-1] if times else None,
            "convergence_time_median": times[len(times) // 2] if times else None,
            "operations": len(self.oplog),
            "passed": self.failure is None,
        }
        result.failure = self.failure
        if self.failure is not None:
            result.summary["failure"] = self.failure
        return result
