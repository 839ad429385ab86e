"""The `p2pserver` command line.

Each subcommand group lives in its own module and registers itself with
:func:`add_parser`; this module only wires them together. Tools that read
JSON Lines share :func:`p2pserver.cli.jsonlines.run_jsonlines`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2pserver import __version__


def build_parser() -> argparse.ArgumentParser:
    from p2pserver.cli import keys, pdu, peers, replay, run, sim, state

    parser = argparse.ArgumentParser(
        prog="p2pserver",
        description="A peer-to-peer Matrix homeserver that runs inside every device.",
    )
    parser.add_argument("--version", action="version", version=f"p2pserver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (keys, pdu, state, replay, run, peers, sim):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
