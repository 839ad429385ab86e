"""`p2pserver state resolve`: state resolution over JSON Lines.

Each input line is one resolution::

    {"room_version": "12",
     "events": [PDU, ...],
     "rejected": [event_id, ...],                      (optional)
     "state_sets": [[[type, state_key, event_id], ...], ...]}

``events`` are PDUs in federation format, checked with the room version's
format rules; they should include the auth chains of the state sets' events.
``rejected`` names events to treat as rejected on receipt. Other keys are
ignored, so the fixtures in tests/fixtures/state can be fed in as they are.
Each output line is ``{"state": [[type, state_key, event_id], ...]}``
sorted, or ``{"error": "...", "errcode": "..."}``; the exit status is 1 if
any line failed (see :mod:`p2pserver.cli.jsonlines`).
"""

from __future__ import annotations

import argparse
from typing import Any

from p2pserver.cli.jsonlines import run_jsonlines
from p2pserver.rooms.errors import BadJSON, EventFormatError
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.room_versions import get_room_version
from p2pserver.rooms.validation import parse_pdu
from p2pserver.state import MemoryEventSource, resolve_state


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("state", help="room state tools")
    actions = parser.add_subparsers(dest="state_command", metavar="ACTION")
    resolve = actions.add_parser(
        "resolve",
        help="resolve state sets (JSON Lines on stdin, one result per line on stdout)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    resolve.set_defaults(func=run_resolve)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def run_resolve(args: argparse.Namespace) -> int:
    return run_jsonlines(resolve_request)


def resolve_request(request: Any) -> dict[str, Any]:
    """One input line's resolution, as the output object."""
    if not isinstance(request, dict):
        raise BadJSON("each line must be a JSON object")
    version = get_room_version(request.get("room_version"))
    events = _list(request, "events")
    parsed: list[Event] = []
    for index, pdu in enumerate(events):
        try:
            parsed.append(parse_pdu(pdu, version))
        except EventFormatError as exc:
            raise EventFormatError(f"events[{index}]: {exc.message}", errcode=exc.errcode) from None
    rejected = _list(request, "rejected", optional=True)
    if not all(isinstance(event_id, str) for event_id in rejected):
        raise BadJSON("`rejected` must be a list of event IDs")
    state_sets = [
        _state_set(entries, f"state_sets[{index}]")
        for index, entries in enumerate(_list(request, "state_sets"))
    ]
    source = MemoryEventSource(parsed, rejected=rejected)
    state = resolve_state(version, state_sets, source)
    return {"state": sorted([t, k, event_id] for (t, k), event_id in state.items())}


def _list(request: dict[str, Any], key: str, *, optional: bool = False) -> list[Any]:
    if key not in request and optional:
        return []
    value = request.get(key)
    if not isinstance(value, list):
        raise BadJSON(f"`{key}` must be a list")
    return value


def _state_set(entries: object, where: str) -> dict[StateKey, str]:
    if not isinstance(entries, list):
        raise BadJSON(f"{where} must be a list of [type, state_key, event_id]")
    state: dict[StateKey, str] = {}
    for index, entry in enumerate(entries):
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and all(isinstance(part, str) for part in entry)
        ):
            raise BadJSON(f"{where}[{index}] must be [type, state_key, event_id], all strings")
        event_type, state_key, event_id = entry
        if (event_type, state_key) in state:
            raise BadJSON(f"{where} has two entries for ({event_type!r}, {state_key!r})")
        state[(event_type, state_key)] = event_id
    return state
