"""Scenario files: the built-ins load, selections resolve, bad input gets a clear error."""

from __future__ import annotations

import math

import pytest

from sims.distributions import DistributionError, parse_distribution
from sims.scenario import (
    ScenarioError,
    apply_overrides,
    builtin_scenarios,
    load_scenario,
    parse_override,
    parse_scenario,
    select,
)


def test_builtin_scenarios_load_with_the_figures_the_issue_asks_for():
    assert builtin_scenarios() == ["converge", "field-unit", "outage", "scale"]
    field = load_scenario("field-unit")
    assert field.nodes.count == 8 and [s.nodes for s in field.segments] == [tuple(range(8))]
    assert field.network.discovery == ("mdns",)
    assert field.traffic[0].end - field.traffic[0].start == 3600
    outage = load_scenario("outage")
    assert outage.nodes.count == 50
    split = next(a for a in outage.events if a.action == "partition")
    heal = next(a for a in outage.events if a.action == "heal")
    assert heal.at - split.at == 600 and [len(g) for g in split.params["groups"]] == [25, 25]
    sides = [set(g) for g in split.params["groups"]]
    writers = [set(a.params["nodes"]) for a in outage.events if a.action in ("state", "power")]
    assert any(w <= sides[0] for w in writers) and any(w <= sides[1] for w in writers)
    converge = load_scenario("converge")
    assert converge.kind == "fuzzer" and converge.fuzzer is not None
    assert converge.nodes.count >= 20 and converge.fuzzer.episodes >= 200
    scale = load_scenario("scale")
    assert scale.nodes.count == 1000 and scale.traffic[0].count == 10_000
    assert set(scale.room.members) == set(range(1, 1000))


def test_selections():
    groups = {"left": (0, 1, 2)}
    assert select("all", 4, {}, "x") == (0, 1, 2, 3)
    assert select("1-3", 5, {}, "x") == (1, 2, 3)
    assert select([4, "left", "0-1"], 5, groups, "x") == (4, 0, 1, 2)
    assert select("left,3", 5, groups, "x") == (0, 1, 2, 3)
    for bad, message in [
        (7, "out of range"),
        ("3-1", "empty range"),
        ("nobody", "not a node"),
        (True, "boolean"),
        (1.5, "selection"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            select(bad, 5, groups, "x")


def test_overrides_are_dotted_toml_values():
    assert parse_override("nodes.count=6") == ("nodes.count", 6)
    assert parse_override("network.discovery=['dht']") == ("network.discovery", ["dht"])
    assert parse_override("scenario.name=plain words") == ("scenario.name", "plain words")
    doc = apply_overrides({"nodes": {"count": 2}}, {"nodes.count": 9, "fuzzer.episodes": 3})
    assert doc == {"nodes": {"count": 9}, "fuzzer": {"episodes": 3}}
    with pytest.raises(ScenarioError, match="KEY=VALUE"):
        parse_override("nodes.count")
    with pytest.raises(ScenarioError, match="not a table"):
        apply_overrides({"nodes": 3}, {"nodes.count": 1})
    scenario = load_scenario("field-unit", {"nodes.count": 6, "traffic.0.rate": 1})
    assert scenario.nodes.count == 6 and scenario.traffic[0].rate == 1.0
    assert scenario.segments[0].nodes == tuple(range(6))
    # Overrides are checked like the file: the outage's admins do not fit in 6 nodes.
    with pytest.raises(ScenarioError, match="room.power.25: node 25 out of range 0-5"):
        load_scenario("outage", {"nodes.count": 6, "groups.left": "0-2", "groups.right": "3-5"})
    with pytest.raises(ScenarioError, match="no item 3"):
        load_scenario("field-unit", {"traffic.3.rate": 1})


@pytest.mark.parametrize(
    "document, message",
    [
        ({}, "nodes: the table is required"),
        ({"nodes": {"count": 0}}, "nodes.count: expected an integer >= 1"),
        ({"nodes": {"count": 2}, "bogus": {}}, "unknown key"),
        ({"nodes": {"count": 2, "storage": "tape"}}, "nodes.storage: expected one of"),
        (
            {"nodes": {"count": 2}, "network": {"latency": {"dist": "cauchy"}}},
            "dist must be one of",
        ),
        ({"nodes": {"count": 2}, "network": {"latency": -1}}, "value must be a number >= 0"),
        ({"nodes": {"count": 2}, "network": {"loss": 1.0}}, "network.loss: must be below 1"),
        ({"nodes": {"count": 2}, "network": {"partition_mode": "drop"}}, "partition_mode"),
        ({"nodes": {"count": 2}, "network": {"discovery": ["mdns"]}}, "mdns needs"),
        ({"nodes": {"count": 2}, "traffic": [{"rate": 1}]}, "traffic needs a \\[room\\]"),
        (
            {"nodes": {"count": 2}, "room": {}, "traffic": [{"rate": 1, "count": 3}]},
            "exactly one of rate and count",
        ),
        ({"nodes": {"count": 2}, "events": [{"at": 1, "action": "explode"}]}, "action: expected"),
        ({"nodes": {"count": 2}, "events": [{"at": 1, "action": "crash"}]}, "crash needs nodes"),
        (
            {"nodes": {"count": 2}, "events": [{"at": 1, "action": "partition", "groups": ["0"]}]},
            "at least two",
        ),
        (
            {"nodes": {"count": 2}, "events": [{"action": "heal", "at": -3}]},
            "at: expected a number",
        ),
        ({"nodes": {"count": 2}, "room": {"setup": "prefab"}}, "prefab needs"),
        ({"nodes": {"count": 2}, "room": {"power": {"1": 101}}}, "level 0-100"),
        (
            {"nodes": {"count": 3}, "segments": [{"nodes": "0-1"}, {"nodes": "1-2"}]},
            "already on",
        ),
        (
            {
                "nodes": {"count": 4},
                "scenario": {"kind": "fuzzer"},
                "fuzzer": {"ops_per_episode": [5, 2]},
            },
            "ops_per_episode",
        ),
        ({"nodes": {"count": 2}, "fuzzer": {}}, "only for scenario.kind"),
    ],
)
def test_bad_scenarios_name_the_key(document, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(document)


def test_unreadable_or_unknown_scenarios(tmp_path):
    with pytest.raises(ScenarioError, match="no built-in scenario"):
        load_scenario("no-such-scenario")
    bad = tmp_path / "bad.toml"
    bad.write_text("[nodes\ncount = 2")
    with pytest.raises(ScenarioError, match="bad.toml"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_distributions():
    import random

    rng = random.Random(1)
    assert parse_distribution(0.25).sample(rng) == 0.25
    normal = parse_distribution({"dist": "normal", "mean": 0.001, "sd": 0.01})
    assert min(normal.sample(rng) for _ in range(1000)) == 0.0  # clamped at min 0
    capped = parse_distribution({"dist": "pareto", "scale": 0.01, "alpha": 1.1, "max": 0.5})
    assert max(capped.sample(rng) for _ in range(5000)) == 0.5
    lognormal = parse_distribution({"dist": "lognormal", "median": 0.04, "sigma": 0.5})
    draws = sorted(lognormal.sample(rng) for _ in range(4001))
    assert draws[2000] == pytest.approx(0.04, rel=0.05)
    assert lognormal.mean() == pytest.approx(0.04 * math.exp(0.125))
    empirical = parse_distribution({"dist": "empirical", "values": [0.1, 0.2]})
    assert {empirical.sample(rng) for _ in range(50)} == {0.1, 0.2}
    for bad in [
        {"dist": "uniform", "low": 2, "high": 1},
        {"dist": "normal", "mean": 1},
        {"dist": "empirical", "values": []},
        {"dist": "constant", "value": 1, "extra": 2},
        {"dist": "constant", "value": 1, "min": 2, "max": 1},
        "fast",
        True,
    ]:
        with pytest.raises(DistributionError):
            parse_distribution(bad)
