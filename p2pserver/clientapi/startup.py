"""What clients ask at start-up: profiles, account data, push rules, presence, and stubs.

Spec sections: "Profiles", "Client Config" (account data), "Push Rules"
(``/pushrules``), "Presence", "Voice over IP" (``/voip/turnServer``),
"Pushers" and "Third-party Networks". Some clients hang or retry forever
when one of these is missing, so each answers as the spec says for a
server without that feature: an empty TURN answer, no pushers, no
protocols. (Key backup, ``/room_keys``, is :mod:`.backup`.)

Rules:
- A user changes only their own profile, account data, presence and push
  rules (403 M_FORBIDDEN otherwise). A profile change is also sent as a new
  ``m.room.member`` event in every room the user is joined to, as Synapse
  does and clients expect (the member list shows the new name).
- ``m.fully_read`` and ``m.push_rules`` cannot be set as account data (400
  M_BAD_JSON): read markers and /pushrules own them.
- Push rules are stored as the user's ``m.push_rules`` account data; the
  spec's defaults until the user changes one. User rules go before the
  defaults of their kind (or where ``before`` / ``after`` put them);
  predefined rules can be enabled, disabled or given new actions, never
  deleted or replaced.
- Another server's user's profile comes through the :class:`Remote` hook.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.pushrules import KINDS, default_ruleset
from p2pserver.clientapi.routing import Ctx, Router
from p2pserver.clientapi.streams import PRESENCE_STATES
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.validation import is_valid_user_id

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

logger = logging.getLogger(__name__)

PROFILE_FIELDS = ("displayname", "avatar_url")
MAX_PROFILE_FIELD = 1000


def add_routes(router: Router) -> None:
    router.add("GET", "/profile/{userId}", get_profile, auth=False)
    router.add("GET", "/profile/{userId}/{field}", get_profile_field, auth=False)
    router.add("PUT", "/profile/{userId}/{field}", set_profile_field)
    router.add("GET", "/user/{userId}/account_data/{type}", get_account_data)
    router.add("PUT", "/user/{userId}/account_data/{type}", put_account_data)
    router.add("GET", "/user/{userId}/rooms/{roomId}/account_data/{type}", get_account_data)
    router.add("PUT", "/user/{userId}/rooms/{roomId}/account_data/{type}", put_account_data)
    router.add("GET", "/pushrules", get_push_rules)
    router.add("GET", "/pushrules/{scope}", get_push_rules_scope)
    router.add("GET", "/pushrules/{scope}/{kind}/{ruleId}", get_push_rule)
    router.add("PUT", "/pushrules/{scope}/{kind}/{ruleId}", put_push_rule)
    router.add("DELETE", "/pushrules/{scope}/{kind}/{ruleId}", delete_push_rule)
    router.add("GET", "/pushrules/{scope}/{kind}/{ruleId}/{attr}", get_push_rule_attr)
    router.add("PUT", "/pushrules/{scope}/{kind}/{ruleId}/{attr}", put_push_rule_attr)
    router.add("GET", "/presence/{userId}/status", get_presence)
    router.add("PUT", "/presence/{userId}/status", put_presence)
    router.add("GET", "/voip/turnServer", turn_server)
    router.add("GET", "/pushers", pushers)
    router.add("POST", "/pushers/set", set_pusher)
    router.add("GET", "/thirdparty/protocols", thirdparty_protocols)
    router.add("GET", "/account/3pid", threepids)


# -- profiles ------------------------------------------------------------------------


async def _profile_of(api: ClientAPI, user_id: str) -> dict[str, Any]:
    if not is_valid_user_id(user_id):
        raise ApiError.of("M_INVALID_PARAM", f"invalid user ID {user_id!r}")
    if not api.is_local_user(user_id):
        if api.remote is None:
            raise ApiError.of("M_NOT_FOUND", "profile not found (other servers are out of reach)")
        return await api.remote.query_profile(user_id)
    record = api.accounts.user(user_id)
    if record is None or record.deactivated:
        raise ApiError.of("M_NOT_FOUND", "profile not found")
    out: dict[str, Any] = {}
    if record.displayname is not None:
        out["displayname"] = record.displayname
    if record.avatar_url is not None:
        out["avatar_url"] = record.avatar_url
    return out


async def get_profile(ctx: Ctx) -> dict[str, Any]:
    return await _profile_of(ctx.api, ctx.params["userId"])


async def get_profile_field(ctx: Ctx) -> dict[str, Any]:
    field = ctx.params["field"]
    profile = await _profile_of(ctx.api, ctx.params["userId"])
    if field not in profile:
        raise ApiError.of("M_NOT_FOUND", f"no {field} set")
    return {field: profile[field]}


async def set_profile_field(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    field = ctx.params["field"]
    if field not in PROFILE_FIELDS:
        raise ApiError.of("M_INVALID_PARAM", f"unknown profile field {field!r}")
    if ctx.params["userId"] != ctx.user_id:
        raise ApiError.of("M_FORBIDDEN", "you can only change your own profile")
    body = ctx.json()
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise ApiError.of("M_BAD_JSON", f"{field} must be a string")
    if value is not None and len(value) > MAX_PROFILE_FIELD:
        raise ApiError.of("M_TOO_LARGE", f"{field} is too long")
    value = value or None
    api.accounts.set_profile_field(ctx.user_id, field, value)
    await _update_member_events(api, ctx.user_id, field, value)
    return {}


async def _update_member_events(
    api: ClientAPI, user_id: str, field: str, value: str | None
) -> None:
    for member in api.reads.memberships(user_id):
        if member.membership != "join":
            continue
        event = api.store.load_event(member.event_id)
        content = dict(event.content) if event is not None else {"membership": "join"}
        if content.get(field) == value:
            continue
        if value is None:
            content.pop(field, None)
        else:
            content[field] = value
        content.pop("reason", None)
        try:
            await api.engine.send_state(member.room_id, user_id, "m.room.member", user_id, content)
        except MatrixError as exc:  # e.g. banned since; the profile itself is changed
            logger.info("profile update in %s skipped: %s", member.room_id, exc.message)


# -- account data ----------------------------------------------------------------------


def _account_data_target(ctx: Ctx) -> tuple[str | None, str]:
    if ctx.params["userId"] != ctx.user_id:
        raise ApiError.of("M_FORBIDDEN", "you can only access your own account data")
    room_id = ctx.params.get("roomId")
    if room_id is not None and not room_id.startswith("!"):
        raise ApiError.of("M_INVALID_PARAM", f"invalid room ID {room_id!r}")
    return room_id, ctx.params["type"]


async def get_account_data(ctx: Ctx) -> dict[str, Any]:
    room_id, data_type = _account_data_target(ctx)
    content = ctx.api.accounts.account_data(ctx.user_id, room_id, data_type)
    if content is None and data_type == "m.push_rules" and room_id is None:
        content = default_ruleset(ctx.user_id)
    if content is None:
        raise ApiError.of("M_NOT_FOUND", "no account data of that type")
    return content


async def put_account_data(ctx: Ctx) -> dict[str, Any]:
    room_id, data_type = _account_data_target(ctx)
    if data_type in ("m.fully_read", "m.push_rules"):
        raise ApiError.of("M_BAD_JSON", f"{data_type} cannot be set through this API")
    content = ctx.json()
    ctx.api.accounts.set_account_data(ctx.user_id, room_id, data_type, content)
    ctx.api.poke()
    return {}


# -- push rules ---------------------------------------------------------------------------


def _ruleset(ctx: Ctx) -> dict[str, Any]:
    stored = ctx.api.accounts.account_data(ctx.user_id, None, "m.push_rules")
    return stored if isinstance(stored, dict) else default_ruleset(ctx.user_id)


def _save_ruleset(ctx: Ctx, ruleset: dict[str, Any]) -> None:
    ctx.api.accounts.set_account_data(ctx.user_id, None, "m.push_rules", ruleset)
    ctx.api.poke()


def _scope_kind(ctx: Ctx) -> str:
    if ctx.params["scope"] != "global":
        raise ApiError.of("M_INVALID_PARAM", "the only push rule scope is 'global'")
    kind = ctx.params["kind"]
    if kind not in KINDS:
        raise ApiError.of("M_INVALID_PARAM", f"unknown push rule kind {kind!r}")
    return kind


def _find_rule(ruleset: dict[str, Any], kind: str, rule_id: str) -> dict[str, Any]:
    for rule in ruleset["global"].get(kind, []):
        if rule.get("rule_id") == rule_id:
            return rule
    raise ApiError.of("M_NOT_FOUND", f"no push rule {rule_id!r}")


async def get_push_rules(ctx: Ctx) -> dict[str, Any]:
    return _ruleset(ctx)


async def get_push_rules_scope(ctx: Ctx) -> dict[str, Any]:
    if ctx.params["scope"] != "global":
        raise ApiError.of("M_INVALID_PARAM", "the only push rule scope is 'global'")
    return _ruleset(ctx)["global"]


async def get_push_rule(ctx: Ctx) -> dict[str, Any]:
    kind = _scope_kind(ctx)
    return _find_rule(_ruleset(ctx), kind, ctx.params["ruleId"])


def _check_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list) or not all(isinstance(a, (str, dict)) for a in actions):
        raise ApiError.of("M_BAD_JSON", "actions must be a list of strings and objects")
    return actions


async def put_push_rule(ctx: Ctx) -> dict[str, Any]:
    kind = _scope_kind(ctx)
    rule_id = ctx.params["ruleId"]
    if rule_id.startswith("."):
        raise ApiError.of("M_INVALID_PARAM", "predefined rules cannot be replaced")
    body = ctx.json()
    rule: dict[str, Any] = {
        "rule_id": rule_id,
        "default": False,
        "enabled": True,
        "actions": _check_actions(body.get("actions")),
    }
    if kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions):
            raise ApiError.of("M_BAD_JSON", "conditions must be a list of objects")
        rule["conditions"] = conditions
    elif kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str):
            raise ApiError.of("M_BAD_JSON", "content rules need a pattern")
        rule["pattern"] = pattern
    ruleset = copy.deepcopy(_ruleset(ctx))
    rules: list[dict[str, Any]] = ruleset["global"].setdefault(kind, [])
    rules[:] = [r for r in rules if r.get("rule_id") != rule_id]
    before, after = ctx.query("before"), ctx.query("after")
    position = next((i for i, r in enumerate(rules) if r.get("default")), len(rules))
    for anchor, offset in ((before, 0), (after, 1)):
        if anchor is not None:
            index = next((i for i, r in enumerate(rules) if r.get("rule_id") == anchor), None)
            if index is None:
                raise ApiError.of("M_NOT_FOUND", f"no push rule {anchor!r}")
            position = index + offset
    rules.insert(position, rule)
    _save_ruleset(ctx, ruleset)
    return {}


async def delete_push_rule(ctx: Ctx) -> dict[str, Any]:
    kind = _scope_kind(ctx)
    rule_id = ctx.params["ruleId"]
    ruleset = copy.deepcopy(_ruleset(ctx))
    rule = _find_rule(ruleset, kind, rule_id)
    if rule.get("default"):
        raise ApiError.of("M_INVALID_PARAM", "predefined rules cannot be deleted")
    ruleset["global"][kind].remove(rule)
    _save_ruleset(ctx, ruleset)
    return {}


async def get_push_rule_attr(ctx: Ctx) -> dict[str, Any]:
    kind = _scope_kind(ctx)
    attr = ctx.params["attr"]
    if attr not in ("enabled", "actions"):
        raise ApiError(404, "M_UNRECOGNIZED", "unrecognized request")
    rule = _find_rule(_ruleset(ctx), kind, ctx.params["ruleId"])
    return {attr: rule.get(attr, True if attr == "enabled" else [])}


async def put_push_rule_attr(ctx: Ctx) -> dict[str, Any]:
    kind = _scope_kind(ctx)
    attr = ctx.params["attr"]
    if attr not in ("enabled", "actions"):
        raise ApiError(404, "M_UNRECOGNIZED", "unrecognized request")
    body = ctx.json()
    value = body.get(attr)
    if attr == "enabled" and not isinstance(value, bool):
        raise ApiError.of("M_BAD_JSON", "enabled must be a boolean")
    if attr == "actions":
        value = _check_actions(value)
    ruleset = copy.deepcopy(_ruleset(ctx))
    _find_rule(ruleset, kind, ctx.params["ruleId"])[attr] = value
    _save_ruleset(ctx, ruleset)
    return {}


# -- presence ------------------------------------------------------------------------------


async def get_presence(ctx: Ctx) -> dict[str, Any]:
    api = ctx.api
    user_id = ctx.params["userId"]
    if not is_valid_user_id(user_id):
        raise ApiError.of("M_INVALID_PARAM", f"invalid user ID {user_id!r}")
    record = api.presence.get(user_id)
    if record is None:
        if api.is_local_user(user_id) and api.accounts.user(user_id) is not None:
            return {"presence": "offline"}
        raise ApiError.of("M_NOT_FOUND", "no presence known for that user")
    out: dict[str, Any] = {
        "presence": record.presence,
        "last_active_ago": max(0, api.now_ms() - record.last_active_ts),
        "currently_active": record.presence == "online",
    }
    if record.status_msg is not None:
        out["status_msg"] = record.status_msg
    return out


async def put_presence(ctx: Ctx) -> dict[str, Any]:
    if ctx.params["userId"] != ctx.user_id:
        raise ApiError.of("M_FORBIDDEN", "you can only set your own presence")
    body = ctx.json()
    presence = body.get("presence")
    if presence not in PRESENCE_STATES:
        raise ApiError.of("M_BAD_JSON", f"presence must be one of {', '.join(PRESENCE_STATES)}")
    status_msg = body.get("status_msg")
    if status_msg is not None and not isinstance(status_msg, str):
        raise ApiError.of("M_BAD_JSON", "status_msg must be a string")
    if ctx.api.presence.set(ctx.user_id, presence, status_msg):
        ctx.api.poke()
    return {}


# -- features this node does not have -----------------------------------------------------


async def turn_server(ctx: Ctx) -> dict[str, Any]:
    return {}


async def pushers(ctx: Ctx) -> dict[str, Any]:
    return {"pushers": []}


async def set_pusher(ctx: Ctx) -> dict[str, Any]:
    ctx.json()
    # No push gateway can be reached from a P2P node; accepted and unused.
    return {}


async def thirdparty_protocols(ctx: Ctx) -> dict[str, Any]:
    return {}


async def threepids(ctx: Ctx) -> dict[str, Any]:
    return {"threepids": []}
