"""Scenarios of real nodes on the simulated network: what happens, what is measured, what is written."""

from __future__ import annotations

import csv
import json
import math

import pytest

from sims import ScenarioError, Simulation, load_scenario, parse_scenario

from .conftest import partition_document, run_document


def test_partition_diverges_then_heals_and_is_measured(partition_result):
    result = partition_result
    summary = result.summary
    assert summary["delivery"]["delivery_ratio"] == 1.0 and summary["delivery"]["messages"] > 40
    # The conflicting topics split the room's state while the link was down...
    during = [r for r in result.table("agreement") if 72 < r["time"] < 120]
    assert during and all(r["states"] >= 2 for r in during)
    # (each side agrees within itself once its topic has spread)
    assert during[-1]["states"] == 2 and during[-1]["agreement"] == 0.5
    # ...and after the heal one resolved state wins everywhere, in measured time.
    (heal,) = result.table("convergence")
    assert heal["converged"] and heal["heal_at"] == 120
    assert 0 < heal["convergence_time"] < 150
    assert result.table("agreement")[-1]["states"] == 1
    # A message sent on one side during the cut reaches the other side only after the heal.
    left, right = {0, 1, 2}, {3, 4, 5}
    cut_messages = [m for m in result.table("messages") if 62 < m["sent_at"] < 118]
    assert cut_messages
    deliveries = {(d["seq"], d["server"]): d for d in result.table("deliveries")}
    for m in cut_messages:
        other = right if m["sender"] in left else left
        for server in other:
            assert deliveries[(m["seq"], server)]["delivered_at"] >= 120
    # Every node sent and received something; byte counts are per node.
    traffic = result.table("traffic")
    assert len(traffic) == 6 and all(
        t["bytes_sent"] > 0 and t["bytes_received"] > 0 for t in traffic
    )
    assert sum(t["bytes_sent"] for t in traffic) == summary["traffic"]["bytes_sent"]
    assert summary["traffic"]["retransmitted_frames"] > 0  # loss = 1%


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, partition_result):
    again = run_document(partition_document(), seed=1)
    other = run_document(partition_document(), seed=2)
    for name, result in (("a", partition_result), ("b", again), ("c", other)):
        result.write(tmp_path / name, plots=False)
    files = sorted(p.name for p in (tmp_path / "a").iterdir() if p.name != "perf.json")
    assert "messages.csv" in files and "deliveries.json" in files and "summary.json" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "messages.csv").read_bytes() != (
        tmp_path / "c" / "messages.csv"
    ).read_bytes()
    assert (tmp_path / "a" / "summary.json").read_bytes() != (
        tmp_path / "c" / "summary.json"
    ).read_bytes()


def test_observing_does_not_change_the_results():
    calls = []
    document = partition_document(**{"scenario.duration": 160})
    plain = run_document(document)
    watched = run_document(document, progress=lambda now, end, note: calls.append(now))
    assert calls and calls[-1] == 160
    assert watched.tables == plain.tables and watched.summary == plain.summary
    # Sampling more often, and polling for convergence more often, observe
    # the same run: every message, delivery and byte is as it was.
    closer = run_document(
        partition_document(
            **{
                "scenario.duration": 160,
                "metrics.sample_interval": 1.5,
                "metrics.convergence_poll": 0.1,
            }
        )
    )
    for name in ("messages", "deliveries", "traffic"):
        assert closer.tables[name] == plain.tables[name], name
    assert len(closer.table("agreement")) > 3 * len(plain.table("agreement"))
    (fine,) = closer.table("convergence")
    (coarse,) = plain.table("convergence")
    assert (
        coarse["convergence_time"] - 0.5 <= fine["convergence_time"] <= coarse["convergence_time"]
    )


def test_outputs_load_as_tables_and_plots_are_written(tmp_path, partition_result):
    written = partition_result.write(tmp_path)
    for name in ("messages", "deliveries", "traffic", "agreement", "convergence", "timeline"):
        with (tmp_path / f"{name}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        records = json.loads((tmp_path / f"{name}.json").read_text())
        assert isinstance(records, list) and len(records) == len(rows) > 0, name
        assert list(rows[0]) == list(records[0]), name  # same columns, same order
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seed"] == 1 and summary["nodes"] == 6
    for plot in ("latency.png", "convergence.png", "traffic.png"):
        path = tmp_path / plot
        assert path in written and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000  # a real picture, not an empty canvas


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_crashed_node_keeps_its_database_and_catches_up(storage):
    document = partition_document(
        **{
            "nodes.storage": storage,
            "scenario.duration": 260,
            "events": [
                {"at": 50, "action": "crash", "nodes": [4]},
                {"at": 150, "action": "restart", "nodes": [4]},
            ],
            "traffic": [{"senders": "0-3", "start": 20, "end": 200, "rate": 0.3}],
        }
    )
    result = run_document(document)
    assert result.summary["crashes"] == 1
    assert result.summary["delivery"]["delivery_ratio"] == 1.0
    # What was sent while node 4 was down reached it after its restart; it
    # did not rejoin: the room came back with its database.
    deliveries = {(d["seq"], d["server"]): d for d in result.table("deliveries")}
    down = [m for m in result.table("messages") if 51 < m["sent_at"] < 149]
    assert down and all(deliveries[(m["seq"], 4)]["delivered_at"] >= 150 for m in down)
    actions = [t["action"] for t in result.table("timeline")]
    assert "join_failed" not in actions and result.table("agreement")[-1]["joined"] == 6


def test_churn_takes_nodes_down_and_up_and_they_still_converge():
    document = partition_document(
        **{
            "scenario.duration": 500,
            "events": [
                {
                    "at": 30,
                    "action": "churn",
                    "nodes": "1-5",
                    "until": 300,
                    "mean_up": 40,
                    "mean_down": 15,
                },
            ],
            "traffic": [{"senders": "all", "start": 20, "end": 300, "rate": 0.2}],
        }
    )
    result = run_document(document)
    actions = [t["action"] for t in result.table("timeline")]
    assert actions.count("churn_down") >= 5 and actions.count("churn_down") == actions.count(
        "churn_up"
    )
    assert result.summary["crashes"] == actions.count("churn_down")
    assert result.summary["delivery"]["skipped_sends"] > 0  # senders that were down
    assert result.summary["delivery"]["delivery_ratio"] == 1.0
    assert result.table("agreement")[-1]["states"] == 1


def test_field_unit_discovers_by_mdns_and_chats():
    scenario = load_scenario(
        "field-unit", {"scenario.duration": 500, "traffic.0.end": 480, "traffic.0.rate": 0.1}
    )
    result = Simulation(scenario, seed=2).run()
    summary = result.summary
    discovery = summary["discovery"]
    assert discovery["complete"] == 8 and discovery["all_complete_at"] <= 21  # last start + 1 s
    assert summary["traffic"]["bytes_by_method"]["mdns"] > 0
    assert summary["final"] == {"joined": 8, "states": 1, "agreement": 1.0}
    assert summary["delivery"]["messages"] > 10 and summary["delivery"]["delivery_ratio"] == 1.0
    assert summary["delivery"]["latency_p50"] < 0.05  # a LAN


def test_nodes_with_no_addresses_find_each_other_through_the_dht():
    document = partition_document(
        **{
            "network.discovery": ["dht"],
            "scenario.duration": 200,
            "events": [],
            "traffic": [{"senders": "all", "start": 60, "end": 150, "count": 20}],
        }
    )
    result = run_document(document)
    dht = result.summary["dht"]
    assert dht["lookups"] >= 5 and dht["found"] == dht["lookups"]
    assert result.summary["traffic"]["bytes_by_method"]["dht"] > 0
    assert result.summary["delivery"]["delivery_ratio"] == 1.0


def test_link_changes_and_membership_actions():
    document = partition_document(
        **{
            "scenario.duration": 300,
            "events": [
                {"at": 40, "action": "set_link", "a": "0", "b": "1-5", "latency": 0.5},
                {"at": 60, "action": "leave", "nodes": [5]},
                {"at": 120, "action": "join", "nodes": [5]},
                {"at": 150, "action": "power", "nodes": [0], "users": {"1": 100}},
                {
                    "at": 170,
                    "action": "state",
                    "nodes": [1],
                    "type": "m.room.name",
                    "content": {"name": "by {node}"},
                },
                {"at": 180, "action": "message", "nodes": [2], "count": 3},
            ],
            "traffic": [],
        }
    )
    result = run_document(document)
    timeline = [(t["action"], t["nodes"]) for t in result.table("timeline")]
    assert ("state", "1") in timeline and ("state_refused", "1") not in timeline
    messages = result.table("messages")
    assert len(messages) == 3 and all(m["delivery_ratio"] == 1.0 for m in messages)
    assert all(m["due"] == 5 for m in messages)  # node 5 is back in the room
    agreement = result.table("agreement")
    assert min(r["joined"] for r in agreement if 65 < r["time"] < 120) == 5
    assert agreement[-1]["joined"] == 6 and agreement[-1]["states"] == 1


def test_prefab_room_for_large_scenarios():
    scenario = load_scenario(
        "scale",
        {
            "nodes.count": 12,
            "traffic.0.count": 30,
            "traffic.0.end": 120,
            "scenario.duration": 240,
        },
    )
    result = Simulation(scenario, seed=1).run()
    assert result.table("timeline")[0]["action"] == "prefab_room"
    assert result.summary["delivery"]["messages"] == 30
    assert result.summary["delivery"]["deliveries_due"] == 30 * 11
    assert result.summary["delivery"]["delivery_ratio"] == 1.0
    assert "deliveries" not in result.tables and math.isfinite(
        result.summary["delivery"]["latency_p99"]
    )


def test_a_partial_heal_reconnects_only_the_groups_it_names():
    document = partition_document()
    document["events"] = [
        {"at": 60, "action": "partition", "groups": ["0-1", "2-3", "4-5"]},
        {"at": 100, "action": "heal", "a": "0-1", "b": "2-3"},
    ]
    result = run_document(document, seed=1)
    deliveries = {(d["seq"], d["server"]): d for d in result.table("deliveries")}
    later = [m for m in result.table("messages") if m["sent_at"] > 110 and m["sender"] in (0, 1)]
    assert later
    for m in later:
        reached = {s for s in range(6) if deliveries.get((m["seq"], s), {}).get("delivered_at")}
        assert {2, 3} <= reached and not reached & {4, 5}, (m, reached)
    assert result.table("convergence") == []  # only a full heal awaits convergence
    (heal,) = [row for row in result.table("timeline") if row["action"] == "heal"]
    assert heal["nodes"] == "0 1" and heal["detail"] == "with 2 3"


def test_a_partial_heal_needs_both_sides():
    document = partition_document()
    document["events"] = [{"at": 100, "action": "heal", "a": "0-1"}]
    with pytest.raises(ScenarioError, match="a partial heal needs both a and b"):
        parse_scenario(document)
