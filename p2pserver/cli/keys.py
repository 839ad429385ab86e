"""`p2pserver keys`: create (on first use) and show the node identity."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from p2pserver.identity import (
    key_path,
    load_or_create_signing_key,
    peer_id_from_public_key,
    read_key_file,
    resolve_data_dir,
    write_key_file,
)


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory (default: $P2PSERVER_DATA_DIR or $XDG_DATA_HOME/p2pserver)",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="create (on first use) and show the node identity")
    add_data_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print as JSON")
    parser.set_defaults(func=show)
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION")
    imp = actions.add_parser("import", help="install an existing Matrix signing-key file")
    add_data_dir_option(imp)
    imp.add_argument("file", help="key file: 'ed25519 <key_id> <base64 seed>'")
    imp.add_argument("--force", action="store_true", help="replace an existing key")
    imp.set_defaults(func=import_key)
    exp = actions.add_parser("export", help="copy the node key to a file (mode 0600)")
    add_data_dir_option(exp)
    exp.add_argument("file")
    exp.set_defaults(func=export_key)


def show(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    key, created = load_or_create_signing_key(data_dir)
    info = {
        "server_name": key.server_name,
        "key_id": key.key_id,
        "public_key": key.public_key_base64,
        "peer_id": peer_id_from_public_key(bytes(key.verify_key)),
        "key_file": str(key_path(data_dir)),
        "created": created,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        if created:
            print(f"Created a new node identity in {info['key_file']}")
        for name in ("server_name", "key_id", "public_key", "peer_id", "key_file"):
            print(f"{name:12} {info[name]}")
    return 0


def import_key(args: argparse.Namespace) -> int:
    try:
        key = read_key_file(Path(args.file))
    except (OSError, ValueError) as exc:
        print(f"p2pserver keys import: {exc}", file=sys.stderr)
        return 1
    data_dir = resolve_data_dir(args.data_dir)
    try:
        write_key_file(key_path(data_dir), key, overwrite=args.force)
    except FileExistsError:
        print(
            f"p2pserver keys import: {key_path(data_dir)} exists; use --force to replace it",
            file=sys.stderr,
        )
        return 1
    print(f"Imported key for server {key.server_name}")
    return 0


def export_key(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    if not key_path(data_dir).exists():
        print(f"p2pserver keys export: no key in {data_dir}", file=sys.stderr)
        return 1
    key = read_key_file(key_path(data_dir))
    try:
        write_key_file(Path(args.file), key)
    except FileExistsError:
        print(f"p2pserver keys export: {args.file} exists", file=sys.stderr)
        return 1
    print(f"Exported key for server {key.server_name} to {args.file}")
    return 0
