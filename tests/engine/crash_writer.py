"""Child process for test_crash.py: write events to a node's database forever.

Usage: crash_writer.py DATA_DIR. Opens (or creates) the node in DATA_DIR,
creates a room on first run, then loops: messages, topic changes and
invites of remote users (which fill the outbound queue). After each call
returns, that is after its commit, it prints the event ID: an
acknowledgement the parent holds it to.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from p2pserver.engine import RoomEngine
from p2pserver.identity import load_or_create_signing_key
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage import Store


async def write_forever(data_dir: Path) -> None:
    key, _ = load_or_create_signing_key(data_dir)
    store = Store.open_data_dir(data_dir)
    engine = RoomEngine(store, key)
    alice = f"@alice:{engine.server_name}"
    rooms = store.room_ids()
    room_id = rooms[0] if rooms else await engine.create_room(alice, {"preset": "public_chat"})
    print(f"room {room_id}", flush=True)
    n = 0
    while True:
        n += 1
        if n % 10 == 0:
            event_id = await engine.invite(
                room_id, alice, f"@x:{SigningKey.generate().server_name}"
            )
        elif n % 7 == 0:
            event_id = await engine.send_state(
                room_id, alice, "m.room.topic", "", {"topic": str(n)}
            )
        else:
            event_id = await engine.send_message(room_id, alice, {"body": f"message {n}"})
        print(event_id, flush=True)


if __name__ == "__main__":
    trio.run(write_forever, Path(sys.argv[1]))
