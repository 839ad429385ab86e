"""Small scenarios of real nodes for the simulator's tests (seconds each)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sims import Simulation, parse_scenario


def partition_document(**changes: Any) -> dict[str, Any]:
    """6 nodes, a room, chat, a partition with a conflicting topic on each side, a heal."""
    document: dict[str, Any] = {
        "scenario": {"name": "small-partition", "duration": 300},
        "nodes": {"count": 6},
        "groups": {"left": "0-2", "right": "3-5"},
        "network": {
            "latency": {"dist": "lognormal", "median": 0.02, "sigma": 0.4},
            "loss": 0.01,
            "partition_mode": "blackhole",
        },
        "federation": {"sync_interval": 20, "backoff_max": 20},
        "room": {"creator": 0, "members": "all", "power": {"3": 100}},
        "traffic": [{"senders": "all", "start": 20, "end": 250, "rate": 0.3}],
        "events": [
            {"at": 60, "action": "partition", "groups": ["left", "right"]},
            {
                "at": 70,
                "action": "state",
                "nodes": [0],
                "type": "m.room.topic",
                "content": {"topic": "left {node}"},
            },
            {
                "at": 71,
                "action": "state",
                "nodes": [3],
                "type": "m.room.topic",
                "content": {"topic": "right {node}"},
            },
            {"at": 120, "action": "heal"},
        ],
        "metrics": {"sample_interval": 5, "settle": 150},
    }
    for dotted, value in changes.items():
        target = document
        parts = dotted.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return document


def run_document(document: dict[str, Any], seed: int = 1, **kwargs: Any):
    return Simulation(parse_scenario(copy.deepcopy(document)), seed=seed, **kwargs).run()


@pytest.fixture(scope="session")
def partition_result():
    """The small partition scenario, run once for several tests."""
    return run_document(partition_document(), seed=1)
