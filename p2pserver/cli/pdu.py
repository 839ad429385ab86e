"""`p2pserver pdu`: the event core as JSON Lines tools.

Every subcommand reads one JSON value per line on stdin and writes one JSON
object per line on stdout (:func:`p2pserver.cli.jsonlines.run_jsonlines`):
a line that cannot be processed yields ``{"error": ..., "errcode": ...}``
and makes the exit status 1. Input is parsed with the strict canonical-JSON
rules, except by ``canonical`` without ``--strict``.

- ``canonical [--strict]``: any JSON value -> ``{"canonical": text}``.
- ``redact``: PDU -> the redacted PDU.
- ``id``: PDU -> ``{"event_id", "content_hash", "reference_hash", "room_id"}``
  (hashes in unpadded standard Base64; a v12 create event's room ID derived;
  an `event_id` key is ignored, as event format v3+ has none).
- ``sign``: PDU -> the same PDU with `hashes` and our signature added.
- ``verify``: PDU -> ``{"outcome": "accept"|"redact"|"reject", "event_id",
  "error"}``: the receipt checks (format, signatures, content hash). A PDU
  that fails them is a result, not a failed line; "reject" means dropped.
- ``check-auth``: ``{"room_version", "event", "auth_events", "rejected"}``
  -> ``{"allowed": true}`` or ``{"allowed": false, "error": rule}``.

``redact``, ``id`` and ``sign`` are construction tools and take any JSON
object (the spec's own examples are not valid v10+ PDUs); ``verify`` and
``check-auth`` apply the full format checks. ``--room-version`` defaults to
the default room version; an unknown one fails each line with
M_UNSUPPORTED_ROOM_VERSION.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from p2pserver.cli.jsonlines import LineFailed, run_jsonlines
from p2pserver.rooms.base64 import encode_base64
from p2pserver.rooms.canonical_json import encode_canonical_json, parse_json
from p2pserver.rooms.errors import BadJSON, MatrixError
from p2pserver.rooms.events import Event
from p2pserver.rooms.hashing import (
    add_content_hash,
    compute_content_hash,
    reference_hash_input,
    room_id_from_create_event_id,
)
from p2pserver.rooms.receipt import (
    KeyLookup,
    hex_server_keys,
    parse_verify_keys,
    verify_event,
    with_known_keys,
)
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import DEFAULT_ROOM_VERSION, RoomVersion, get_room_version
from p2pserver.rooms.signing import SigningKey, sign_event
from p2pserver.rooms.validation import parse_pdu


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "pdu", help="canonical JSON, redaction, IDs, signing, verification and auth of PDUs"
    )
    actions = parser.add_subparsers(dest="pdu_command", metavar="ACTION", required=True)

    canonical = actions.add_parser("canonical", help="JSON value -> canonical JSON text")
    canonical.add_argument(
        "--strict", action="store_true", help="refuse floats, big integers and duplicate keys"
    )
    canonical.set_defaults(func=_run(_canonical, strict_attr="strict"))

    redact_cmd = actions.add_parser("redact", help="PDU -> redacted PDU")
    _add_room_version(redact_cmd)
    redact_cmd.set_defaults(func=_run(_redact))

    id_cmd = actions.add_parser("id", help="PDU -> event ID, content and reference hashes")
    _add_room_version(id_cmd)
    id_cmd.set_defaults(func=_run(_ids))

    sign = actions.add_parser("sign", help="PDU -> PDU with hashes and signature")
    _add_room_version(sign)
    sign.add_argument(
        "--signing-key",
        metavar="FILE",
        required=True,
        help="key file: 'ed25519 <key_id> <base64 seed>'",
    )
    sign.add_argument(
        "--server-name", metavar="NAME", help="sign as NAME (default: the key's hex server name)"
    )
    sign.set_defaults(func=_sign_main)

    verify = actions.add_parser("verify", help="PDU -> accept, redact or reject (on receipt)")
    _add_room_version(verify)
    verify.add_argument(
        "--keys",
        metavar="FILE",
        help='JSON {"server": {"ed25519:id": "<base64 key>"}}; hex server names need none',
    )
    verify.set_defaults(func=_verify_main)

    check_auth = actions.add_parser("check-auth", help="event + auth events -> allowed or not")
    check_auth.set_defaults(func=_run(_check_auth))


def _add_room_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--room-version",
        metavar="V",
        default=DEFAULT_ROOM_VERSION.identifier,
        help=f"room version (default {DEFAULT_ROOM_VERSION.identifier})",
    )


def _run(handler: Any, strict_attr: str | None = None) -> Any:
    """An argparse ``func`` running ``handler(args, value)`` over stdin."""

    def main(args: argparse.Namespace) -> int:
        strict = bool(getattr(args, strict_attr)) if strict_attr else True
        return run_jsonlines(lambda value: handler(args, value), strict=strict)

    return main


def _fail_usage(args: argparse.Namespace, message: str) -> int:
    print(f"p2pserver pdu {args.pdu_command}: {message}", file=sys.stderr)
    return 1


def _object(value: Any, what: str = "a PDU") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadJSON(f"expected {what} (a JSON object)")
    return value


def _version(args: argparse.Namespace) -> RoomVersion:
    return get_room_version(args.room_version)


# -- handlers --------------------------------------------------------------------


def _canonical(args: argparse.Namespace, value: Any) -> dict[str, Any]:
    return {"canonical": encode_canonical_json(value).decode("utf-8")}


def _redact(args: argparse.Namespace, value: Any) -> dict[str, Any]:
    room_version = _version(args)
    redacted = redact(_object(value), room_version)
    encode_canonical_json(redacted)  # the output must be canonical JSON too
    return redacted


def _ids(args: argparse.Namespace, value: Any) -> dict[str, Any]:
    room_version = _version(args)
    pdu = _object(value)
    pdu.pop("event_id", None)  # not part of event format v3+ (as Event drops it)
    reference_hash = hashlib.sha256(reference_hash_input(pdu, room_version)).digest()
    event_id = "$" + encode_base64(reference_hash, urlsafe=True)
    room_id = pdu.get("room_id")
    is_create = pdu.get("type") == "m.room.create" and pdu.get("state_key") == ""
    if room_id is None and room_version.room_id_is_create_event_hash and is_create:
        room_id = room_id_from_create_event_id(event_id)
    return {
        "event_id": event_id,
        "content_hash": encode_base64(compute_content_hash(pdu)),
        "reference_hash": encode_base64(reference_hash),
        "room_id": room_id,
    }


def _sign_main(args: argparse.Namespace) -> int:
    try:
        key = SigningKey.parse(Path(args.signing_key).read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return _fail_usage(args, f"cannot read signing key {args.signing_key}: {exc}")
    server_name = args.server_name or key.server_name

    def sign(value: Any) -> dict[str, Any]:
        room_version = _version(args)
        pdu = _object(value)
        add_content_hash(pdu)
        return sign_event(pdu, server_name, key, room_version)

    return run_jsonlines(sign)


def _verify_main(args: argparse.Namespace) -> int:
    keys: KeyLookup = hex_server_keys
    if args.keys:
        try:
            known = parse_verify_keys(parse_json(Path(args.keys).read_bytes()))
        except (OSError, MatrixError) as exc:
            message = exc.message if isinstance(exc, MatrixError) else str(exc)
            return _fail_usage(args, f"cannot read keys {args.keys}: {message}")
        keys = with_known_keys(known)

    def verify(value: Any) -> dict[str, Any]:
        room_version = _version(args)
        try:
            event = parse_pdu(value, room_version)
        except MatrixError as exc:  # receipt step 1: an invalid event is dropped
            return {
                "outcome": "reject",
                "event_id": None,
                "error": exc.message,
                "errcode": exc.errcode,
            }
        outcome = verify_event(event, keys)
        return {
            "outcome": outcome.verdict.value,
            "event_id": event.event_id,
            "error": outcome.reason,
        }

    return run_jsonlines(verify)


def _check_auth(args: argparse.Namespace, value: Any) -> dict[str, Any]:
    # Imported here: the auth rules are the heaviest import and only this
    # subcommand needs them.
    from p2pserver.rooms.auth import MissingAuthEvents, check_auth_events, check_auth_rules
    from p2pserver.rooms.errors import AuthError

    request = _object(value, "an object with room_version, event, auth_events, rejected")
    room_version = get_room_version(request.get("room_version"))
    auth_pdus = request.get("auth_events", [])
    rejected = request.get("rejected", [])
    if not isinstance(auth_pdus, list):
        raise BadJSON("`auth_events` must be an array of PDUs")
    if not isinstance(rejected, list) or not all(isinstance(i, str) for i in rejected):
        raise BadJSON("`rejected` must be an array of event IDs")
    if "event" not in request:
        raise BadJSON("missing `event`")
    event = _parse(request["event"], room_version, "event")
    auth_events = [_parse(p, room_version, f"auth_events[{i}]") for i, p in enumerate(auth_pdus)]
    try:
        by_key = check_auth_events(event, auth_events, frozenset(rejected))
        check_auth_rules(event, by_key)
    except AuthError as exc:
        return {"allowed": False, "error": exc.message}
    except MissingAuthEvents as exc:
        raise LineFailed({"error": str(exc), "missing": list(exc.event_ids)}) from None
    return {"allowed": True}


def _parse(pdu: Any, room_version: RoomVersion, where: str) -> Event:
    try:
        return parse_pdu(pdu, room_version)
    except MatrixError as exc:
        raise type(exc)(f"{where}: {exc.message}") from None
