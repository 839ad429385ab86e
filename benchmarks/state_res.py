"""Benchmark: state resolution v2 (room version 11) and v2.1 (room version 12).

Run from the repository root: ``.venv/bin/python benchmarks/state_res.py``.
Prints, for each scenario and room version, the size of the resolution and
the time of the final resolution (median of several runs), and its peak
memory. Target: each resolution under 0.1 s.

Scenarios (signed events, built with tests/state/dag.py and checked against
the auth rules as they are made):

- late fork: 5,000 members join; then the room forks 6 ways and 2,000
  events of churn are sent across the forks: power-level changes, kicks,
  bans, leaves and rejoins. The 6 fork states are resolved.
- early fork: 150 members join; the room forks 3 ways and ~3,800 users join
  across the forks. The 3 fork states are resolved.

Times: *cold* is a fresh MemoryEventSource, so it includes computing the
auth chains of every event the state sets reach (storage keeps these as an
index, like Synapse's chain cover); *warm* reuses a source whose chains are
computed, which is what a node with an auth-chain index sees. Timed runs
disable the garbage collector, as timeit does (its pauses depend on all the
objects alive in the process, not on the resolution). Memory is the peak
traced (tracemalloc) while resolving, beyond what was allocated before.

Building the rooms takes a while (signing ~20,000 events), so they are
cached under /tmp (keyed by this file's and dag.py's contents); --no-cache
builds from scratch.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import pickle
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pserver.rooms.errors import AuthError  # noqa: E402
from p2pserver.rooms.events import Event, StateKey  # noqa: E402
from p2pserver.rooms.room_versions import ROOM_V11, ROOM_V12, RoomVersion  # noqa: E402
from p2pserver.state import MemoryEventSource, resolve_state  # noqa: E402
from p2pserver.state.resolve import split_conflicted_state  # noqa: E402
from tests.state.dag import Branch, Dag  # noqa: E402

CACHE = Path("/tmp/p2pserver-bench-state-res")
SERVERS = 64  # users are spread over this many servers (signing keys)
TARGET_SECONDS = 0.1


@dataclass
class Room:
    name: str
    version: RoomVersion
    events: list[Event]
    state_sets: list[dict[StateKey, str]]


def _user_server(index: int) -> str:
    return f"server{index % SERVERS}"


def _join_many(dag: Dag, branch: Branch, names: list[str]) -> None:
    for name in names:
        dag.user(name, _user_server(int(name[1:])))
        branch.member(None, name, name, "join")


def build_late_fork(version: RoomVersion, rng: random.Random) -> Room:
    dag = Dag(version)
    trunk = dag.start()
    members = [f"u{i}" for i in range(5_000)]
    mods = members[:10]
    levels = {"alice": 100, **dict.fromkeys(mods, 50)}
    trunk.send(None, "alice", "m.room.power_levels", dag.power_levels(levels), "")
    _join_many(dag, trunk, members)
    forks = [trunk] + [trunk.fork() for _ in range(5)]
    fork_levels = [dict(levels) for _ in forks]
    sent = len(dag.events)
    while len(dag.events) < sent + 2_000:
        i = rng.randrange(len(forks))
        fork, pl = forks[i], fork_levels[i]
        roll = rng.random()
        user = rng.choice(members[10:])
        membership = fork.state.get(("m.room.member", dag.user(user)))
        current = dag.events[membership].membership if membership else None
        try:
            if roll < 0.15:  # Alice changes someone's level (sometimes a moderator's)
                target = rng.choice(mods) if rng.random() < 0.3 else user
                new = {**pl, target: rng.choice([0, 10, 25, 50])}
                fork.send(None, "alice", "m.room.power_levels", dag.power_levels(new), "")
                fork_levels[i] = new
            elif roll < 0.50 and current == "join":  # a moderator kicks
                fork.member(None, rng.choice(mods), user, "leave")
            elif roll < 0.65 and current != "ban":  # a moderator bans
                fork.member(None, rng.choice(mods), user, "ban")
            elif roll < 0.85 and current == "join":  # leaving
                fork.member(None, user, user, "leave")
            elif current in (None, "leave"):  # (re)joining
                fork.member(None, user, user, "join")
        except AuthError:
            pass  # e.g. a demoted moderator's kick: not allowed on this fork, not sent
    return Room("late fork", version, list(dag.events.values()), [dict(f.state) for f in forks])


def build_early_fork(version: RoomVersion, rng: random.Random) -> Room:
    dag = Dag(version)
    trunk = dag.start()
    _join_many(dag, trunk, [f"u{i}" for i in range(150)])
    forks = [trunk, trunk.fork(), trunk.fork()]
    for i in range(150, 150 + 3_800):
        _join_many(dag, rng.choice(forks), [f"u{i}"])
    return Room("early fork", version, list(dag.events.values()), [dict(f.state) for f in forks])


def cached_room(
    builder: Callable[[RoomVersion, random.Random], Room], version: RoomVersion, use_cache: bool
) -> tuple[Room, float]:
    sources = Path(__file__).read_bytes() + (ROOT / "tests/state/dag.py").read_bytes()
    key = hashlib.sha256(sources).hexdigest()[:16]
    path = CACHE / f"{builder.__name__}-v{version.identifier}-{key}.pickle"
    if use_cache and path.exists():
        with path.open("rb") as f:
            name, events, state_sets = pickle.load(f)
        return Room(name, version, events, state_sets), 0.0
    started = time.perf_counter()
    room = builder(version, random.Random(f"{builder.__name__}-{version.identifier}"))
    took = time.perf_counter() - started
    if use_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump((room.name, room.events, room.state_sets), f, pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return room, took


def _timed(room: Room, source: MemoryEventSource) -> tuple[float, float, dict[StateKey, str]]:
    # As timeit does: no garbage collection inside the timed region, whose
    # pauses depend on everything else alive in the process.
    gc.collect()
    gc.disable()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        result = resolve_state(room.version, room.state_sets, source)
        return time.perf_counter() - started, time.process_time() - cpu, result
    finally:
        gc.enable()


def measure(room: Room, runs: int) -> dict[str, float]:
    cold = [_timed(room, MemoryEventSource(room.events))[0] for _ in range(max(1, runs // 2))]
    warm_source = MemoryEventSource(room.events)
    _, _, result = _timed(room, warm_source)
    warm, warm_cpu = [], []
    for _ in range(runs):
        took, cpu, again = _timed(room, warm_source)
        assert again == result
        warm.append(took)
        warm_cpu.append(cpu)
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    resolve_state(room.version, room.state_sets, warm_source)
    _, peak_warm = tracemalloc.get_traced_memory()
    source = MemoryEventSource(room.events)
    base_cold, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    resolve_state(room.version, room.state_sets, source)
    _, peak_cold = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "cold": statistics.median(cold),
        "warm": statistics.median(warm),
        "warm_cpu": statistics.median(warm_cpu),
        "peak_warm": (peak_warm - base) / 2**20,
        "peak_cold": (peak_cold - base_cold) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per case (median)")
    parser.add_argument("--no-cache", action="store_true", help="build the rooms from scratch")
    parser.add_argument("--versions", default="11,12", help="room versions, comma-separated")
    args = parser.parse_args()
    versions = [{"11": ROOM_V11, "12": ROOM_V12}[v] for v in args.versions.split(",")]
    print(f"state resolution benchmark (target: < {TARGET_SECONDS} s per resolution)")
    worst = 0.0
    for builder in (build_late_fork, build_early_fork):
        for version in versions:
            room, took = cached_room(builder, version, not args.no_cache)
            _, conflicted = split_conflicted_state(room.state_sets)
            source = MemoryEventSource(room.events)
            differing = source.auth_chain_difference([set(s.values()) for s in room.state_sets])
            conflicted_ids = set().union(*conflicted.values())
            figures = measure(room, args.runs)
            worst = max(worst, figures["warm"])
            built = f"built in {took:.1f} s" if took else "from cache"
            print(
                f"\n{room.name}, room version {version.identifier} ({built}): "
                f"{len(room.events):,} events, {len(room.state_sets)} state sets of "
                f"{min(map(len, room.state_sets)):,}-{max(map(len, room.state_sets)):,} entries\n"
                f"  conflicted keys {len(conflicted):,}, conflicted events {len(conflicted_ids):,}, "
                f"auth difference {len(differing):,}\n"
                f"  resolution: warm {figures['warm'] * 1000:.1f} ms (median of {args.runs}; "
                f"CPU {figures['warm_cpu'] * 1000:.1f} ms), cold {figures['cold'] * 1000:.1f} ms\n"
                f"  peak memory: warm {figures['peak_warm']:.1f} MiB, cold {figures['peak_cold']:.1f} MiB"
            )
    verdict = "met" if worst < TARGET_SECONDS else "NOT met"
    print(f"\nslowest warm resolution {worst * 1000:.1f} ms: target {verdict}")


if __name__ == "__main__":
    main()
