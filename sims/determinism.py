"""Determinism: seeds, virtual time and trio's scheduler.

The same scenario and seed must give bit-identical results, message timing
included. Three sources of variation are closed here:

1. Randomness. Every random choice comes from :meth:`Seeds.rng`, one
   ``random.Random`` per *purpose* ("latency", "traffic", "fuzzer", ...),
   seeded from SHA-256 of ``"<seed>/<purpose>"``. Independent streams keep
   a change in one part of a scenario (say, more traffic) from shifting the
   draws of another (the link latencies). Node keys come from
   :meth:`Seeds.bytes`, so server names are reproducible too.
2. Time. Virtual time comes from ``trio.testing.MockClock`` with autojump:
   whenever every task waits, the clock jumps to the next deadline, so an
   hour of chat costs no real hour. Timestamps that end up in events come
   from :func:`virtual_clock_ms`, virtual time since the run began plus
   :data:`EPOCH_MS`, never the wall clock.
3. trio's scheduler. trio runs each batch of runnable tasks in an order
   drawn from its private RNG, and tasks that become runnable at the same
   instant (two timers with one deadline) enter a batch in an order that
   depends on object addresses. :func:`deterministic_run` seeds that RNG
   and switches on the deterministic mode pytest-trio uses under
   Hypothesis (each batch is sorted by task creation order before it is
   shuffled), so the order depends only on the seed and the program.

One source remains outside the process's control: string hashing. The
node code iterates sets of server names, whose order follows
``PYTHONHASHSEED``. Within one process every run sees the same hashes; for
identical results across processes run with a fixed ``PYTHONHASHSEED``
(``p2pserver sim run`` re-executes itself with ``PYTHONHASHSEED=0``).
:func:`hash_seed` reports the setting in the results.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
import trio.testing
from trio._core import _run as trio_run  # private: the scheduler's RNG and its switch

T = TypeVar("T")

# Virtual time 0 is this wall-clock instant (2023-11-14T22:13:20Z) in
# origin_server_ts; any fixed 13-digit value keeps sizes like production's.
EPOCH_MS = 1_700_000_000_000


class Seeds:
    """Independent, reproducible random streams derived from one integer seed."""

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("seed must be an integer")
        self.seed = seed

    def _digest(self, purpose: str) -> bytes:
        return hashlib.sha256(f"{self.seed}/{purpose}".encode()).digest()

    def rng(self, purpose: str) -> random.Random:
        """A fresh ``random.Random`` for ``purpose`` (the same stream every time)."""
        return random.Random(int.from_bytes(self._digest(purpose), "big"))

    def bytes(self, purpose: str) -> bytes:
        """32 reproducible bytes for ``purpose`` (e.g. an ed25519 seed)."""
        return self._digest(purpose)


def virtual_clock_ms(start: float) -> Callable[[], int]:
    """Milliseconds since the epoch in virtual time, for events' ``origin_server_ts``.

    ``start`` is ``trio.current_time()`` when the run began.
    """

    def clock() -> int:
        return EPOCH_MS + round((trio.current_time() - start) * 1000)

    return clock


def hash_seed() -> str | None:
    """The PYTHONHASHSEED in force ("random" if hashing is randomised and unset)."""
    if not sys.flags.hash_randomization:
        return "0"
    return os.environ.get("PYTHONHASHSEED") or "random"


def deterministic_run(fn: Callable[..., Awaitable[T]], *args: Any, seed: int) -> T:
    """``trio.run(fn, *args)`` on a MockClock with trio's scheduling made reproducible."""
    saved_state = trio_run._r.getstate()
    saved_flag = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    trio_run._r.seed(int.from_bytes(Seeds(seed)._digest("trio-scheduler"), "big"))
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    try:
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(functools.partial(fn, *args), clock=clock)
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]
        trio_run._r.setstate(saved_state)
