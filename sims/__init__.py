"""sims: simulate networks of real p2pserver nodes, deterministically.

The simulator runs the production node code -- storage, room engine and
federation -- for many nodes in one process, on a simulated network
(:mod:`sims.network`, an implementation of the ``Network`` interface) in
virtual time (:mod:`sims.determinism`). The same scenario and seed give
bit-identical results, message timing included.

- :mod:`sims.scenario`: the TOML scenario format; :func:`load_scenario`.
- :mod:`sims.simulation`: :class:`Simulation` and :func:`run_scenario`, the
  Python API; results as tables (:mod:`sims.metrics`) and plots
  (:mod:`sims.plots`).
- :mod:`sims.converge`: the convergence fuzzer.
- ``sims/scenarios/``: the built-in scenarios (field-unit, outage,
  converge, scale).

Command line: ``p2pserver sim run SCENARIO --seed N --out DIR``.
"""

from sims.scenario import Scenario, ScenarioError, builtin_scenarios, load_scenario, parse_scenario
from sims.simulation import SimResult, Simulation, run_scenario

__all__ = [
    "Scenario",
    "ScenarioError",
    "SimResult",
    "Simulation",
    "builtin_scenarios",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]
