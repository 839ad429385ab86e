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

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "KINDS",
    "RoomFacts",
    "compile_ruleset",
    "count_unread",
    "default_ruleset",
    "evaluate",
]

KINDS = ("override", "content", "room", "sender", "underride")


def _sound(value: str = "default") -> dict[str, str]:
    return {"set_tweak": "sound", "value": value}


def _highlight() -> dict[str, str]:
    return {"set_tweak": "highlight"}


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
            ["notify", _sound()],
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
            ["notify", _sound(), _highlight()],
        ),
        _rule(
            ".m.rule.contains_display_name",
            [{"kind": "contains_display_name"}],
            ["notify", _sound(), _highlight()],
        ),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _highlight()],
        ),
        _rule(
            ".m.rule.roomnotif",
            [
                {"kind": "sender_notification_permission", "key": "room"},
                _match("content.body", "@room"),
            ],
            ["notify", _highlight()],
        ),
        _rule(
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", _highlight()],
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
            "actions": ["notify", _sound(), _highlight()],
        }
    ]
    underride = [
        _rule(
            ".m.rule.call",
            [_match("type", "m.call.invite")],
            ["notify", _sound("ring")],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", _sound()],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", _sound()],
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    # Every dict above is built afresh, so callers may change the result.
    return {
        "global": {
            "override": override,
            "content": content,
            "room": [],
            "sender": [],
            "underride": underride,
        }
    }


@dataclass(frozen=True)
class RoomFacts:
    """What the conditions need to know about the room and the user."""

    user_id: str
    display_name: str | None
    member_count: int
    # The room's "notifications" levels, and a sender's power level.
    notification_levels: Mapping[str, int]
    power_of: Callable[[str], int | float]


@lru_cache(maxsize=512)
def _glob(pattern: str, words: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if words:
        body = rf"(?:^|\W){body}(?:\W|$)"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=512)
def _path(key: str) -> tuple[str, ...]:
    return tuple(
        part.replace("\\.", ".").replace("\\\\", "\\") for part in re.split(r"(?<!\\)\.", key)
    )


_ABSENT = object()


def _property(event: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = event
    for part in path:
        if type(value) is not dict or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _same_json(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1.
    return type(a) is type(b) and a == b


def _member_count_holds(spec: Any, count: int) -> bool:
    match = re.fullmatch(r"(==|<=|>=|<|>)?([0-9]+)", spec) if isinstance(spec, str) else None
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


Predicate = Callable[[dict[str, Any], RoomFacts], bool]
_BODY = ("content", "body")


def _never(event: dict[str, Any], facts: RoomFacts) -> bool:
    return False


def _condition(condition: Any) -> Predicate:
    """One condition as a predicate (unknown kinds never match, as the spec says)."""
    if not isinstance(condition, dict):
        return _never
    kind = condition.get("kind")
    key = condition.get("key")
    if kind == "event_match":
        pattern = condition.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return _never
        path = _path(key)
        # content.body matches at word boundaries; other keys the whole value.
        words = path == _BODY
        regex = _glob(pattern, words)
        find = regex.search if words else regex.fullmatch

        def event_match(event: dict[str, Any], facts: RoomFacts) -> bool:
            value = _property(event, path)
            return isinstance(value, str) and find(value) is not None

        return event_match
    if kind in ("event_property_is", "event_property_contains"):
        if not isinstance(key, str):
            return _never
        path, wanted = _path(key), condition.get("value")
        if kind == "event_property_is":
            return lambda event, facts: _same_json(_property(event, path), wanted)
        return lambda event, facts: (
            isinstance(value := _property(event, path), list)
            and any(_same_json(v, wanted) for v in value)
        )
    if kind == "contains_display_name":

        def display_name(event: dict[str, Any], facts: RoomFacts) -> bool:
            body = _property(event, _BODY)
            name = facts.display_name
            return bool(isinstance(body, str) and name) and (
                _glob(name or "", True).search(body) is not None
            )

        return display_name
    if kind == "room_member_count":
        spec = condition.get("is")
        return lambda event, facts: _member_count_holds(spec, facts.member_count)
    if kind == "sender_notification_permission":
        if not isinstance(key, str):
            return _never
        return lambda event, facts: (
            facts.power_of(str(event.get("sender"))) >= facts.notification_levels.get(key, 50)
        )
    return _never


@dataclass(frozen=True)
class _Rule:
    kind: str
    rule_id: Any
    conditions: tuple[Predicate, ...]
    actions: list[Any]


def compile_ruleset(ruleset: Any) -> list[_Rule]:
    """The enabled rules in evaluation order (override, content, room, sender, underride)."""
    rules = ruleset.get("global") if isinstance(ruleset, dict) else None
    out: list[_Rule] = []
    for kind in KINDS:
        listed = rules.get(kind) if isinstance(rules, dict) else None
        for rule in listed if isinstance(listed, list) else ():
            if not isinstance(rule, dict) or not rule.get("enabled", True):
                continue
            actions = rule.get("actions")
            actions = list(actions) if isinstance(actions, list) else []
            if kind == "content":
                pattern = rule.get("pattern")
                conditions: tuple[Predicate, ...] = (
                    _condition({"kind": "event_match", "key": "content.body", "pattern": pattern}),
                )
            elif kind in ("room", "sender"):
                conditions = ()
            else:
                listed_conditions = rule.get("conditions", [])
                if not isinstance(listed_conditions, list):
                    continue
                conditions = tuple(_condition(c) for c in listed_conditions)
            out.append(_Rule(kind, rule.get("rule_id"), conditions, actions))
    return out


def _actions(
    rules: Sequence[_Rule], event: dict[str, Any], room_id: str, facts: RoomFacts
) -> list[Any]:
    for rule in rules:
        if rule.kind == "room":
            holds = rule.rule_id == room_id
        elif rule.kind == "sender":
            holds = rule.rule_id == event.get("sender")
        else:
            holds = all(condition(event, facts) for condition in rule.conditions)
        if holds:
            return rule.actions
    return []


def evaluate(ruleset: Any, event: dict[str, Any], room_id: str, facts: RoomFacts) -> list[Any]:
    """The actions of the first matching rule; [] if none matches."""
    return list(_actions(compile_ruleset(ruleset), event, room_id, facts))


def _notifies(actions: Sequence[Any]) -> tuple[bool, bool]:
    notify = any(a in ("notify", "coalesce") for a in actions)
    highlight = any(
        isinstance(a, dict) and a.get("set_tweak") == "highlight" and a.get("value", True) is True
        for a in actions
    )
    return notify, notify and highlight


def count_unread(
    ruleset: Any, events: Sequence[dict[str, Any]], room_id: str, facts: RoomFacts
) -> tuple[int, int]:
    """(notification_count, highlight_count) over ``events`` (not the user's own).

    ``ruleset`` is a push ruleset, or what :func:`compile_ruleset` made of one.
    """
    rules = ruleset if isinstance(ruleset, list) else compile_ruleset(ruleset)
    notifications = highlights = 0
    for event in events:
        notify, highlight = _notifies(_actions(rules, event, room_id, facts))
        notifications += notify
        highlights += highlight
    return notifications, highlights
