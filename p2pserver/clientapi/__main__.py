"""Serve only a node's client API, without its network: ``python -m p2pserver.clientapi``.

For trying a Matrix client against one node and for measuring start-up
(``benchmarks/client.py``): it opens the node's key and database in the
data directory, like ``p2pserver run``, but starts no federation, so rooms
stay on this node. Options: ``--data-dir DIR``, ``--client-listen
HOST:PORT`` (default 127.0.0.1:8008), ``--allow-remote-clients``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pserver.clientapi", description=__doc__)
    parser.add_argument("--data-dir", help="node data directory")
    parser.add_argument("--client-listen", metavar="HOST:PORT")
    parser.add_argument("--allow-remote-clients", action="store_true", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from p2pserver.identity import load_or_create_signing_key, resolve_data_dir
    from p2pserver.node.config import ConfigError, load_config

    data_dir = resolve_data_dir(args.data_dir)
    try:
        config = load_config(
            Path(data_dir),
            client_listen=args.client_listen,
            allow_remote_clients=args.allow_remote_clients,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key, _ = load_or_create_signing_key(Path(data_dir))

    async def serve() -> None:
        from p2pserver.clientapi.server import serve_client_api
        from p2pserver.engine import RoomEngine
        from p2pserver.storage import Store

        engine = RoomEngine(Store.open(config.database_path), key)
        await serve_client_api(engine, None, config)

    try:
        trio.run(serve)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
