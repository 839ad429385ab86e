"""Ingest benchmark: PDUs/s from a peer into a 1,000-member room.

Builds, untimed, a signed linear room DAG: the creator's initial events,
``--members`` joins from users spread over ``--servers`` servers (each with
its own signing key), then ``--events`` events, mostly messages with a
``--state-share`` of state changes (topics and profile updates), all
signed by their senders' servers. Then a fresh node (a file database in a
temporary directory, WAL) receives every PDU as a peer sends them, in
transactions of ``--per-transaction`` PDUs (:meth:`RoomEngine.receive_transaction`;
1 means :meth:`RoomEngine.receive_pdu` and a commit per event): format,
signature and hash checks, the auth rules three times, state, persistence.

Reports PDUs/s for the joins and for the main phase (wall clock, and per
CPU second of this process, which other load on the machine disturbs
less), peak RSS, and the database size per 10,000 events after a WAL
checkpoint.

    .venv/bin/python benchmarks/ingest.py [--members 1000] [--events 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pserver.engine import RoomEngine  # noqa: E402
from p2pserver.rooms.auth import select_auth_event_ids  # noqa: E402
from p2pserver.rooms.builder import build_event  # noqa: E402
from p2pserver.rooms.events import Event, StateKey  # noqa: E402
from p2pserver.rooms.room_versions import get_room_version  # noqa: E402
from p2pserver.rooms.signing import SigningKey  # noqa: E402
from p2pserver.storage import Store  # noqa: E402


class RoomBuilder:
    """A linear room DAG, built event by event with the spec's auth events."""

    def __init__(self, room_version: str) -> None:
        self.version = get_room_version(room_version)
        self.state: dict[StateKey, str] = {}
        self.events: list[Event] = []
        self.room_id: str | None = None
        self.ts = 1_700_000_000_000

    def add(
        self,
        key: SigningKey,
        sender: str,
        type_: str,
        content: dict[str, Any],
        state_key: str | None = None,
    ) -> Event:
        auth = select_auth_event_ids(self.version, type_, sender, state_key, content, self.state)
        self.ts += 1
        prev = self.events[-1:]
        event = build_event(
            self.version,
            signing_key=key,
            sender=sender,
            type=type_,
            content=content,
            room_id=self.room_id,
            prev_events=prev,
            auth_events=auth,
            state_key=state_key,
            origin_server_ts=self.ts,
        )
        if self.room_id is None:
            self.room_id = event.room_id
        if state_key is not None:
            self.state[(type_, state_key)] = event.event_id
        self.events.append(event)
        return event


def build_room(
    room_version: str, members: int, servers: int, events: int, state_share: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(setup PDUs incl. joins, main-phase PDUs, origin server name)."""
    rng = random.Random(seed)
    keys = [SigningKey.generate() for _ in range(servers)]
    origin = keys[0]
    creator = f"@creator:{origin.server_name}"
    room = RoomBuilder(room_version)
    version = room.version
    create_content: dict[str, Any] = {"room_version": version.identifier}
    if not version.use_room_create_sender:
        create_content["creator"] = creator
    room.add(origin, creator, "m.room.create", create_content, "")
    room.add(origin, creator, "m.room.member", {"membership": "join"}, creator)
    users = {} if version.privileged_creators else {creator: 100}
    room.add(
        origin, creator, "m.room.power_levels", {"users": users, "events": {"m.room.topic": 0}}, ""
    )
    room.add(origin, creator, "m.room.join_rules", {"join_rule": "public"}, "")
    room.add(origin, creator, "m.room.history_visibility", {"history_visibility": "shared"}, "")
    setup = len(room.events)
    people: list[tuple[SigningKey, str]] = []
    for i in range(members):
        key = keys[i % servers]
        user = f"@user{i}:{key.server_name}"
        room.add(key, user, "m.room.member", {"membership": "join"}, user)
        people.append((key, user))
    joined = len(room.events)
    for i in range(events):
        key, user = rng.choice(people)
        if rng.random() < state_share:
            if rng.random() < 0.5:
                room.add(key, user, "m.room.topic", {"topic": f"topic {i}"}, "")
            else:
                content = {"membership": "join", "displayname": f"name {i}"}
                room.add(key, user, "m.room.member", content, user)
        else:
            room.add(key, user, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"})
    pdus = [json.loads(json.dumps(e.get_pdu_json())) for e in room.events]
    del setup
    return pdus[:joined], pdus[joined:], origin.server_name


async def ingest(
    engine: RoomEngine, origin: str, pdus: list[dict[str, Any]], per_transaction: int
) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) to receive ``pdus``.

    PDUs arrive as a peer sends them: in transactions of ``per_transaction``
    (the spec allows 50), or one by one with 1.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(pdus), per_transaction):
        chunk = pdus[i : i + per_transaction]
        if per_transaction == 1:
            results = [await engine.receive_pdu(origin, chunk[0])]
        else:
            results = await engine.receive_transaction(origin, chunk)
        for result in results:
            if not result.accepted or result.soft_failed:
                raise SystemExit(f"benchmark PDU not accepted: {result}")
    return time.perf_counter() - start, time.process_time() - start_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--state-share", type=float, default=0.05)
    parser.add_argument("--room-version", default="12")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--per-transaction", type=int, default=50, help="PDUs per incoming transaction (1-50)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    setup, main_phase, origin = build_room(
        args.room_version, args.members, args.servers, args.events, args.state_share, args.seed
    )
    built = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open_data_dir(tmp)
        engine = RoomEngine(store, SigningKey.generate())
        per_txn = max(1, min(args.per_transaction, 50))
        join_seconds, _ = trio.run(ingest, engine, origin, setup, per_txn)
        main_seconds, main_cpu = trio.run(ingest, engine, origin, main_phase, per_txn)
        total_events = len(setup) + len(main_phase)
        rows = store.table_rows()
        problems = store.check_consistency()
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.is_file())
        store.close()
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    figures = {
        "room_version": args.room_version,
        "members": args.members,
        "servers": args.servers,
        "events_total": total_events,
        "pdus_per_transaction": per_txn,
        "build_seconds": round(built, 2),
        "join_phase_pdus_per_s": round(len(setup) / join_seconds, 1),
        "main_phase_pdus": len(main_phase),
        "main_phase_pdus_per_s": round(len(main_phase) / main_seconds, 1),
        # Less sensitive to other processes on a shared machine:
        "main_phase_pdus_per_cpu_s": round(len(main_phase) / main_cpu, 1),
        "peak_rss_mib": round(peak_rss_kib / 1024, 1),
        "rss_before_ingest_mib": round(rss_before / 1024, 1),
        "db_bytes_per_10k_events": round(db_bytes / total_events * 10_000),
        "db_mib": round(db_bytes / 2**20, 2),
        "state_group_entries": rows["state_group_entries"],
        "state_groups": rows["state_groups"],
        "consistency_problems": problems,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:28} {value}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
