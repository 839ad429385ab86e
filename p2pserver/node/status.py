"""The peers snapshot: what a running node tells ``p2pserver peers``.

A running node rewrites ``<data_dir>/peers.json`` every few seconds and at
each peer change (write to a temporary file, then rename, so a reader never
sees half a file). ``p2pserver peers`` reads it; the node need not answer
anything. The ``pid`` lets the reader tell a running node's snapshot from a
stale one left by a node that stopped or crashed.

Contents (JSON object): ``server_name``, ``peer_id``, ``pid``,
``updated_at`` (Unix seconds), ``listen_addresses`` (multiaddrs ending in
``/p2p/<PeerID>``, ready for ``--bootstrap``), ``control_socket`` (or
null), ``connected`` and ``known`` (server names), ``queued`` (outbound
queue length per destination) and ``backing_off`` (seconds until the next
attempt per destination).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_FILE_NAME = "peers.json"


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE_NAME


def write_status(data_dir: Path, status: dict[str, Any]) -> None:
    path = status_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The snapshot, or None if there is none (or it cannot be read)."""
    try:
        status = json.loads(status_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
