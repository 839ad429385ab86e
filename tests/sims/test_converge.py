"""The converge fuzzer: CI seeds, the anti-vacuity check, and that a broken node is caught."""

from __future__ import annotations

import pytest

from p2pserver.engine.engine import PduResult
from p2pserver.rooms.redaction import redact
from sims import load_scenario, run_scenario
from sims.converge import ConvergeFuzzer
from sims.simulation import held_state, state_fingerprint

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
    # The agreement table holds each heal's divergence and each convergence.
    states_at = {row["time"]: row["states"] for row in result.table("agreement")}
    for e in episodes:
        assert states_at[round(e["heal_at"], 3)] == e["states_before_heal"]
        if e["convergence_time"] > 0:
            assert states_at[round(e["heal_at"] + e["convergence_time"], 3)] == 1


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


class StrippedNode(DeafNode):
    """Node 2 gets every message stripped (as from servers that do not know
    of its join) and never asks for whole copies."""

    stripped_type = "m.room.message"

    def make_deaf(self, node):
        engine = node.federation.engine
        receive_pdu, receive_transaction = engine.receive_pdu, engine.receive_transaction

        def strip(pdu):
            version = engine.store.room_version(pdu.get("room_id", ""))
            if pdu.get("type") == self.stripped_type and version is not None:
                return redact(pdu, version)
            return pdu

        async def stripped_pdu(origin, pdu, **kwargs):
            return await receive_pdu(origin, strip(pdu), **kwargs)

        async def stripped_transaction(origin, pdus):
            return await receive_transaction(origin, [strip(p) for p in pdus])

        async def no_restore(room_id, **kwargs):
            return 0

        engine.receive_pdu = stripped_pdu
        engine.receive_transaction = stripped_transaction
        node.federation.sync.restore_stripped = no_restore


def test_a_message_held_only_stripped_has_not_reached_the_node():
    scenario = load_scenario("converge", {**CI, "fuzzer.episodes": 3, "fuzzer.settle_timeout": 120})
    result = StrippedNode(scenario, seed=1).run()
    assert result.failure is not None
    assert "episode 0: no convergence 120s after the heal" in result.failure
    assert "  node 2: running=True joined=True" in result.failure
    node_2 = next(line for line in result.failure.splitlines() if line.startswith("  node 2:"))
    assert "missing_messages=0" not in node_2  # the same state, but not the messages
    assert result.summary["fuzzer"]["passed"] is False


class StrippedStateNode(StrippedNode):
    """Node 2 gets the fuzzer's custom state events stripped and never asks for whole copies."""

    stripped_type = "org.p2pserver.sim.fuzz"


def test_a_state_event_held_only_stripped_is_not_the_same_state():
    # The same event IDs, but node 2 holds the custom state stripped: its
    # clients see other content, so the room has not converged.
    scenario = load_scenario("converge", {**CI, "fuzzer.episodes": 3, "fuzzer.settle_timeout": 120})
    result = StrippedStateNode(scenario, seed=1).run()
    assert result.failure is not None
    assert "no convergence 120s after the heal" in result.failure
    nodes = [line for line in result.failure.splitlines() if line.startswith("  node ")]
    node_2 = next(line for line in nodes if line.startswith("  node 2:"))
    assert "joined=True" in node_2 and "missing_messages=0" in node_2
    others = [line for line in nodes if "joined=True" in line and line != node_2]
    state_of = lambda line: line.split("state=")[1].split()[0]  # noqa: E731
    assert others and all(state_of(line) != state_of(node_2) for line in others)
    assert result.summary["fuzzer"]["passed"] is False


def test_held_state_tells_a_redacted_copy_from_the_whole_event():
    state = {("m.room.name", ""): "$name", ("m.room.topic", ""): "$topic"}
    assert held_state(state) == [
        ["m.room.name", "", "$name", "whole"],
        ["m.room.topic", "", "$topic", "whole"],
    ]
    assert held_state(state, {"$name"})[0] == ["m.room.name", "", "$name", "redacted"]
    assert state_fingerprint(state) != state_fingerprint(state, {"$name"})
    assert state_fingerprint(state, {"$name"}) == state_fingerprint(dict(state), ["$name"])


class CrashingFuzzer(ConvergeFuzzer):
    """Node code that raises in the second episode."""

    async def run_episode(self, episode):
        if episode == 1:
            raise RuntimeError("a bug in node code")
        await super().run_episode(episode)


def test_an_error_in_the_run_still_reports_the_seed_and_the_operation_log():
    scenario = load_scenario("converge", {**CI, "fuzzer.episodes": 2})
    with pytest.raises(Exception) as caught:
        CrashingFuzzer(scenario, seed=5).run()
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "converge fuzzer FAILED (scenario converge, seed 5)" in notes
    assert "a bug in node code" in notes
    assert "replay: p2pserver sim run converge --seed 5 --set nodes.count=8" in notes
    assert "operation log" in notes and " heal " in notes
