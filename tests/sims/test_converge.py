"""The converge fuzzer: CI seeds, the anti-vacuity check, and that a broken node is caught."""

from __future__ import annotations

import pytest

from p2pserver.engine.engine import PduResult
from sims import load_scenario, run_scenario
from sims.converge import ConvergeFuzzer

# A CI-sized run: 8 servers (6 in the room at first), 6 episodes.
CI = {
    "nodes.count": 8,
    "fuzzer.members": 6,
    "fuzzer.episodes": 6,
    "fuzzer.settle_timeout": 600,
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converge_fuzzer_ci_seeds(seed):
    result = run_scenario(load_scenario("converge", CI), seed=seed)
    assert result.failure is None, result.failure
    fuzz = result.summary["fuzzer"]
    assert fuzz["passed"] and fuzz["episodes"] == 6 and fuzz["converged"] == 6
    assert fuzz["diverged"] >= 1  # the anti-vacuity check held
    ops = {op["op"] for op in result.table("oplog")}
    assert {"partition", "state", "message", "heal"} <= ops
    episodes = result.table("episodes")
    assert any(e["states_before_heal"] > 1 for e in episodes)


def test_the_fuzzer_replays_exactly():
    first = run_scenario(load_scenario("converge", {**CI, "fuzzer.episodes": 2}), seed=4)
    again = run_scenario(load_scenario("converge", {**CI, "fuzzer.episodes": 2}), seed=4)
    assert first.table("oplog") == again.table("oplog") and first.tables == again.tables


def test_a_run_that_never_diverges_fails_the_anti_vacuity_check():
    quiet = {**CI, "fuzzer.episodes": 2, "fuzzer.partitions": False, "fuzzer.conflicts": False}
    result = run_scenario(load_scenario("converge", quiet), seed=1)
    assert result.failure is not None
    assert "anti-vacuity" in result.failure
    assert "seed 1" in result.failure and "p2pserver sim run converge --seed 1" in result.failure
    assert "operation log" in result.failure and "heal" in result.failure
    assert result.summary["fuzzer"]["passed"] is False
    assert all(not e["diverged"] for e in result.table("episodes"))


class DeafNode(ConvergeFuzzer):
    """From the first episode on, node 2 drops every event it is sent or pulls."""

    deaf = False

    def make_deaf(self, node):
        engine = node.federation.engine

        async def drop(origin, pdu, **kwargs):
            return PduResult(None, None, "deaf")

        async def drop_all(origin, pdus):
            return [PduResult(None, None, "deaf") for _ in pdus]

        engine.receive_pdu = drop
        engine.receive_transaction = drop_all

    async def run_episode(self, episode):
        if not self.deaf:
            self.deaf = True
            self.make_deaf(self.nodes[2])
        await super().run_episode(episode)

    async def start_node(self, node):
        await super().start_node(node)
        if self.deaf and node.index == 2:
            self.make_deaf(node)  # a restart does not cure it


def test_a_node_that_never_catches_up_fails_the_run_with_a_report():
    scenario = load_scenario("converge", {**CI, "fuzzer.episodes": 3, "fuzzer.settle_timeout": 120})
    result = DeafNode(scenario, seed=1).run()
    assert result.failure is not None
    assert "episode 0: no convergence 120s after the heal" in result.failure
    assert "  node 2: running=True joined=True" in result.failure
    assert "replay: p2pserver sim run converge --seed 1" in result.failure
    assert result.summary["fuzzer"]["episodes"] == 1 and result.summary["fuzzer"]["passed"] is False
