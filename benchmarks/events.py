"""Receive-path throughput of the event core (issue #2).

Builds a public room and the join events of 1,000 members, each from its own
server (its own ed25519 key), then times the whole receive path per event on
one core:

    bytes --strict parse--> PDU --format check, content hash, reference hash-->
    Event --signature verification--> --auth events check + auth rules
    against the state before the join (1,000 members deep by the end)-->

Usage: .venv/bin/python benchmarks/events.py [--members N] [--room-version V]
Target: >= 5,000 events/s on one core.
"""

from __future__ import annotations

import argparse
import gc
import time

from p2pserver.rooms.auth import check_auth_events, check_auth_rules, select_auth_event_ids
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.creation import create_room_events
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.receipt import Verdict, verify_event
from p2pserver.rooms.room_versions import get_room_version
from p2pserver.rooms.signing import SigningKey
from p2pserver.rooms.validation import parse_pdu_json


def build_room(members: int, version_id: str) -> tuple[list[bytes], dict[str, Event], dict[StateKey, str]]:
    version = get_room_version(version_id)
    owner_key = SigningKey.generate()
    room = create_room_events(
        version,
        creator=f"@owner:{owner_key.server_name}",
        signing_key=owner_key,
        request={"preset": "public_chat"},
        server_name=owner_key.server_name,
        origin_server_ts=1,
    )
    events = {e.event_id: e for e in room.events}
    state = dict(room.state)
    last = room.events[-1]
    wire = []
    for i in range(members):
        key = SigningKey.generate()
        user = f"@user{i}:{key.server_name}"
        auth_ids = select_auth_event_ids(version, "m.room.member", user, user, {"membership": "join"}, state)
        join = build_event(
            version,
            signing_key=key,
            sender=user,
            type="m.room.member",
            state_key=user,
            content={"membership": "join", "displayname": f"User {i}"},
            room_id=room.room_id,
            prev_events=[last],
            auth_events=auth_ids,
            origin_server_ts=1000 + i,
        )
        events[join.event_id] = join
        state[("m.room.member", user)] = join.event_id
        last = join
        wire.append(encode_canonical_json(join.pdu))
    return wire, events, dict(room.state)


def receive_all(wire: list[bytes], events: dict[str, Event], initial_state: dict[StateKey, str], version_id: str) -> float:
    version = get_room_version(version_id)
    # The state before each join, kept as events the way the engine holds it.
    state: dict[StateKey, Event] = {k: events[v] for k, v in initial_state.items()}
    create = state[("m.room.create", "")]
    start = time.perf_counter()
    for data in wire:
        event = parse_pdu_json(data, version)  # strict parse, format, hashes
        outcome = verify_event(event)  # signatures, content hash
        assert outcome.verdict is Verdict.ACCEPT, outcome.reason
        own = [events[i] for i in event.auth_event_ids]
        if version.room_id_is_create_event_hash:
            own.append(create)
        check_auth_rules(event, check_auth_events(event, own, ()))  # auth events
        check_auth_rules(event, state)  # state before the event
        state[(event.type, event.state_key or "")] = event
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--room-version", default=None, help="default: 10, 11 and 12")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    versions = [args.room_version] if args.room_version else ["10", "11", "12"]
    for version_id in versions:
        wire, events, initial = build_room(args.members, version_id)
        gc.collect()
        times = sorted(receive_all(wire, events, initial, version_id) for _ in range(args.runs))
        best, median = times[0], times[len(times) // 2]
        print(
            f"room v{version_id}: {len(wire)} join events of a {args.members}-member room, "
            f"receive path {len(wire) / median:,.0f} events/s median "
            f"({len(wire) / best:,.0f} best, {median / len(wire) * 1e6:.0f} us/event)"
        )


if __name__ == "__main__":
    main()
