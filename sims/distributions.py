"""Latency distributions for simulated links, as scenarios write them.

A distribution is a TOML inline table (or a bare number for a constant),
always in seconds::

    latency = 0.02                                            # constant
    latency = { dist = "uniform", low = 0.01, high = 0.05 }
    latency = { dist = "normal", mean = 0.04, sd = 0.01 }
    latency = { dist = "lognormal", median = 0.04, sigma = 0.5 }
    latency = { dist = "exponential", mean = 0.03 }
    latency = { dist = "pareto", scale = 0.02, alpha = 2.5 }
    latency = { dist = "empirical", values = [0.01, 0.012, 0.3] }

Every distribution also takes ``min`` (default 0) and ``max`` (default
none): draws are clamped to them, so a normal never yields a negative delay
and a heavy tail can be capped. A Pareto with ``alpha <= 1`` has an
infinite mean, so it needs a ``max``. Draws take an explicit ``random.Random``
(see :mod:`sims.determinism`); nothing here holds randomness of its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class DistributionError(ValueError):
    """A distribution in a scenario is malformed."""


_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "normal": ("mean", "sd"),
    "lognormal": ("median", "sigma"),
    "exponential": ("mean",),
    "pareto": ("scale", "alpha"),
    "empirical": ("values",),
}


@dataclass(frozen=True)
class Distribution:
    kind: str
    params: tuple[tuple[str, Any], ...]
    low: float = 0.0
    high: float = math.inf

    def __post_init__(self) -> None:
        # Draws happen per frame: bind the parameters once, not per draw.
        values = [v for _, v in self.params] + [0.0, 0.0]
        object.__setattr__(self, "_a", values[0])
        object.__setattr__(self, "_b", values[1])

    def sample(self, rng: random.Random) -> float:
        kind = self.kind
        a: Any = self._a  # type: ignore[attr-defined]
        b: Any = self._b  # type: ignore[attr-defined]
        if kind == "constant":
            value = a
        elif kind == "uniform":
            value = rng.uniform(a, b)
        elif kind == "normal":
            value = rng.gauss(a, b)
        elif kind == "lognormal":
            value = a * math.exp(rng.gauss(0.0, b))
        elif kind == "exponential":
            value = rng.expovariate(1.0 / a) if a > 0 else 0.0
        elif kind == "pareto":
            value = a * rng.paretovariate(b)
        else:  # empirical
            value = rng.choice(a)
        return min(max(value, self.low), self.high)

    def mean(self) -> float:
        """The (unclamped) mean, for summaries and the DHT's hop cost."""
        p = dict(self.params)
        kind = self.kind
        if kind == "constant":
            return float(p["value"])
        if kind == "uniform":
            return (p["low"] + p["high"]) / 2
        if kind in ("normal", "exponential"):
            return float(p["mean"])
        if kind == "lognormal":
            return float(p["median"] * math.exp(p["sigma"] ** 2 / 2))
        if kind == "pareto":
            alpha = p["alpha"]
            return float(p["scale"] * alpha / (alpha - 1)) if alpha > 1 else math.inf
        return sum(p["values"]) / len(p["values"])

    def clamped_mean(self) -> float:
        """The mean clamped to ``[min, max]``: finite whenever ``max`` is set, even
        for a Pareto whose own mean is infinite (then it is ``max``). Retransmission
        timeouts use it."""
        return min(max(self.mean(), self.low), self.high)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.kind, **dict(self.params)}
        if self.low:
            out["min"] = self.low
        if self.high != math.inf:
            out["max"] = self.high
        return out


def constant(seconds: float) -> Distribution:
    return parse_distribution(seconds)


def parse_distribution(spec: object, *, where: str = "latency") -> Distribution:
    """A Distribution from its scenario form; DistributionError says what is wrong."""
    if isinstance(spec, bool):
        raise DistributionError(f"{where}: expected a number or a table, got a boolean")
    if isinstance(spec, (int, float)):
        spec = {"dist": "constant", "value": spec}
    if not isinstance(spec, Mapping):
        raise DistributionError(f"{where}: expected a number or a table like {{dist = ...}}")
    kind = spec.get("dist")
    if kind not in _PARAMS:
        raise DistributionError(f"{where}: dist must be one of {', '.join(sorted(_PARAMS))}")
    names = _PARAMS[kind]
    unknown = set(spec) - {"dist", "min", "max", *names}
    if unknown:
        raise DistributionError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    params: list[tuple[str, Any]] = []
    for name in names:
        if name not in spec:
            raise DistributionError(f"{where}: {kind} needs {name}")
        value = spec[name]
        if name == "values":
            if (
                not isinstance(value, list)
                or not value
                or not all(_is_number(v) and v >= 0 for v in value)
            ):
                raise DistributionError(f"{where}: values must be a non-empty list of numbers >= 0")
            params.append((name, tuple(float(v) for v in value)))
            continue
        if not _is_number(value) or value < 0:
            raise DistributionError(f"{where}: {name} must be a number >= 0")
        params.append((name, float(value)))
    p = dict(params)
    if kind == "uniform" and p["low"] > p["high"]:
        raise DistributionError(f"{where}: low must not exceed high")
    if kind == "pareto" and p["alpha"] <= 0:
        raise DistributionError(f"{where}: alpha must be > 0")
    low = spec.get("min", 0.0)
    high = spec.get("max", math.inf)
    if not _is_number(low) or low < 0 or not (_is_number(high) or high == math.inf) or high < low:
        raise DistributionError(f"{where}: need 0 <= min <= max")
    if kind == "pareto" and p["alpha"] <= 1 and high == math.inf:
        # Retransmission timeouts follow the mean latency: an infinite one
        # would stall a connection at its first lost frame.
        raise DistributionError(
            f"{where}: a pareto with alpha <= 1 has an infinite mean; "
            "give alpha > 1 or cap it with max"
        )
    return Distribution(kind, tuple(params), float(low), float(high))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
