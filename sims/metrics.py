"""What a simulation measures, and how it is written out.

The :class:`Recorder` follows every node incarnation's room updates (the
engine's :class:`~p2pserver.engine.notifier.Notifier`, the same hook /sync
uses) and the simulator's own actions. It never changes what nodes do.

Messages. A simulated message carries ``"sim": <seq>`` in its content. When
its origin commits it, the origin's update creates the record: the send
time and the servers it is *due* at: those that were joined when it was
sent, by both accounts -- the origin's view (a joined user there: what the
origin addresses) and their own (their user joined in their own current
state at that moment; a server that had already left on its side of a
partition is not due messages sent on the other). The origin itself is
not counted. Each other server's first timeline update for it is its
delivery; so is its restoring, for a server that first got a copy
stripped by a server that did not know of its join yet. A message that is
held but never entered a server's timeline (soft-failed there) counts as
held, not delivered.

Tables (:func:`write_table`): each is a list of flat records, written as
``<name>.csv`` (header row, comma-separated) and ``<name>.json`` (an array
of objects), so ``pandas.read_csv`` and ``pandas.read_json`` load either
directly. Every table the simulator writes has a fixed column list,
:data:`TABLE_COLUMNS`, so its CSV keeps its header even with no rows (a run
without a heal has an empty ``convergence``); ``traffic`` adds a
``bytes_<method>`` column per method seen. Times are virtual seconds since
the start of the run, rounded to microseconds; missing values are empty in
CSV and null in JSON.
``summary.json`` holds the scenario, the seed and the aggregates. Nothing
written here depends on the wall clock, so the same scenario and seed give
byte-identical files; wall time and memory go to ``perf.json``, which is
not part of that promise.
"""

from __future__ import annotations

import csv
import json
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pserver.engine.notifier import RoomUpdate

NAN = math.nan

# The columns of each table, in order (see the module docstring).
MESSAGE_COLUMNS = (
    "seq",
    "event_id",
    "sender",
    "sent_at",
    "due",
    "delivered",
    "held_not_timeline",
    "delivery_ratio",
    "latency_p50",
    "latency_p90",
    "latency_max",
)
DELIVERY_COLUMNS = ("seq", "server", "delivered_at", "latency", "held_not_timeline")
TRAFFIC_COLUMNS = (  # then bytes_<method> for each method any node sent
    "node",
    "server_name",
    "messages_sent",
    "bytes_sent",
    "messages_received",
    "bytes_received",
)
AGREEMENT_COLUMNS = ("time", "running", "joined", "states", "agreement", "heads", "messages")
CONVERGENCE_COLUMNS = (
    "heal",
    "heal_at",
    "state_time",
    "converged_at",
    "convergence_time",
    "converged",
)
TIMELINE_COLUMNS = ("time", "action", "nodes", "detail")
DISCOVERY_COLUMNS = ("node", "complete_at")
EPISODE_COLUMNS = (  # the converge fuzzer's
    "episode",
    "start",
    "heal_at",
    "sides",
    "ops",
    "states_before_heal",
    "heads_before_heal",
    "diverged",
    "converged",
    "state_time",
    "convergence_time",
    "messages",
)
OPLOG_COLUMNS = ("time", "episode", "op", "nodes", "detail", "outcome")  # the fuzzer's
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": MESSAGE_COLUMNS,
    "deliveries": DELIVERY_COLUMNS,
    "traffic": TRAFFIC_COLUMNS,
    "agreement": AGREEMENT_COLUMNS,
    "convergence": CONVERGENCE_COLUMNS,
    "timeline": TIMELINE_COLUMNS,
    "discovery": DISCOVERY_COLUMNS,
    "episodes": EPISODE_COLUMNS,
    "oplog": OPLOG_COLUMNS,
}


@dataclass
class MessageRecord:
    seq: int
    event_id: str
    sender: int
    sent_at: float
    due: tuple[int, ...]  # node indexes, sorted
    delivered: array  # per node index: first timeline time, NaN until then
    held: set[int]  # nodes found holding it outside their timeline (soft-failed)

    def is_due(self, node: int) -> bool:
        # Bisection, not ``in``: asked per delivery, and ``due`` has a
        # thousand entries at scale.
        i = bisect_left(self.due, node)
        return i < len(self.due) and self.due[i] == node


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _t(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, 6)


class Recorder:
    def __init__(self, names: Sequence[str], start: float) -> None:
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(names)}
        self.start = start
        self.room_id: str | None = None
        self.messages: dict[int, MessageRecord] = {}
        self.by_event: dict[str, MessageRecord] = {}
        self.outstanding = [0] * len(names)  # per node: due messages not yet delivered
        self.self_joined = [False] * len(names)  # per node: joined in its own view (kept current)
        self.skipped_sends = 0
        self.failed_sends = 0
        self.timeline: list[dict[str, Any]] = []
        self.agreement: list[dict[str, Any]] = []
        self.convergence: list[dict[str, Any]] = []
        self.discovery: dict[int, float] = {}

    # --- the hooks --------------------------------------------------------------------

    def on_update(
        self, node: int, update: RoomUpdate, now: float, joined: Callable[[], set[str]]
    ) -> None:
        """A node's room update: a message's origin commit, or its delivery elsewhere
        (in the timeline, or restored whole after arriving stripped)."""
        event = update.event
        if event is None and update.restored is not None:
            restored = self.by_event.get(update.restored)
            if restored is not None:
                self._delivered(restored, node, now)
            return
        if event is None or event.type != "m.room.message" or event.room_id != self.room_id:
            return
        seq = event.content.get("sim")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        record = self.messages.get(seq)
        if record is None:
            if not update.local:
                return  # a message we did not see committed: not one of ours
            me = self.names[node]
            flags = self.self_joined
            due = tuple(
                sorted(
                    i
                    for i in (self.index.get(s) for s in joined() if s != me)
                    if i is not None and flags[i]
                )
            )
            delivered = array("d", [NAN]) * len(self.names)
            delivered[node] = now - self.start
            record = MessageRecord(
                seq, event.event_id, node, now - self.start, due, delivered, set()
            )
            self.messages[seq] = record
            self.by_event[event.event_id] = record
            for i in due:
                self.outstanding[i] += 1
            return
        if event.event_id == record.event_id:
            self._delivered(record, node, now)

    def _delivered(self, record: MessageRecord, node: int, now: float) -> None:
        if not math.isnan(record.delivered[node]):
            return
        record.delivered[node] = now - self.start
        if node in record.held:
            record.held.discard(node)  # found held (soft failed, or stripped) before
        elif record.is_due(node):
            self.outstanding[node] -= 1

    def mark_held(self, record: MessageRecord, node: int) -> None:
        """``node`` holds the message though it never entered its timeline."""
        if node not in record.held and math.isnan(record.delivered[node]):
            record.held.add(node)
            if record.is_due(node):
                self.outstanding[node] -= 1

    def missing(self, node: int) -> list[MessageRecord]:
        """Messages due at ``node`` that it has neither delivered nor been found holding."""
        if self.outstanding[node] == 0:
            return []
        return [
            r
            for r in self.messages.values()
            if r.is_due(node) and math.isnan(r.delivered[node]) and node not in r.held
        ]

    def log(self, now: float, action: str, nodes: Iterable[int] = (), detail: str = "") -> None:
        self.timeline.append(
            {
                "time": _t(now - self.start),
                "action": action,
                "nodes": " ".join(map(str, nodes)),
                "detail": detail,
            }
        )

    # --- tables -----------------------------------------------------------------------

    def message_rows(self) -> list[dict[str, Any]]:
        rows = []
        for seq in sorted(self.messages):
            r = self.messages[seq]
            latencies = sorted(
                r.delivered[i] - r.sent_at for i in r.due if not math.isnan(r.delivered[i])
            )
            reached = len(latencies) + sum(1 for i in r.held if r.is_due(i))
            rows.append(
                {
                    "seq": r.seq,
                    "event_id": r.event_id,
                    "sender": r.sender,
                    "sent_at": _t(r.sent_at),
                    "due": len(r.due),
                    "delivered": len(latencies),
                    "held_not_timeline": reached - len(latencies),
                    "delivery_ratio": _t(len(latencies) / len(r.due)) if r.due else None,
                    "latency_p50": _t(percentile(latencies, 50)),
                    "latency_p90": _t(percentile(latencies, 90)),
                    "latency_max": _t(latencies[-1]) if latencies else None,
                }
            )
        return rows

    def delivery_rows(self) -> list[dict[str, Any]]:
        rows = []
        for seq in sorted(self.messages):
            r = self.messages[seq]
            for i in r.due:
                t = r.delivered[i]
                rows.append(
                    {
                        "seq": r.seq,
                        "server": i,
                        "delivered_at": _t(t),
                        "latency": _t(t - r.sent_at),
                        "held_not_timeline": i in r.held,
                    }
                )
        return rows

    def all_latencies(self) -> list[float]:
        out = []
        for r in self.messages.values():
            for i in r.due:
                t = r.delivered[i]
                if not math.isnan(t):
                    out.append(t - r.sent_at)
        out.sort()
        return out

    def delivery_summary(self) -> dict[str, Any]:
        due = sum(len(r.due) for r in self.messages.values())
        latencies = self.all_latencies()
        return {
            "messages": len(self.messages),
            "skipped_sends": self.skipped_sends,
            "failed_sends": self.failed_sends,
            "deliveries_due": due,
            "delivered": len(latencies),
            "delivery_ratio": _t(len(latencies) / due) if due else None,
            "latency_p50": _t(percentile(latencies, 50)),
            "latency_p90": _t(percentile(latencies, 90)),
            "latency_p99": _t(percentile(latencies, 99)),
            "latency_max": _t(latencies[-1]) if latencies else None,
        }


def traffic_rows(names: Sequence[str], counters: Mapping[str, Any]) -> list[dict[str, Any]]:
    methods = sorted({m for c in counters.values() for m in c.bytes_by_method})
    rows = []
    for i, name in enumerate(names):
        c = counters.get(name)
        row: dict[str, Any] = {
            "node": i,
            "server_name": name,
            "messages_sent": c.messages_sent if c else 0,
            "bytes_sent": c.bytes_sent if c else 0,
            "messages_received": c.messages_received if c else 0,
            "bytes_received": c.bytes_received if c else 0,
        }
        for m in methods:
            row[f"bytes_{m}"] = c.bytes_by_method.get(m, 0) if c else 0
        rows.append(row)
    return rows


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(_clean(value), indent=1, ensure_ascii=False) + "\n", "utf-8")


def write_table(
    out: Path, name: str, rows: list[dict[str, Any]], columns: Sequence[str] | None = None
) -> list[Path]:
    """``<name>.csv`` and ``<name>.json`` for one table.

    The columns are ``columns``, else the table's in :data:`TABLE_COLUMNS`,
    then any other keys the rows carry (first seen first), so the CSV header
    is there even with no rows; a row without a column has it empty (null).
    """
    declared = columns if columns is not None else TABLE_COLUMNS.get(name, ())
    fields: dict[str, None] = dict.fromkeys(declared)
    for row in rows:
        fields.update(dict.fromkeys(row))
    records = [{k: _clean(row.get(k)) for k in fields} for row in rows]
    csv_path = out / f"{name}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    json_path = out / f"{name}.json"
    json_path.write_text(
        json.dumps(records, ensure_ascii=False, separators=(",", ":")) + "\n", "utf-8"
    )
    return [csv_path, json_path]
