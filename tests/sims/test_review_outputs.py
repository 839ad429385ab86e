"""What a run writes loads straight into pandas, and the latency plot says what it shows."""

from __future__ import annotations

import json
from typing import Any

import pandas
import pytest

from sims import load_scenario, run_scenario
from sims.metrics import TABLE_COLUMNS, TRAFFIC_COLUMNS
from sims.plots import convergence_figure, latency_figure

# Three devices on a LAN, a few messages, no partition: no heal, so an empty
# convergence table. Well under a second.
FIELD = {
    "nodes.count": 3,
    "nodes.start_spread": 2,
    "scenario.duration": 140,
    "room.at": 20,
    "traffic.0.start": 40,
    "traffic.0.end": 100,
    "traffic.0.rate": 0.2,
}
# One fuzzer episode: its episodes and oplog tables.
CONVERGE = {
    "nodes.count": 4,
    "fuzzer.members": 3,
    "fuzzer.episodes": 1,
    "fuzzer.settle_timeout": 600,
}


def expected_columns(name: str, rows: list[dict[str, Any]]) -> list[str]:
    columns = list(TABLE_COLUMNS[name])
    if name == "traffic":  # and a column per method sent
        columns += sorted({k for r in rows for k in r} - set(TRAFFIC_COLUMNS))
        assert all(c.startswith("bytes_") for c in columns[len(TRAFFIC_COLUMNS) :])
    return columns


@pytest.mark.parametrize(
    ("scenario", "overrides", "tables"),
    [
        (
            "field-unit",
            FIELD,
            {
                "messages",
                "deliveries",
                "traffic",
                "agreement",
                "convergence",
                "timeline",
                "discovery",
            },
        ),
        (
            "converge",
            CONVERGE,
            # metrics.deliveries = false there
            {"messages", "traffic", "agreement", "convergence", "timeline", "episodes", "oplog"},
        ),
    ],
)
def test_every_table_loads_with_pandas_even_when_empty(tmp_path, scenario, overrides, tables):
    result = run_scenario(load_scenario(scenario, overrides), seed=1)
    assert result.failure is None, result.failure
    result.write(tmp_path, plots=False)
    assert {p.stem for p in tmp_path.glob("*.csv")} == set(result.tables) == tables
    for path in sorted(tmp_path.glob("*.csv")):
        name = path.stem
        rows = result.tables[name]
        columns = expected_columns(name, rows)
        # The declared columns are the ones the producers fill.
        assert all(list(row) == columns for row in rows), name
        frame = pandas.read_csv(path)
        assert list(frame.columns) == columns, name
        assert len(frame) == len(rows), name
        records = json.loads(path.with_suffix(".json").read_text())
        assert len(records) == len(rows) and all(list(r) == columns for r in records), name
        assert len(pandas.read_json(path.with_suffix(".json"))) == len(rows), name
    if scenario == "field-unit":
        # No heal: an empty table, with its header all the same.
        empty = pandas.read_csv(tmp_path / "convergence.csv")
        assert empty.empty and list(empty.columns) == [
            "heal",
            "heal_at",
            "state_time",
            "converged_at",
            "convergence_time",
            "converged",
        ]


def figure_text(fig: Any) -> tuple[str, list[tuple[str, str]]]:
    return fig._suptitle.get_text(), [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_the_latency_plot_names_what_it_plots():
    with_deliveries = run_scenario(load_scenario("field-unit", FIELD), seed=1)
    title, labels = figure_text(latency_figure(with_deliveries))
    n = sum(1 for r in with_deliveries.table("deliveries") if r["latency"] is not None)
    assert f": {n} deliveries, delivery ratio " in title
    assert labels == [
        ("delivery latency (s)", "deliveries"),
        ("delivery latency (s)", "fraction of deliveries"),
    ]

    # metrics.deliveries = false: only each message's median is known.
    medians = run_scenario(load_scenario("field-unit", {**FIELD, "metrics.deliveries": False}))
    assert "deliveries" not in medians.tables
    title, labels = figure_text(latency_figure(medians))
    m = sum(1 for r in medians.table("messages") if r["latency_p50"] is not None)
    assert m < n  # messages, not deliveries
    assert f"per-message median latency over {m} messages" in title
    assert "deliveries," not in title
    assert labels == [
        ("per-message median latency (s)", "messages"),
        ("per-message median latency (s)", "fraction of messages"),
    ]


def test_the_convergence_plot_marks_the_fuzzers_cuts_and_heals():
    result = run_scenario(load_scenario("converge", CONVERGE), seed=1)
    top = convergence_figure(result).axes[0]
    marked = {line.get_xdata()[0] for line in top.lines if len(set(line.get_xdata())) == 1}
    ops = [op for op in result.table("oplog") if op["op"] in ("partition", "cutlinks", "heal")]
    assert {op["op"] for op in ops} >= {"heal"} and len(ops) >= 2
    assert {op["time"] for op in ops} <= marked
