"""Heavy-tailed latency: an infinite mean is refused, a capped one keeps lossy links moving."""

from __future__ import annotations

import math

import pytest

from sims.distributions import parse_distribution
from sims.network import LinkProfile
from sims.scenario import ScenarioError, parse_scenario

from .conftest import partition_document
from .test_network import make, run, running

HEAVY = {"dist": "pareto", "scale": 0.01, "alpha": 0.9}


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_a_pareto_with_an_infinite_mean_and_no_max_is_a_scenario_error(alpha):
    document = partition_document(**{"network.latency": {**HEAVY, "alpha": alpha}})
    with pytest.raises(ScenarioError, match=r"network\.latency: .*infinite mean.*max"):
        parse_scenario(document)
    # Capped, the same tail is a valid scenario.
    capped = partition_document(**{"network.latency": {**HEAVY, "alpha": alpha, "max": 0.5}})
    assert parse_scenario(capped).network.default.latency.high == 0.5


def test_the_clamped_mean_is_finite_when_capped():
    capped = parse_distribution({**HEAVY, "max": 0.5})
    assert capped.mean() == math.inf and capped.clamped_mean() == 0.5
    finite = parse_distribution({"dist": "pareto", "scale": 0.01, "alpha": 2.0, "max": 0.5})
    assert finite.clamped_mean() == pytest.approx(0.02)
    floor = parse_distribution({"dist": "constant", "value": 0.01, "min": 0.03})
    assert floor.clamped_mean() == 0.03


def test_a_lossy_link_with_a_capped_heavy_tail_delivers_everything():
    """Its mean is infinite, but the timeout follows the cap: every lost
    frame is sent again and in-order delivery moves on."""
    profile = LinkProfile(parse_distribution({**HEAVY, "max": 0.5}), loss=0.1)

    async def main():
        hub, (a, b) = make(2, profile=profile, seed=5)
        async with running(hub, [a, b]):
            answers = [await a.request("n1", "ping", {"k": k}, timeout=30) for k in range(50)]
            return answers, hub.retransmitted_frames, hub.connection_resets

    answers, retransmitted, resets = run(main)
    assert [r["echo"] for r in answers] == [{"k": k} for k in range(50)]
    assert retransmitted > 0 and resets == 0  # losses happened and were repaired
