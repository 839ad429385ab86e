"""Crash safety: SIGKILL a writer at random moments; nothing acknowledged is lost.

A child process writes events in a loop and prints each event ID once the
call that made it returned (after its commit). The parent kills it with
SIGKILL after a random delay, at least 20 times, and after each kill
reopens the database: every acknowledged event must be there, and both
``PRAGMA integrity_check`` and the store's own invariants
(:meth:`Store.check_consistency`) must pass.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pserver.storage import Store

ROUNDS = 20
REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")


def _kill_after(data_dir: Path, delay: float) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the room exists: writing has begun
    assert first.startswith(b"room "), first + proc.stderr.read()  # type: ignore[union-attr]
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    lines = out.decode().splitlines()
    # a line cut by the kill is not an acknowledgement
    return [line for line in lines if line.startswith("$") and len(line) == 44]


@pytest.mark.timeout(120)
def test_sigkill_never_loses_acknowledged_events(tmp_path: Path) -> None:
    rng = random.Random(4)
    acknowledged: list[str] = []
    started = time.monotonic()
    for _ in range(ROUNDS):
        acknowledged += _kill_after(tmp_path, rng.uniform(0.02, 0.4))
        store = Store.open_data_dir(tmp_path)
        try:
            assert store.check_consistency() == []
            missing = [e for e in acknowledged if store.event_meta(e) is None]
            assert missing == []
        finally:
            store.close()
    assert len(acknowledged) > ROUNDS  # the writer did get work done between kills
    assert time.monotonic() - started < 60
