"""`p2pserver state`: placeholder, filled in by its issue."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pass
