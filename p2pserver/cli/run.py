"""`p2pserver run`: start the node (engine, storage, libp2p, federation) on embedded defaults.

Every option is optional. Settings come from the defaults, then
``<data_dir>/config.toml`` (or ``--config FILE``), then these flags (see
:mod:`p2pserver.node.config`). Logs go to stderr: what the node does at
INFO, libp2p's own chatter only at ``--log-level debug``. The node runs
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

from p2pserver.cli.keys import add_data_dir_option
from p2pserver.identity import resolve_data_dir
from p2pserver.node.config import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run the node",
        description="Run the node: the Matrix client API, p2p networking, federation and storage, on embedded defaults.",
    )
    add_data_dir_option(parser)
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument("--p2p-port", metavar="PORT", type=int, help="TCP port for libp2p")
    parser.add_argument(
        "--listen",
        metavar="MULTIADDR",
        action="append",
        default=[],
        help="listen on /ip4/<ip>/tcp/<port> (repeatable; default: every interface)",
    )
    parser.add_argument(
        "--bootstrap",
        metavar="MULTIADDR",
        action="append",
        default=[],
        help="a peer to connect to, /ip4/<ip>/tcp/<port>/p2p/<PeerID> (repeatable)",
    )
    parser.add_argument(
        "--client-listen",
        metavar="HOST:PORT",
        help="where the Matrix client API listens (default: 127.0.0.1:8008)",
    )
    parser.add_argument(
        "--allow-remote-clients",
        action="store_true",
        default=None,
        help="allow --client-listen on a non-loopback address (logs a warning)",
    )
    parser.add_argument(
        "--no-mdns",
        dest="mdns",
        action="store_false",
        default=None,
        help="do not advertise or look for peers on the LAN (mDNS)",
    )
    parser.add_argument(
        "--control-socket",
        metavar="PATH",
        help="serve the JSON Lines control interface (a test/dev tool) on this Unix socket",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    parser.set_defaults(func=run)


# glibc's malloc.h
M_ARENA_MAX = -8


def limit_malloc_arenas() -> None:
    """Let every thread allocate from glibc's main arena (elsewhere a no-op).

    glibc gives each thread that allocates its own arena (up to 8 per core),
    and the node's threads (libp2p's import in a worker thread, mDNS) would
    each keep one, partly free. Python allocates under the GIL and those
    threads are few and mostly idle, so sharing one arena costs no
    measurable contention: ~0.5 MiB of idle RSS. Must run before they start.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(M_ARENA_MAX, 1)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    limit_malloc_arenas()
    from p2pserver.node.node import node_from_options

    try:
        node = node_from_options(
            resolve_data_dir(args.data_dir),
            config_file=Path(args.config) if args.config else None,
            p2p_port=args.p2p_port,
            bootstrap=args.bootstrap,
            listen=args.listen,
            client_listen=args.client_listen,
            allow_remote_clients=args.allow_remote_clients,
            mdns=args.mdns,
            control_socket=Path(args.control_socket) if args.control_socket else None,
        )
    except ConfigError as exc:
        print(f"p2pserver run: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(_run_until_signalled, node)
    except (OSError, ConfigError) as exc:
        print(f"p2pserver run: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run_until_signalled(node: object) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(node.run)  # type: ignore[attr-defined]
            async for signum in signals:
                logging.getLogger("p2pserver.node").info(
                    "stopping on %s", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break
