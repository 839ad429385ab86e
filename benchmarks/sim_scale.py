"""The scale scenario (issue #9): 1,000 nodes in one room, 10,000 messages, in one process.

Runs ``sims/scenarios/scale.toml`` (optionally smaller) and prints the wall
time, CPU time, peak RSS, memory per node and CPU per delivery. Target: the
full scenario in at most 10 minutes of wall time and 8 GB on a 2-core
machine.

The traffic window is scaled with the message count (one message per
virtual second, as in the scenario), and the run ends ``--settle`` virtual
seconds after the last message.

Besides whole-run figures it prints the *steady* CPU per delivery: from the
middle of the traffic window to the end. The first half includes the set-up
(prefab room, node start) and the dialling of connections, which a run of
a few hundred messages spreads over few deliveries but the full scenario
over ten million; the second half is what each further delivery costs, so
it is the figure to compare across node counts and to extrapolate from.

``--profile FILE`` writes a cProfile of that second half (read it with
``python -m pstats FILE``): what a delivery costs once the run is warm.

Usage: .venv/bin/python benchmarks/sim_scale.py [--nodes N] [--messages M] [--seed S] [--out DIR]
       [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import time

from sims import Simulation, load_scenario
from sims.simulation import peak_rss_bytes


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=300.0)
    parser.add_argument("--out", default=None, help="also write the metrics here")
    parser.add_argument("--profile", default=None, help="cProfile the second half to this file")
    args = parser.parse_args()

    start, end = 60.0, 60.0 + args.messages  # one message a second, as the scenario
    scenario = load_scenario(
        "scale",
        {
            "nodes.count": args.nodes,
            "traffic.0.count": args.messages,
            "traffic.0.start": start,
            "traffic.0.end": end,
            "scenario.duration": end + args.settle,
        },
    )
    gc.collect()
    baseline = current_rss_bytes()
    progress_at = [time.perf_counter()]
    middle = start + args.messages / 2
    mid: dict[str, float] = {}
    profiler = cProfile.Profile() if args.profile else None

    def progress(now: float, total: float, note: str) -> None:
        if not mid and now >= middle:
            mid["cpu"] = time.process_time()
            mid["deliveries"] = delivered_so_far()
            mid["rss"] = current_rss_bytes()
            if profiler is not None:
                profiler.enable()
        if time.perf_counter() - progress_at[0] > 30:
            progress_at[0] = time.perf_counter()
            print(f"  {now:,.0f}/{total:,.0f} s virtual, {note}", flush=True)

    sim = Simulation(scenario, seed=args.seed, progress=progress)

    def delivered_so_far() -> int:
        return sum(
            1
            for r in sim.recorder.messages.values()
            for i in r.due
            if not math.isnan(r.delivered[i])
        )

    result = sim.run()
    end_cpu = time.process_time()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    if args.out:
        result.write(args.out, plots=False)
    perf = result.perf
    delivery = result.summary["delivery"]
    peak = peak_rss_bytes()
    deliveries = delivery["delivered"]
    print(f"scale: {args.nodes} nodes, {delivery['messages']} messages, seed {args.seed}")
    print(
        f"  delivered {deliveries:,} of {delivery['deliveries_due']:,} "
        f"(ratio {delivery['delivery_ratio']}), latency p50 {delivery['latency_p50']} s, "
        f"p99 {delivery['latency_p99']} s"
    )
    print(f"  wall {perf['wall_seconds']:,.1f} s, CPU {perf['cpu_seconds']:,.1f} s")
    print(
        f"  peak RSS {peak / 2**20:,.0f} MiB; memory per node "
        f"{(peak - baseline) / args.nodes / 2**20:,.2f} MiB (peak minus {baseline / 2**20:,.0f} MiB at start)"
    )
    if deliveries:
        print(f"  CPU per delivery {perf['cpu_seconds'] / deliveries * 1e3:,.2f} ms")
    if mid and deliveries > mid["deliveries"]:
        steady = (end_cpu - mid["cpu"]) / (deliveries - mid["deliveries"])
        print(
            f"  steady CPU per delivery (second half of the traffic) {steady * 1e3:,.2f} ms; "
            f"RSS {mid['rss'] / 2**20:,.0f} MiB at the middle"
        )
        full = 10_000 * 999  # the scenario's deliveries: 10,000 messages to 999 others
        print(
            f"  at that rate the full scenario's {full:,} deliveries take {full * steady / 3600:,.1f} h "
            "of CPU (target: 10 min wall; floor: benchmarks/delivery_floor.py)"
        )
    traffic = result.summary["traffic"]
    print(
        f"  traffic {traffic['messages_sent']:,} frames, {traffic['bytes_sent'] / 1e6:,.1f} MB; "
        f"by method (MB): "
        + ", ".join(f"{k} {v / 1e6:,.1f}" for k, v in traffic["bytes_by_method"].items())
    )


if __name__ == "__main__":
    main()
