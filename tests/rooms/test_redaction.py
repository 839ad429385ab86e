"""The redaction algorithm of room versions 10 (= v9 rules), 11 and 12 (= v11).

Expected keys are written out from the spec's lists (rooms/v9 and v11
"Redactions") rather than taken from the implementation.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.redaction import redact
from p2pserver.rooms.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

V10, V11, V12 = ROOM_V10, ROOM_V11, ROOM_V12

# Top-level keys each version keeps (spec lists, in the spec's order).
TOP_V10 = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts",
    "membership",
}
TOP_V11 = TOP_V10 - {"prev_state", "origin", "membership"}

# Content keys each version keeps, per event type.
CONTENT_V10 = {
    "m.room.member": {"membership", "join_authorised_via_users_server"},
    "m.room.create": {"creator"},
    "m.room.join_rules": {"join_rule", "allow"},
    "m.room.power_levels": {
        "ban", "events", "events_default", "kick", "redact", "state_default", "users",
        "users_default",
    },
    "m.room.history_visibility": {"history_visibility"},
}
CONTENT_V11 = {
    **CONTENT_V10,
    "m.room.member": {"membership", "join_authorised_via_users_server", "third_party_invite"},
    "m.room.power_levels": CONTENT_V10["m.room.power_levels"] | {"invite"},
    "m.room.redaction": {"redacts"},
}

ALL_TOP_LEVEL = sorted(TOP_V10 | {"unsigned", "redacts", "age_ts", "custom"})


def allowed(version: RoomVersion) -> tuple[set[str], dict[str, set[str]]]:
    return (TOP_V11, CONTENT_V11) if version.updated_redaction_rules else (TOP_V10, CONTENT_V10)


def pdu(event_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    base = {key: f"<{key}>" for key in ALL_TOP_LEVEL}
    base.update(type=event_type, content=content, depth=3, origin_server_ts=4)
    base.update(extra)
    return base


TPI = {"display_name": "Bob", "signed": {"mxid": "@bob:x", "token": "t", "signatures": {}}}

CASES: list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]] = [
    # (type, content, {version: expected redacted content})
    (
        "m.room.create",
        {"creator": "@a:x", "room_version": "10", "m.federate": False, "additional_creators": []},
        {
            "10": {"creator": "@a:x"},
            "11": {"creator": "@a:x", "room_version": "10", "m.federate": False,
                   "additional_creators": []},
        },
    ),
    (
        "m.room.member",
        {"membership": "join", "displayname": "A", "avatar_url": "mxc://x/y",
         "join_authorised_via_users_server": "@b:y", "reason": "hi", "is_direct": True},
        {
            "10": {"membership": "join", "join_authorised_via_users_server": "@b:y"},
            "11": {"membership": "join", "join_authorised_via_users_server": "@b:y"},
        },
    ),
    (
        "m.room.member",
        {"membership": "invite", "third_party_invite": TPI, "displayname": "B"},
        {
            "10": {"membership": "invite"},
            "11": {"membership": "invite", "third_party_invite": {"signed": TPI["signed"]}},
        },
    ),
    (  # an object without `signed` stays, empty (as Synapse and ruma keep it)
        "m.room.member",
        {"membership": "invite", "third_party_invite": {"display_name": "B"}},
        {"10": {"membership": "invite"}, "11": {"membership": "invite", "third_party_invite": {}}},
    ),
    (
        "m.room.member",
        {"membership": "invite", "third_party_invite": "not an object"},
        {"10": {"membership": "invite"}, "11": {"membership": "invite"}},
    ),
    (
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!r:x"}],
         "other": 1},
        {
            "10": {"join_rule": "restricted",
                   "allow": [{"type": "m.room_membership", "room_id": "!r:x"}]},
            "11": {"join_rule": "restricted",
                   "allow": [{"type": "m.room_membership", "room_id": "!r:x"}]},
        },
    ),
    (
        "m.room.power_levels",
        {"ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0, "kick": 50,
         "redact": 50, "state_default": 50, "users": {"@a:x": 100}, "users_default": 0,
         "notifications": {"room": 50}},
        {
            "10": {"ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "kick": 50,
                   "redact": 50, "state_default": 50, "users": {"@a:x": 100}, "users_default": 0},
            "11": {"ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0,
                   "kick": 50, "redact": 50, "state_default": 50, "users": {"@a:x": 100},
                   "users_default": 0},
        },
    ),
    (
        "m.room.history_visibility",
        {"history_visibility": "shared", "x": 1},
        {"10": {"history_visibility": "shared"}, "11": {"history_visibility": "shared"}},
    ),
    (
        "m.room.redaction",
        {"redacts": "$target", "reason": "spam"},
        {"10": {}, "11": {"redacts": "$target"}},
    ),
    (
        "m.room.message",
        {"body": "hello", "msgtype": "m.text"},
        {"10": {}, "11": {}},
    ),
    (
        "m.room.name",
        {"name": "a room"},
        {"10": {}, "11": {}},
    ),
]


@pytest.mark.parametrize("version", [V10, V11, V12], ids=lambda v: v.identifier)
@pytest.mark.parametrize(
    ("event_type", "content", "expected"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_redaction_of_each_special_type(
    version: RoomVersion, event_type: str, content: dict[str, Any], expected: dict[str, Any]
) -> None:
    event = pdu(event_type, content, redacts="$target")
    before = copy.deepcopy(event)
    redacted = redact(event, version)
    assert event == before  # the input is not modified
    rules = "11" if version.updated_redaction_rules else "10"
    assert redacted["content"] == expected[rules]
    top, _ = allowed(version)
    assert set(redacted) == top
    assert {k: redacted[k] for k in top if k != "content"} == {
        k: event[k] for k in top if k != "content"
    }


def test_v10_keeps_origin_membership_prev_state_v11_and_v12_drop_them() -> None:
    event = pdu("m.room.message", {})
    for key in ("origin", "membership", "prev_state"):
        assert key in redact(event, V10)
        assert key not in redact(event, V11)
        assert key not in redact(event, V12)


def test_unsigned_unknown_keys_and_top_level_redacts_go() -> None:
    for version in (V10, V11, V12):
        redacted = redact(pdu("m.room.redaction", {"redacts": "$t"}), version)
        assert "unsigned" not in redacted and "custom" not in redacted
        assert "redacts" not in redacted  # top level: not in any list


def test_missing_or_non_object_content_becomes_empty() -> None:
    for content in (None, [], "x"):
        event = pdu("m.room.member", {})
        event["content"] = content
        assert redact(event, V11)["content"] == {}


# -- properties ----------------------------------------------------------------------

SPECIAL_TYPES = sorted(CONTENT_V11) + ["m.room.message", "org.example.custom"]
json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=5)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
content_keys = st.sampled_from(
    sorted(set().union(*CONTENT_V11.values())) + ["body", "displayname", "x"]
)
events = st.builds(
    lambda t, content, top: {**top, "type": t, "content": content},
    st.sampled_from(SPECIAL_TYPES),
    st.dictionaries(content_keys, json_value, max_size=6),
    st.dictionaries(st.sampled_from(ALL_TOP_LEVEL), json_value, max_size=10),
)
versions = st.sampled_from([V10, V11, V12])


@given(events, versions)
def test_redaction_is_idempotent(event: dict[str, Any], version: RoomVersion) -> None:
    once = redact(event, version)
    assert redact(once, version) == once


@given(events, versions)
def test_redaction_keeps_only_allowed_keys_unchanged(
    event: dict[str, Any], version: RoomVersion
) -> None:
    top, content_rules = allowed(version)
    redacted = redact(event, version)
    assert set(redacted) <= top
    for key in top & set(event) - {"content"}:
        assert redacted[key] == event[key]
    allowed_content = content_rules.get(event["type"], set())
    if event["type"] == "m.room.create" and version.updated_redaction_rules:
        assert redacted["content"] == event["content"]  # v11+: create content is kept whole
        return
    assert set(redacted["content"]) <= allowed_content
    for key, value in redacted["content"].items():
        if key == "third_party_invite":
            assert set(value) <= {"signed"}
            assert value.get("signed", None) == event["content"][key].get("signed", None)
        else:
            assert value == event["content"][key]
    for key in allowed_content & set(event["content"]) - {"third_party_invite"}:
        assert key in redacted["content"]
