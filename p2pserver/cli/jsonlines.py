"""JSON Lines tools: one JSON value in per line, one JSON object out per line.

A line that fails produces ``{"error": "..."}`` on its own line (never a
traceback), and the tool's exit status is 1 if any line failed. Input is
parsed with strict canonical-JSON rules unless the tool says otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

from p2pserver.rooms.canonical_json import encode_json_loose, parse_json
from p2pserver.rooms.errors import MatrixError

Handler = Callable[[Any], dict[str, Any]]


class LineFailed(Exception):
    """Raised by a handler to report a failure with its own output object."""

    def __init__(self, output: dict[str, Any]) -> None:
        super().__init__(output.get("error", "failed"))
        self.output = output


def run_jsonlines(
    handler: Handler,
    *,
    strict: bool = True,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    failed = False
    for raw in stdin:
        line = raw.strip()
        if not line:
            continue
        try:
            output = handler(parse_json(line, strict=strict))
        except LineFailed as exc:
            output, failed = exc.output, True
        except MatrixError as exc:
            output, failed = {"error": exc.message, "errcode": exc.errcode}, True
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            output, failed = {"error": f"{type(exc).__name__}: {exc}"}, True
        stdout.write(encode_json_loose(output).decode("utf-8") + "\n")
        stdout.flush()
    return 1 if failed else 0
