"""`p2pserver sim`: runs in fresh processes give identical files; errors and failures exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCENARIO = """
[scenario]
name = "cli-small"
duration = 150

[nodes]
count = 4

[network]
latency = { dist = "exponential", mean = 0.03 }
loss = 0.02

[room]
members = "all"

[[traffic]]
rate = 0.2
start = 10
end = 140

[[events]]
at = 40
action = "partition"
groups = ["0-1", "2-3"]

[[events]]
at = 80
action = "heal"
"""


def sim(*args: str, hash_seed: str = "123") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env.pop("P2PSERVER_SIM_NO_REEXEC", None)
    return subprocess.run(
        [sys.executable, "-m", "p2pserver", "sim", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_two_processes_write_identical_metrics(tmp_path: Path):
    scenario = tmp_path / "small.toml"
    scenario.write_text(SCENARIO)
    runs = []
    for name, hash_seed in (("a", "123"), ("b", "random")):
        out = tmp_path / name
        done = sim(
            "run",
            str(scenario),
            "--seed",
            "7",
            "--out",
            str(out),
            "--no-plots",
            hash_seed=hash_seed,
        )
        assert done.returncode == 0, done.stderr
        assert "scenario cli-small seed 7: 4 nodes" in done.stdout
        assert "100%" in done.stderr  # the progress bar (a line per tenth when not a terminal)
        runs.append(out)
    a, b = runs
    names = sorted(p.name for p in a.iterdir() if p.name != "perf.json")
    assert {"messages.csv", "messages.json", "traffic.csv", "summary.json"} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    summary = json.loads((a / "summary.json").read_text())
    assert summary["hash_seed"] == "0"  # re-executed with a fixed hash seed
    assert summary["convergence"]["converged"] == 1


def test_builtin_names_overrides_and_plots(tmp_path: Path):
    out = tmp_path / "out"
    done = sim(
        "run",
        "field-unit",
        "--seed",
        "3",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "scenario.duration=200",
        "--set",
        "traffic.0.start=100",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"] == "field-unit" and summary["virtual_seconds"] == 200
    assert (out / "latency.png").exists() and (out / "traffic.png").exists()
    listing = sim("list")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "converge",
        "field-unit",
        "outage",
        "scale",
    ]


def test_bad_scenarios_exit_2_with_the_reason(tmp_path: Path):
    done = sim("run", "no-such-scenario", "--quiet")
    assert done.returncode == 2 and "no built-in scenario" in done.stderr
    done = sim("run", "field-unit", "--set", "nodes.count=0", "--quiet")
    assert done.returncode == 2 and "nodes.count: expected an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_fuzzer_failure_exits_1_with_seed_and_operation_log(tmp_path: Path):
    done = sim(
        "run",
        "converge",
        "--seed",
        "9",
        "--quiet",
        "--out",
        str(tmp_path),
        "--set",
        "nodes.count=5",
        "--set",
        "fuzzer.members=5",
        "--set",
        "fuzzer.episodes=1",
        "--set",
        "fuzzer.partitions=false",
        "--set",
        "fuzzer.conflicts=false",
    )
    assert done.returncode == 1
    assert "converge fuzzer FAILED (scenario converge, seed 9)" in done.stderr
    # The replay command carries the overrides: without them it would run another scenario.
    assert (
        "replay: p2pserver sim run converge --seed 9 --set nodes.count=5 --set fuzzer.members=5 "
        "--set fuzzer.episodes=1 --set fuzzer.partitions=false --set fuzzer.conflicts=false\n"
    ) in done.stderr
    assert "anti-vacuity" in done.stderr and "operation log" in done.stderr
    oplog = json.loads((tmp_path / "oplog.json").read_text())
    assert oplog and oplog[-1]["op"] == "heal"


def test_a_workdir_of_an_earlier_run_is_refused(tmp_path: Path):
    scenario = tmp_path / "small.toml"
    scenario.write_text(SCENARIO.replace("count = 4", 'count = 4\nstorage = "disk"'))
    workdir = tmp_path / "work"
    first = sim("run", str(scenario), "--quiet", "--no-plots", "--workdir", str(workdir))
    assert first.returncode == 0, first.stderr
    assert any((workdir / "nodes").iterdir())
    again = sim("run", str(scenario), "--quiet", "--no-plots", "--workdir", str(workdir))
    assert again.returncode == 2
    assert "holds the node databases of an earlier run" in again.stderr
    assert "Traceback" not in again.stderr
