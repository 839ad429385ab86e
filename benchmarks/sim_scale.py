"""The scale scenario (issue #9): 1,000 nodes in one room, 10,000 messages, in one process.

Runs ``sims/scenarios/scale.toml`` (optionally smaller) and prints the wall
time, CPU time, peak RSS, memory per node and CPU per delivery. Target: the
full scenario in at most 10 minutes of wall time and 8 GB on a 2-core
machine.

The traffic window is scaled with the message count (one message per
virtual second, as in the scenario), and the run ends ``--settle`` virtual
seconds after the last message.

Usage: .venv/bin/python benchmarks/sim_scale.py [--nodes N] [--messages M] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
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

    def progress(now: float, total: float, note: str) -> None:
        if time.perf_counter() - progress_at[0] > 30:
            progress_at[0] = time.perf_counter()
            print(f"  {now:,.0f}/{total:,.0f} s virtual, {note}", flush=True)

    result = Simulation(scenario, seed=args.seed, progress=progress).run()
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
    traffic = result.summary["traffic"]
    print(
        f"  traffic {traffic['messages_sent']:,} frames, {traffic['bytes_sent'] / 1e6:,.1f} MB; "
        f"by method (MB): "
        + ", ".join(f"{k} {v / 1e6:,.1f}" for k, v in traffic["bytes_by_method"].items())
    )


if __name__ == "__main__":
    main()
