"""A minimal node for the LAN test: libp2p, federation and discovery, no configuration.

``python -m tests.discovery.lan_node --listen-ip IP (--create-room | --join-public)``

It stands in for ``p2pserver run`` until the node starts discovery itself.
One user per node (``@u:<server name>``). With ``--create-room`` it creates
a public room, lists it in the DHT's room directory and says "hello"; with
``--join-public`` it waits until the directory (read through peers found
by mDNS) lists a room, joins it through the servers listed there and in
the room's record, and says hello too, then says "tick <n> from <name>" every ``--tick`` seconds.
Either way its room entry follows membership (``Discovery.follow_rooms``).
JSON lines on stdout: ``listening``, ``room`` (room ID, and ``via`` for a
join), ``members`` (the joined servers it knows of once in the room), and
``message`` for every m.room.message in the room's DAG (body, origin).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import trio

from p2pserver.discovery import Discovery, DiscoveryConfig
from p2pserver.federation import FederationConfig, build_federation
from p2pserver.rooms.events import sender_server
from p2pserver.rooms.signing import SigningKey
from p2pserver.storage.store import IN_DAG, Store

SUMMARY = {"num_joined_members": 1, "world_readable": False, "guest_can_join": False}


def emit(**fields: Any) -> None:
    print(json.dumps({**fields, "t": time.time()}, sort_keys=True), flush=True)


async def main(args: argparse.Namespace) -> None:
    from p2pserver.transport.libp2p_network import Libp2pNetwork

    key = SigningKey.generate()
    user = f"@u:{key.server_name}"
    store = Store.open(None)
    network = Libp2pNetwork(key, listen_ips=[args.listen_ip], port=0)
    federation = build_federation(
        store, key, network, FederationConfig(sync_interval=5.0, announce_delay=0.2)
    )
    discovery = Discovery(network, key, DiscoveryConfig(mdns_recheck_interval=1.0))

    async with network.running(), trio.open_nursery() as nursery:
        await nursery.start(federation.run)
        await nursery.start(discovery.run)
        discovery.follow_rooms(federation.engine)
        emit(event="listening", server_name=key.server_name)
        if args.create_room:
            room = await federation.engine.create_room(user, {"preset": "public_chat"})
            await discovery.publish_public_room(room, {**SUMMARY, "name": "field"})
            emit(event="room", room=room)
        else:
            room, via = await find_public_room(discovery)
            await federation.join(room, user, via=via)
            emit(event="room", room=room, via=via)
        emit(event="members", servers=sorted(store.joined_servers(room)))

        async def say(body: str) -> None:
            content = {"msgtype": "m.text", "body": body}
            await federation.engine.send_event(room, user, "m.room.message", content)

        await say(f"hello from {key.server_name}")
        nursery.start_soon(report_messages, store, room)
        with trio.move_on_after(args.seconds):
            for n in range(1, 1000):
                await trio.sleep(args.tick)
                await say(f"tick {n} from {key.server_name}")
        nursery.cancel_scope.cancel()
    store.close()


async def report_messages(store: Store, room: str) -> None:
    """Emit every m.room.message in the room's DAG once (history included)."""
    seen: set[str] = set()
    while True:
        frontier, walked = store.forward_extremities(room), set()
        while frontier:
            metas = store.event_metas(frontier)
            fresh = [m for m in metas.values() if m.status in IN_DAG and m.event_id not in walked]
            walked.update(m.event_id for m in fresh)
            events = store.load_events(m.event_id for m in fresh if m.event_id not in seen)
            for event in events.values():
                seen.add(event.event_id)
                if event.type == "m.room.message":
                    body, origin = event.content.get("body"), sender_server(event.sender)
                    emit(event="message", room=room, body=body, origin=origin)
            frontier = [p for m in fresh for p in store.prev_event_ids(m.nid)]
        await trio.sleep(0.5)


async def find_public_room(discovery: Discovery) -> tuple[str, list[str]]:
    """The first room the DHT's directory lists, and servers to join it
    through: those listing it, then those its room record names."""
    while True:
        rooms = await discovery.public_rooms()
        if rooms:
            room = rooms[0].room_id
            members = await discovery.find_room_servers(room)
            return room, list(dict.fromkeys([*rooms[0].servers, *members]))
        await trio.sleep(0.5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-ip", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tick", type=float, default=1.0)
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--create-room", action="store_true")
    role.add_argument("--join-public", action="store_true")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(main, parser.parse_args())
