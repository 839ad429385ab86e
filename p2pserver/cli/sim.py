"""`p2pserver sim`: run network simulations of real nodes (see :mod:`sims`).

``p2pserver sim run SCENARIO --seed N --out DIR`` runs a scenario -- a
TOML file, or a built-in name (``p2pserver sim list``) -- with a progress
bar on stderr, prints the headline figures, and writes the metrics (CSV and
JSON), ``summary.json`` and PNG plots to DIR. ``--set KEY=VALUE`` changes
one scenario key (dotted, TOML value), e.g. ``--set nodes.count=10``.

Results are bit-identical for the same scenario and seed. String hashing
is part of that: unless PYTHONHASHSEED is already 0, ``sim run``
re-executes itself with PYTHONHASHSEED=0 (see :mod:`sims.determinism`).

Exit status: 0; 1 if the converge fuzzer found a failure (its report, with
the seed and the operation log, goes to stderr); 2 for a bad scenario or
option.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sim", help="simulate networks of real nodes (deterministic)")
    commands = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    run = commands.add_parser(
        "run",
        help="run a scenario",
        description="Run a scenario (a TOML file or a built-in name) and write its metrics and plots.",
    )
    run.add_argument("scenario", help="a scenario TOML file, or a built-in name (see 'sim list')")
    run.add_argument("--seed", type=int, default=None, help="the seed (default: the scenario's)")
    run.add_argument("--out", type=Path, default=None, help="folder for metrics and plots")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. nodes.count=10 (repeatable)",
    )
    run.add_argument("--no-plots", action="store_true", help="write metrics only")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--workdir", type=Path, default=None, help="keep node databases here (storage = disk)"
    )
    run.set_defaults(func=cmd_run)
    listing = commands.add_parser("list", help="list the built-in scenarios")
    listing.set_defaults(func=cmd_list)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def cmd_list(args: argparse.Namespace) -> int:
    from sims import builtin_scenarios, load_scenario

    for name in builtin_scenarios():
        print(f"{name:12} {load_scenario(name).description}")
    return 0


def _reexec_with_fixed_hash_seed() -> None:
    """Re-run this command with PYTHONHASHSEED=0 (set iteration order is part of the results)."""
    if os.environ.get("PYTHONHASHSEED") == "0" or os.environ.get("P2PSERVER_SIM_NO_REEXEC"):
        return
    env = dict(os.environ, PYTHONHASHSEED="0")
    argv = [sys.executable, "-m", "p2pserver", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


class ProgressBar:
    """A one-line bar on a terminal; a line every tenth of the way otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO, unit: str) -> None:
        self.stream = stream
        self.unit = unit
        self.tty = stream.isatty()
        self.start = time.perf_counter()
        self.last_decile = -1

    def __call__(self, now: float, end: float, note: str) -> None:
        fraction = min(1.0, now / end) if end > 0 else 1.0
        wall = time.perf_counter() - self.start
        if self.tty:
            filled = round(fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(
                f"\r[{bar}] {fraction:4.0%} {now:,.0f}/{end:,.0f} {self.unit} | {note} | "
                f"{wall:,.0f} s wall "
            )
            self.stream.flush()
        else:
            decile = int(fraction * 10)
            if decile > self.last_decile:
                self.last_decile = decile
                self.stream.write(
                    f"{fraction:4.0%} {now:,.0f}/{end:,.0f} {self.unit} | {note} | {wall:,.0f} s wall\n"
                )
                self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def cmd_run(args: argparse.Namespace) -> int:
    _reexec_with_fixed_hash_seed()
    from sims import ScenarioError, load_scenario, run_scenario
    from sims.scenario import parse_override

    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        scenario = load_scenario(args.scenario, overrides)
    except ScenarioError as exc:
        print(f"p2pserver sim: {exc}", file=sys.stderr)
        return 2
    unit = "episodes" if scenario.kind == "fuzzer" else "s virtual"
    bar = None if args.quiet else ProgressBar(sys.stderr, unit)
    try:
        result = run_scenario(scenario, seed=args.seed, progress=bar, workdir=args.workdir)
    except ScenarioError as exc:
        print(f"p2pserver sim: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if args.out is not None:
        result.write(args.out, plots=not args.no_plots)
    _print_headlines(result.summary, result.perf, args.out)
    if result.failure is not None:
        print(result.failure, file=sys.stderr)
        return 1
    return 0


def _times(times: list[float | None]) -> str:
    done = sorted(t for t in times if t is not None)
    if not done:
        return ""
    return f", convergence time median {done[len(done) // 2]} s, max {done[-1]} s"


def _print_headlines(summary: dict[str, Any], perf: dict[str, Any], out: Path | None) -> None:
    d = summary.get("delivery", {})
    t = summary.get("traffic", {})
    c = summary.get("convergence", {})
    lines = [
        f"scenario {summary['scenario']} seed {summary['seed']}: {summary['nodes']} nodes, "
        f"{summary['virtual_seconds']:,.0f} s virtual in {perf.get('wall_seconds', 0):,.1f} s wall, "
        f"peak RSS {perf.get('peak_rss_bytes', 0) / 2**20:,.0f} MiB",
        f"messages {d.get('messages')}: delivery ratio {d.get('delivery_ratio')}, latency p50 "
        f"{d.get('latency_p50')} s, p99 {d.get('latency_p99')} s",
        f"traffic: {t.get('messages_sent'):,} frames, {t.get('bytes_sent', 0) / 1e6:,.1f} MB sent",
        f"heals {c.get('heals')}, converged {c.get('converged')}" + _times(c.get("times") or []),
    ]
    if "fuzzer" in summary:
        lines.append("fuzzer: " + json.dumps(summary["fuzzer"]))
    if "discovery" in summary:
        lines.append("discovery: " + json.dumps(summary["discovery"]))
    if out is not None:
        lines.append(f"results in {out}")
    print("\n".join(lines))
