"""The least one delivery can cost, and what that means for the scale scenario (issue #9).

In the scale scenario every node runs the real node code, so each of the
~10 million deliveries (1,000 nodes x 10,000 messages, every message to
every other node) is a node receiving a PDU and doing what any homeserver
must before it may keep it. This script times only the steps no design
can skip, each on its own, on one core:

- ``parse``: strict JSON parse, format checks and the reference hash
  (the event ID) of a message PDU (:func:`parse_pdu_json`);
- ``verify``: its ed25519 signature and content hash (:func:`verify_event`);
- ``persist``: one row of the PDU's size written and committed in a WAL
  database, as our storage opens it (a real node writes several rows).

Left out, so the floor stays a floor: the auth rules and state, the room
DAG, duplicate detection, relaying, CBOR framing, the scheduler, the
simulated network. Their sum times the deliveries is the CPU the scenario
needs at the very least; the target allows 10 minutes on 2 cores.

Usage: .venv/bin/python benchmarks/delivery_floor.py [--nodes 1000] [--messages 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from p2pserver.rooms.builder import build_event
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.creation import create_room_events
from p2pserver.rooms.receipt import Verdict, verify_event
from p2pserver.rooms.room_versions import get_room_version
from p2pserver.rooms.signing import SigningKey
from p2pserver.rooms.validation import parse_pdu_json
from p2pserver.storage.database import Database

TARGET_SECONDS = 600.0
CORES = 2


def per_call(fn: Callable[[], object], runs: int) -> float:
    """Best of three batches: seconds of CPU per call."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(runs):
            fn()
        best = min(best, (time.process_time() - start) / runs)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3000)
    args = parser.parse_args()

    version = get_room_version("12")
    key = SigningKey.generate()
    creator = f"@owner:{key.server_name}"
    room = create_room_events(
        version,
        creator=creator,
        signing_key=key,
        request={"preset": "public_chat"},
        server_name=key.server_name,
        origin_server_ts=1,
    )
    state = dict(room.state)
    auth = [state[k] for k in (("m.room.power_levels", ""), ("m.room.member", creator))]
    message = build_event(
        version,
        signing_key=key,
        sender=creator,
        type="m.room.message",
        content={"msgtype": "m.text", "body": "x" * 100},  # the scenario's body size
        room_id=room.room_id,
        prev_events=[room.events[-1]],
        auth_events=auth,
        origin_server_ts=2,
    )
    wire = encode_canonical_json(message.pdu)
    event = parse_pdu_json(wire, version)
    assert verify_event(event).verdict is Verdict.ACCEPT

    def parse() -> None:
        parse_pdu_json(wire, version)

    def verify() -> None:
        verify_event(parse_pdu_json(wire, version))

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "floor.db", migrations=[])
        db.execute(
            "CREATE TABLE pdus (event_nid INTEGER PRIMARY KEY, event_id TEXT UNIQUE, pdu BLOB)"
        )
        serial = iter(range(10**9))

        def persist() -> None:
            with db.transaction():
                db.execute(
                    "INSERT INTO pdus (event_id, pdu) VALUES (?, ?)", (f"${next(serial)}", wire)
                )

        t_parse = per_call(parse, args.runs)
        t_verify = per_call(verify, args.runs) - t_parse  # verify needs a fresh parse each time
        t_persist = per_call(persist, args.runs)
        db.close()

    floor = t_parse + t_verify + t_persist
    deliveries = args.messages * (args.nodes - 1)
    cpu = deliveries * floor
    print(f"delivery floor, one core (message PDU of {len(wire)} bytes, room v12):")
    for name, t in (("parse", t_parse), ("verify", t_verify), ("persist", t_persist)):
        print(f"  {name:8} {t * 1e6:7.1f} us")
    print(f"  {'sum':8} {floor * 1e6:7.1f} us per delivery")
    print(
        f"scale scenario: {args.nodes:,} nodes x {args.messages:,} messages = {deliveries:,} deliveries"
    )
    print(
        f"  floor {cpu:,.0f} CPU-s = {cpu / 60:,.1f} min on one core, {cpu / CORES / 60:,.1f} min on "
        f"{CORES} perfectly shared cores; target {TARGET_SECONDS / 60:.0f} min wall "
        f"(needs <= {TARGET_SECONDS * CORES / deliveries * 1e6:,.0f} us per delivery on {CORES} cores)"
    )


if __name__ == "__main__":
    main()
