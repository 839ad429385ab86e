"""`p2pserver peers`: the connected and known peers of the node in a data directory.

It reads the snapshot a running node keeps in ``<data_dir>/peers.json``
(:mod:`p2pserver.node.status`): no connection to the node is needed, and
when the node is not running the last snapshot is shown as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from p2pserver.cli.keys import add_data_dir_option
from p2pserver.identity import peer_id_from_public_key, resolve_data_dir
from p2pserver.node.status import process_alive, read_status, status_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("peers", help="show the node's connected and known peers")
    add_data_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.set_defaults(func=show)


def show(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    status = read_status(data_dir)
    if status is None:
        print(
            f"p2pserver peers: no snapshot at {status_path(data_dir)}; start the node with "
            "`p2pserver run`",
            file=sys.stderr,
        )
        return 1
    running = process_alive(status.get("pid"))
    status["running"] = running
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    age = time.time() - float(status.get("updated_at", 0))
    state = "running" if running else f"NOT RUNNING (snapshot {age:.0f}s old)"
    print(f"node      {status.get('server_name')} ({state})")
    print(f"peer_id   {status.get('peer_id')}")
    for address in status.get("listen_addresses", []):
        print(f"listen    {address}")
    connected = set(status.get("connected", []))
    known = sorted(set(status.get("known", [])) | connected)
    queued = status.get("queued", {})
    backing_off = status.get("backing_off", {})
    print(f"peers     {len(connected)} connected, {len(known)} known")
    for name in known:
        flags = ["connected" if name in connected else "known"]
        if queued.get(name):
            flags.append(f"{queued[name]} queued")
        if name in backing_off:
            flags.append(f"retry in {backing_off[name]}s")
        try:
            peer_id = peer_id_from_public_key(bytes.fromhex(name))
        except ValueError:
            peer_id = "?"
        print(f"  {name}  {peer_id}  {', '.join(flags)}")
    around = status.get("around", [])
    print(f"around    {len(around)} peers found (mDNS, DHT, bootstrap, connections)")
    for peer in around:
        seen = max(0.0, time.time() - peer.get("last_seen_ms", 0) / 1000)
        names = ", ".join(peer.get("display_names", [])) or "-"
        how = "+".join(peer.get("found_by", []))
        print(f"  {peer.get('server_name')}  via {how}, seen {seen:.0f}s ago, users: {names}")
    return 0
