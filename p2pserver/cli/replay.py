"""`p2pserver replay`: feed one room's PDUs to a fresh engine, as a peer would.

Reads PDUs as JSON Lines on stdin and hands each, in order, to a new
in-memory :class:`~p2pserver.engine.RoomEngine` as if the sender's server
had sent it (all the checks on receipt run; nothing can be fetched, so an
event whose prev or auth events are missing is dropped). Prints, per line,
``{"event_id", "accepted", "soft_failed", "rejected_reason"}`` and at the
end ``{"state": [[type, state_key, event_id], ...]}``, the room's resolved
current state, sorted.

``accepted`` means the event is part of the room's DAG (checks 1-5
passed); ``soft_failed`` that check 6 failed (it is accepted but not
current); ``rejected_reason`` says why an event was dropped or rejected. A
line that is not JSON gets the same shape, with ``event_id`` null.

``--keys FILE`` adds verify keys (``{"server": {"ed25519:id": "<base64>"}}``)
for servers whose names are not hex public keys, e.g. spec test vectors.
Exit status: 0, or 2 if the keys file cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any

import trio

from p2pserver.engine import PduResult, RoomEngine
from p2pserver.rooms.canonical_json import encode_json_loose, parse_json
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import sender_server
from p2pserver.rooms.receipt import hex_server_keys, parse_verify_keys, with_known_keys
from p2pserver.rooms.signing import KeyLookup, SigningKey
from p2pserver.storage import Store


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay", help="feed one room's PDUs (JSON Lines) to a fresh engine; print the outcome"
    )
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help='JSON {"server": {"ed25519:id": "<base64 key>"}}; hex server names need none',
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    keys: KeyLookup = hex_server_keys
    if args.keys:
        try:
            keys = with_known_keys(parse_verify_keys(parse_json(Path(args.keys).read_bytes())))
        except (OSError, MatrixError) as exc:
            message = exc.message if isinstance(exc, MatrixError) else str(exc)
            print(f"p2pserver replay: cannot read keys {args.keys}: {message}", file=sys.stderr)
            return 2
    return trio.run(replay, sys.stdin, sys.stdout, keys)


async def replay(stdin: IO[str], stdout: IO[str], keys: KeyLookup = hex_server_keys) -> int:
    store = Store.open()
    engine = RoomEngine(store, SigningKey.generate(), keys=keys)
    room_id: str | None = None
    try:
        for raw in stdin:
            line = raw.strip()
            if not line:
                continue
            try:
                pdu = parse_json(line)
            except MatrixError as exc:
                _write(stdout, PduResult(None, None, f"format: {exc.message}").as_json())
                continue
            origin = ""
            if isinstance(pdu, dict) and isinstance(pdu.get("sender"), str):
                origin = sender_server(pdu["sender"])
            result = await engine.receive_pdu(origin, pdu)
            _write(stdout, result.as_json())
            if room_id is None and result.event_id is not None:
                meta = store.event_meta(result.event_id)
                room_id = meta.room_id if meta is not None else None
        state = engine.room_state(room_id) if room_id is not None else {}
        _write(stdout, {"state": sorted([t, k, e] for (t, k), e in state.items())})
    finally:
        store.close()
    return 0


def _write(stdout: IO[str], value: Any) -> None:
    stdout.write(encode_json_loose(value).decode("utf-8") + "\n")
    stdout.flush()
