"""Push rules (spec: Client-Server API, "Push Notifications"): defaults and evaluation.

:func:`default_ruleset` is the spec's "Predefined Rules" for one user, in
the spec's order within each kind. A user's ruleset is stored as the
``m.push_rules`` global account data (as /sync delivers it); until the user
changes a rule it is the default.

:func:`evaluate` follows "Push Rules" step by step: the kinds are tried in
priority order ``override``, ``content``, ``room``, ``sender``,
``underride``; within a kind, rules in order; the first enabled rule whose
conditions all hold decides the actions. Conditions:
``event_match`` (glob on a string property, case-insensitive; on
``content.body`` at word boundaries), ``event_property_is``,
``event_property_contains``, ``contains_display_name``,
``room_member_count`` and ``sender_notification_permission``. Property
paths are dotted, with ``\\.`` for a literal dot.

/sync's ``unread_notifications`` counts events whose actions include
``notify`` (``highlight_count``: those that also set the ``highlight``
tweak), as the spec's "Receiving notifications" describes.

Pure code: the caller supplies the room facts (:class:`RoomFacts`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["KINDS", "RoomFacts", "count_unread", "default_ruleset", "evaluate"]

KINDS = ("override", "content", "room", "sender", "underride")

_SOUND = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> dict[str, str]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(
    rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], *, enabled: bool = True
) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "default": True,
        "enabled": enabled,
        "conditions": conditions,
        "actions": actions,
    }


def default_ruleset(user_id: str) -> dict[str, Any]:
    """The spec's predefined rules for ``user_id`` (a fresh copy)."""
    localpart = user_id[1:].partition(":")[0]
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [
                {
                    "kind": "event_property_contains",
                    "key": "content.m\\.mentions.user_ids",
                    "value": user_id,
                }
            ],
            ["notify", _SOUND, _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.contains_display_name",
            [{"kind": "contains_display_name"}],
            ["notify", _SOUND, _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [
                {"kind": "sender_notification_permission", "key": "room"},
                _match("content.body", "@room"),
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", _HIGHLIGHT],
        ),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(
            ".m.rule.server_acl",
            [_match("type", "m.room.server_acl"), _match("state_key", "")],
            [],
        ),
        _rule(
            ".m.rule.suppress_edits",
            [
                {
                    "kind": "event_property_is",
                    "key": "content.m\\.relates_to.rel_type",
                    "value": "m.replace",
                }
            ],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        }
    ]
    underride = [
        _rule(
            ".m.rule.call",
            [_match("type", "m.call.invite")],
            ["notify", {"set_tweak": "sound", "value": "ring"}],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", _SOUND],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return copy.deepcopy(
        {
            "global": {
                "override": override,
                "content": content,
                "room": [],
                "sender": [],
                "underride": underride,
            }
        }
    )


@dataclass(frozen=True)
class RoomFacts:
    """What the conditions need to know about the room and the user."""

    user_id: str
    display_name: str | None
    member_count: int
    # The sender's power level and the room's "notifications" levels.
    sender_power: int
    notification_levels: Mapping[str, int]


@lru_cache(maxsize=512)
def _glob(pattern: str, words: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if words:
        body = rf"(?:^|\W){body}(?:\W|$)"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def _property(event: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    value: Any = event
    for part in re.split(r"(?<!\\)\.", key):
        part = part.replace("\\.", ".").replace("\\\\", "\\")
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _member_count_holds(spec: Any, count: int) -> bool:
    if not isinstance(spec, str):
        return False
    match = re.fullmatch(r"(==|<=|>=|<|>)?([0-9]+)", spec)
    if match is None:
        return False
    op, number = match.group(1) or "==", int(match.group(2))
    return {
        "==": count == number,
        "<": count < number,
        ">": count > number,
        "<=": count <= number,
        ">=": count >= number,
    }[op]


def _condition_holds(condition: Any, event: Mapping[str, Any], facts: RoomFacts) -> bool:
    if not isinstance(condition, Mapping):
        return False
    kind = condition.get("kind")
    if kind == "event_match":
        key = condition.get("key")
        pattern = condition.get("pattern")
        found, value = _property(event, str(key))
        if not found or not isinstance(value, str) or not isinstance(pattern, str):
            return False
        # content.body matches at word boundaries; other keys whole-value.
        words = key == "content.body"
        regex = _glob(pattern, words)
        return (regex.search(value) if words else regex.fullmatch(value)) is not None
    if kind == "event_property_is":
        found, value = _property(event, str(condition.get("key", "")))
        return found and _same_json(value, condition.get("value"))
    if kind == "event_property_contains":
        found, value = _property(event, str(condition.get("key", "")))
        return (
            found
            and isinstance(value, list)
            and any(_same_json(v, condition.get("value")) for v in value)
        )
    if kind == "contains_display_name":
        found, body = _property(event, "content.body")
        name = facts.display_name
        return bool(found and isinstance(body, str) and name) and (
            _glob(name or "", True).search(body) is not None
        )
    if kind == "room_member_count":
        return _member_count_holds(condition.get("is"), facts.member_count)
    if kind == "sender_notification_permission":
        key = condition.get("key")
        if not isinstance(key, str):
            return False
        return facts.sender_power >= facts.notification_levels.get(key, 50)
    return False  # unknown kinds never match (spec)


def _same_json(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1.
    return type(a) is type(b) and a == b


def evaluate(
    ruleset: Mapping[str, Any], event: Mapping[str, Any], room_id: str, facts: RoomFacts
) -> list[Any]:
    """The actions of the first matching rule; [] if none matches."""
    rules = ruleset.get("global", {}) if isinstance(ruleset, Mapping) else {}
    for kind in KINDS:
        for rule in rules.get(kind, ()) if isinstance(rules, Mapping) else ():
            if not isinstance(rule, Mapping) or not rule.get("enabled", True):
                continue
            if kind == "content":
                pattern = rule.get("pattern")
                found, body = _property(event, "content.body")
                holds = (
                    isinstance(pattern, str)
                    and found
                    and isinstance(body, str)
                    and _glob(pattern, True).search(body) is not None
                )
            elif kind == "room":
                holds = rule.get("rule_id") == room_id
            elif kind == "sender":
                holds = rule.get("rule_id") == event.get("sender")
            else:
                conditions = rule.get("conditions", [])
                holds = isinstance(conditions, list) and all(
                    _condition_holds(c, event, facts) for c in conditions
                )
            if holds:
                actions = rule.get("actions", [])
                return list(actions) if isinstance(actions, list) else []
    return []


def _notifies(actions: Sequence[Any]) -> tuple[bool, bool]:
    notify = any(a in ("notify", "coalesce") for a in actions)
    highlight = any(
        isinstance(a, Mapping)
        and a.get("set_tweak") == "highlight"
        and a.get("value", True) is True
        for a in actions
    )
    return notify, notify and highlight


def count_unread(
    ruleset: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    room_id: str,
    facts_for: Any,
) -> tuple[int, int]:
    """(notification_count, highlight_count) over ``events`` (formatted, not the user's own).

    ``facts_for(event)`` gives the :class:`RoomFacts` for one event.
    """
    notifications = highlights = 0
    for event in events:
        notify, highlight = _notifies(evaluate(ruleset, event, room_id, facts_for(event)))
        notifications += notify
        highlights += highlight
    return notifications, highlights
