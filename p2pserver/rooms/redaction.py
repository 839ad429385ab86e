"""The redaction algorithm for room versions 10, 11 and 12.

Redaction keeps the keys that the authorization rules and the DAG need and
strips the rest. It is used three ways: when a redaction event applies, when
an event's content hash does not match (the event is then used redacted),
and as the input to the reference hash and to event signatures.

Room version 10 follows the v9 rules. Room version 11 (MSC2176, MSC3821,
MSC3989) drops the `origin`, `membership` and `prev_state` top-level keys,
keeps all of m.room.create's content, adds `invite` to power levels,
`signed` of a member's third_party_invite, and `redacts` of a redaction.
Room version 12 redacts exactly like 11.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.room_versions import RoomVersion

_TOP_LEVEL_V10 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "prev_state", "auth_events", "origin",
        "origin_server_ts", "membership",
    }
)
_TOP_LEVEL_V11 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "auth_events", "origin_server_ts",
    }
)

_POWER_LEVEL_KEYS_V10 = (
    "ban", "events", "events_default", "kick", "redact", "state_default", "users",
    "users_default",
)


def redact(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """Return a redacted copy of ``pdu`` (the input is not modified).

    ``unsigned`` is dropped like any other unlisted key; callers that keep
    server-local unsigned data re-attach it themselves.
    """
    v11 = room_version.updated_redaction_rules
    allowed = _TOP_LEVEL_V11 if v11 else _TOP_LEVEL_V10
    redacted: dict[str, Any] = {k: v for k, v in pdu.items() if k in allowed}

    content = pdu.get("content")
    if not isinstance(content, Mapping):
        redacted["content"] = {}
        return redacted
    event_type = pdu.get("type")
    kept: dict[str, Any] = {}

    def keep(*keys: str) -> None:
        for key in keys:
            if key in content:
                kept[key] = content[key]

    if event_type == "m.room.member":
        keep("membership", "join_authorised_via_users_server")
        if v11:
            # The object stays, cut down to `signed` (possibly to {}), as in
            # Synapse and ruma: the reference hash must agree across servers.
            invite = content.get("third_party_invite")
            if isinstance(invite, Mapping):
                kept["third_party_invite"] = (
                    {"signed": invite["signed"]} if "signed" in invite else {}
                )
    elif event_type == "m.room.create":
        if v11:
            kept.update(content)
        else:
            keep("creator")
    elif event_type == "m.room.join_rules":
        keep("join_rule", "allow")
    elif event_type == "m.room.power_levels":
        keep(*_POWER_LEVEL_KEYS_V10)
        if v11:
            keep("invite")
    elif event_type == "m.room.history_visibility":
        keep("history_visibility")
    elif event_type == "m.room.redaction" and v11:
        keep("redacts")

    redacted["content"] = kept
    return redacted
