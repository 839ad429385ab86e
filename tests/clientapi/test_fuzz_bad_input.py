"""Fuzzing the client API over HTTP with bad input (exhaustive tables, no randomness).

The rule under test: whatever a client sends, the answer is a success or a
4xx with a Matrix errcode that says what was wrong (never a 500, never
M_UNKNOWN, never a hang), and nothing is left half written: the database
stays whole and the room still works afterwards.

For each endpoint a valid body is mangled every way the tables below know:
bodies that are not JSON or not an object, each key missing, each value
(at any depth) replaced by a value of every other JSON type or by an edge
case JSON can carry (integers past 64 bits, which the parser also makes of
``1e400``; lone surrogates, which ``\\ud800`` escapes decode to; deep
nesting; long strings and lists). Query parameters and path segments get
the same treatment. :data:`JUNK` is where to add a case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from p2pserver.clientapi.errors import STATUS_FOR_ERRCODE
from p2pserver.clientapi.http import HttpServer, Request, Response
from tests.clientapi.conftest import PASSWORD, Node, auth, register_raw, unique
from tests.nesting import nested

V3 = "/_matrix/client/v3"
# Seconds one request may take before it counts as a hang.
REQUEST_TIMEOUT = 10.0


JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    2**53,
    2**63,
    -(2**63) - 1,
    10**30,
    1.5,
    "",
    "x",
    "\ud800",  # a lone surrogate: valid JSON (an escape), not valid Unicode
    "a\x00b",
    "@nobody:example.org",
    "!nowhere:example.org",
    "$" + "A" * 43,
    "x" * 5000,
    [],
    [None],
    ["x", 1, {}],
    ["x"] * 500,
    {},
    {"\ud800": 1},
    {"": None},
    nested(60),
]
# Bodies that are not a JSON object.
NOT_JSON = [b"", b"{", b"not json", b"\xff\xfe", b'{"a": NaN}', b'{"a": 1}{']
NOT_OBJECT = [b"[]", b"42", b'"text"', b"null", b"true"]
# Query parameter and path segment values.
TEXT_JUNK = [
    "",
    "x",
    "-1",
    "0",
    "1.5",
    "1e5",
    "99999999999999999999999999",
    "9" * 5000,
    "null",
    "[]",
    "{}",
    "%ED%A0%80",
    "%00",
    "%",
    "\u00e9",
    "\u00b2",  # isdigit(), but not int()
    "$" + "A" * 43,
    "!nowhere:example.org",
    "@nobody:example.org",
    "s0_0_0",
    "s\u00b2",
    "s9999999999999999999_0_0",
    "s-4611686018427387904_0_0",
    "o\u00b2",
    "o" + "9" * 5000,
    "x" * 3000,
]
# What a failed stage of user-interactive auth may say.
UIA_ERRCODES = {"M_FORBIDDEN", "M_UNRECOGNIZED", "M_MISSING_PARAM", "M_INVALID_PARAM", "M_BAD_JSON"}
# M_UNKNOWN where the spec's own examples use it: a login type or identifier
# we do not support (POST /login 400), an alias that exists (PUT
# /directory/room 409). Anywhere else it says nothing a client can act on.
SPEC_M_UNKNOWN = ("unsupported login type", "identifiers are supported", "already exists")


def mutations(value: Any) -> Iterator[Any]:
    """``value`` with one part (at any depth) removed or replaced by each junk value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield {k: v for k, v in value.items() if k != key}
            for other in (*JUNK, *mutations(item)):
                yield {**value, key: other}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for other in (*JUNK, *mutations(item)):
                yield [*value[:i], other, *value[i + 1 :]]


def body_variants(base: dict[str, Any]) -> Iterator[bytes]:
    yield from NOT_JSON
    yield from NOT_OBJECT
    yield b"{}"
    yield json.dumps({**base, "unexpected": JUNK[-1]}).encode()
    yield b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for variant in mutations(base):
        yield json.dumps(variant).encode()


class Fuzz:
    """Sends requests and collects every answer that breaks the rule."""

    def __init__(self, http: httpx.Client, token: str) -> None:
        self.http = http
        self.token = token
        self.failures: list[str] = []
        self.answers = 0

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        query: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        label = f"{method} {path[:120]} {query or ''} {(body or b'')[:150]!r}"
        try:
            response = self.http.request(
                method,
                path,
                content=body,
                params=query,
                headers=auth(token or self.token),
                timeout=REQUEST_TIMEOUT,
            )
        except httpx.TimeoutException:
            self.failures.append(f"{label}: no answer in {REQUEST_TIMEOUT}s")
            return 0, None
        self.answers += 1
        try:
            answer = response.json()
        except ValueError:
            self.failures.append(f"{label}: {response.status_code}, not JSON")
            return response.status_code, None
        status = response.status_code
        if status >= 500:
            self.failures.append(f"{label}: {status} {answer}")
        elif status >= 400:
            errcode = answer.get("errcode") if isinstance(answer, dict) else None
            if status == 401 and isinstance(answer, dict) and "flows" in answer:
                # User-interactive auth: a challenge, with an errcode if a stage failed.
                if errcode is not None and errcode not in UIA_ERRCODES:
                    self.failures.append(f"{label}: UIA with {errcode}")
            elif not isinstance(errcode, str) or (
                errcode == "M_UNKNOWN" and not any(m in answer["error"] for m in SPEC_M_UNKNOWN)
            ):
                self.failures.append(f"{label}: {status} {answer}")
            elif errcode not in STATUS_FOR_ERRCODE and not errcode.startswith("M_"):
                self.failures.append(f"{label}: unknown errcode {errcode}")
        return status, answer


@pytest.fixture(scope="module")
def world(node: Node) -> dict[str, Any]:
    """Users, a room alice made (bob joined), an event in it, a backup version."""
    with node.http() as http:
        alice, token = register_raw(http)
        bob, bob_token = register_raw(http)
        maker, maker_token = register_raw(http)
        login_name = unique("login")
        register_raw(http, login_name)
        headers = auth(token)
        room = http.post(f"{V3}/createRoom", headers=headers, json={"preset": "public_chat"})
        room_id = room.json()["room_id"]
        assert http.post(f"{V3}/join/{room_id}", headers=auth(bob_token)).status_code == 200
        sent = http.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/first",
            headers=headers,
            json={"msgtype": "m.text", "body": "first"},
        )
        event_id = sent.json()["event_id"]
        version = http.post(
            f"{V3}/room_keys/version",
            headers=headers,
            json={"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}},
        )
        assert version.status_code == 200, version.text
        device = http.get(f"{V3}/account/whoami", headers=headers).json()["device_id"]
        return {
            "alice": alice,
            "token": token,
            "device": device,
            "bob": bob,
            "bob_token": bob_token,
            "maker_token": maker_token,
            "login_name": login_name,
            "room": room_id,
            "event": event_id,
            "version": version.json()["version"],
            "server": node.server_name,
        }


def _endpoints(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str | None]]:
    """(method, path, a valid body, a token other than alice's or None)."""
    alice, bob, room, event = w["alice"], w["bob"], w["room"], w["event"]
    carol = f"@carol:{w['server']}"
    device_keys = {
        "user_id": alice,
        "device_id": w["device"],
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{w['device']}": "c", f"ed25519:{w['device']}": "e"},
        "signatures": {alice: {f"ed25519:{w['device']}": "s"}},
    }
    one_time_key = {"key": "k", "signatures": {alice: {f"ed25519:{w['device']}": "s"}}}
    session = {
        "first_message_index": 0,
        "forwarded_count": 0,
        "is_verified": False,
        "session_data": {"ciphertext": "c", "ephemeral": "e", "mac": "m"},
    }
    event_filter = {
        "limit": 5,
        "types": ["m.room.message"],
        "not_types": ["x"],
        "senders": [alice],
        "not_senders": [bob],
    }
    room_filter = {**event_filter, "rooms": [room], "not_rooms": [], "lazy_load_members": True}
    sync_filter = {
        "event_fields": ["content.body", "type"],
        "event_format": "client",
        "presence": event_filter,
        "account_data": event_filter,
        "room": {
            "rooms": [room],
            "not_rooms": [],
            "include_leave": False,
            "timeline": room_filter,
            "state": room_filter,
            "ephemeral": room_filter,
            "account_data": room_filter,
        },
    }
    auth_password = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice},
        "password": PASSWORD,
    }
    return [
        (
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": w["login_name"]},
                "password": PASSWORD,
                "device_id": "LOGIN",
                "initial_device_display_name": "d",
                "refresh_token": False,
            },
            None,
        ),
        (
            "POST",
            "/register",
            {
                "username": "fuzzed",
                "password": PASSWORD,
                "auth": {"type": "m.login.dummy"},
                "device_id": "D",
                "initial_device_display_name": "d",
                "inhibit_login": True,
            },
            None,
        ),
        (
            "POST",
            "/createRoom",
            {
                "name": "n",
                "topic": "t",
                "preset": "private_chat",
                "visibility": "private",
                "room_version": "12",
                "invite": [bob],
                "is_direct": False,
                "initial_state": [
                    {"type": "m.room.topic", "state_key": "", "content": {"topic": "x"}}
                ],
                "creation_content": {"m.federate": True},
                "power_level_content_override": {"ban": 50, "users": {bob: 10}},
                "room_alias_name": "fuzz",
            },
            w["maker_token"],
        ),
        (
            "PUT",
            f"/rooms/{room}/send/m.room.message/TXN",
            {"msgtype": "m.text", "body": "hi"},
            None,
        ),
        ("PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "t"}, None),
        ("PUT", f"/rooms/{room}/state/m.room.name", {"name": "n"}, None),
        (
            "PUT",
            f"/rooms/{room}/state/m.room.power_levels",
            {"users": {alice: 100, bob: 0}, "ban": 50, "events": {"m.room.name": 50}},
            None,
        ),
        ("PUT", f"/rooms/{room}/state/m.room.join_rules", {"join_rule": "public"}, None),
        ("PUT", f"/rooms/{room}/state/m.room.canonical_alias", {"alt_aliases": []}, None),
        ("PUT", f"/rooms/{room}/state/m.room.member/{bob}", {"membership": "join"}, None),
        ("POST", f"/join/{room}", {"reason": "r"}, w["bob_token"]),
        ("POST", f"/rooms/{room}/join", {"reason": "r"}, w["bob_token"]),
        ("POST", f"/knock/{room}", {"reason": "r"}, None),
        ("POST", f"/rooms/{room}/invite", {"user_id": carol, "reason": "r"}, None),
        ("POST", f"/rooms/{room}/kick", {"user_id": carol, "reason": "r"}, None),
        ("POST", f"/rooms/{room}/ban", {"user_id": carol, "reason": "r"}, None),
        ("POST", f"/rooms/{room}/unban", {"user_id": carol, "reason": "r"}, None),
        ("PUT", f"/rooms/{room}/redact/{event}/TXN", {"reason": "r"}, None),
        ("PUT", f"/rooms/{room}/typing/{alice}", {"typing": True, "timeout": 1000}, None),
        ("POST", f"/rooms/{room}/receipt/m.read/{event}", {"thread_id": "main"}, None),
        (
            "POST",
            f"/rooms/{room}/read_markers",
            {"m.fully_read": event, "m.read": event, "m.read.private": event},
            None,
        ),
        (
            "POST",
            "/keys/upload",
            {
                "device_keys": device_keys,
                "one_time_keys": {"signed_curve25519:AAAA": one_time_key},
                "fallback_keys": {"signed_curve25519:BBBB": {**one_time_key, "fallback": True}},
            },
            None,
        ),
        ("POST", "/keys/query", {"device_keys": {alice: [], bob: ["X"]}, "timeout": 100}, None),
        (
            "POST",
            "/keys/claim",
            {"one_time_keys": {alice: {w["device"]: "signed_curve25519"}}, "timeout": 100},
            None,
        ),
        (
            "POST",
            "/keys/device_signing/upload",
            {
                "master_key": {"user_id": alice, "usage": ["master"], "keys": {"ed25519:M": "M"}},
                "auth": auth_password,
            },
            None,
        ),
        (
            "POST",
            "/keys/signatures/upload",
            {alice: {w["device"]: {**device_keys, "signatures": {alice: {"ed25519:M": "s"}}}}},
            None,
        ),
        ("PUT", "/sendToDevice/m.x/TXN", {"messages": {bob: {"*": {"a": 1}}}}, None),
        (
            "POST",
            "/room_keys/version",
            {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"k": "v"}},
            w["bob_token"],
        ),
        (
            "PUT",
            f"/room_keys/version/{w['version']}",
            {
                "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                "auth_data": {},
                "version": w["version"],
            },
            None,
        ),
        (
            "PUT",
            f"/room_keys/keys?version={w['version']}",
            {"rooms": {room: {"sessions": {"s": session}}}},
            None,
        ),
        (
            "PUT",
            f"/room_keys/keys/{room}?version={w['version']}",
            {"sessions": {"s": session}},
            None,
        ),
        ("PUT", f"/room_keys/keys/{room}/s?version={w['version']}", session, None),
        ("PUT", f"/profile/{alice}/displayname", {"displayname": "Alice"}, None),
        ("PUT", f"/profile/{alice}/avatar_url", {"avatar_url": "mxc://x/y"}, None),
        (
            "PUT",
            "/pushrules/global/override/fuzz",
            {
                "actions": ["notify", {"set_tweak": "sound", "value": "default"}],
                "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.x"}],
            },
            None,
        ),
        ("PUT", "/pushrules/global/content/fuzz", {"actions": ["notify"], "pattern": "x"}, None),
        ("PUT", "/pushrules/global/override/.m.rule.master/enabled", {"enabled": False}, None),
        ("PUT", "/pushrules/global/override/.m.rule.master/actions", {"actions": []}, None),
        ("PUT", f"/user/{alice}/account_data/x.y", {"a": 1}, None),
        ("PUT", f"/user/{alice}/account_data/m.direct", {bob: [room]}, None),
        ("PUT", f"/user/{alice}/account_data/m.ignored_user_list", {"ignored_users": {}}, None),
        ("PUT", f"/user/{alice}/account_data/m.push_rules", {"global": {}}, None),
        ("PUT", f"/user/{alice}/rooms/{room}/account_data/x.y", {"a": 1}, None),
        ("PUT", f"/user/{alice}/rooms/{room}/account_data/m.fully_read", {"event_id": event}, None),
        ("PUT", f"/presence/{alice}/status", {"presence": "online", "status_msg": "m"}, None),
        ("POST", f"/user/{alice}/filter", sync_filter, None),
        ("POST", "/user_directory/search", {"search_term": "a", "limit": 5}, None),
        (
            "POST",
            "/publicRooms",
            {
                "limit": 5,
                "filter": {"generic_search_term": "x"},
                "include_all_networks": False,
            },
            None,
        ),
        ("PUT", f"/directory/room/%23fuzz:{w['server']}", {"room_id": room}, None),
        ("PUT", f"/directory/list/room/{room}", {"visibility": "public"}, None),
        ("PUT", f"/devices/{w['device']}", {"display_name": "d"}, None),
        ("POST", "/delete_devices", {"devices": ["NOPE"], "auth": auth_password}, None),
        ("DELETE", "/devices/NOPE", {"auth": auth_password}, None),
        (
            "POST",
            "/account/password",
            {"new_password": PASSWORD, "logout_devices": False, "auth": auth_password},
            None,
        ),
        (
            "POST",
            "/pushers/set",
            {
                "pushkey": "k",
                "kind": "http",
                "app_id": "a",
                "app_display_name": "a",
                "device_display_name": "d",
                "lang": "en",
                "data": {"url": "https://example.org/_matrix/push/v1/notify"},
            },
            None,
        ),
        ("POST", f"/rooms/{room}/forget", {}, w["maker_token"]),
        ("POST", f"/rooms/{room}/leave", {"reason": "r"}, w["maker_token"]),
    ]


def _queries(w: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(path of a GET, its valid query parameters)."""
    room, event, alice = w["room"], w["event"], w["alice"]
    return [
        ("/sync", {"filter": "{}", "full_state": "false", "set_presence": "online"}),
        ("/sync", {"since": "x", "timeout": "0"}),
        ("/sync", {"filter": "0"}),
        ("/publicRooms", {"limit": "5", "since": "o0", "server": w["server"]}),
        (f"/rooms/{room}/messages", {"dir": "b", "limit": "5", "from": "x", "filter": "{}"}),
        (f"/rooms/{room}/messages", {"dir": "f", "to": "x"}),
        (f"/rooms/{room}/context/{event}", {"limit": "5", "filter": "{}"}),
        (f"/rooms/{room}/members", {"at": "x", "membership": "join", "not_membership": "leave"}),
        (f"/rooms/{room}/state/m.room.create/", {"format": "event"}),
        ("/keys/changes", {"from": "0", "to": "0"}),
        ("/register/available", {"username": "x"}),
        (f"/user/{alice}/filter/0", {}),
        (f"/profile/{alice}/displayname", {}),
        ("/room_keys/keys", {"version": w["version"]}),
        (f"/room_keys/keys/{room}", {"version": w["version"]}),
        (f"/room_keys/keys/{room}/s", {"version": w["version"]}),
        (f"/room_keys/version/{w['version']}", {}),
        ("/pushrules/global/override/.m.rule.master", {}),
    ]


# Paths with one segment that stands for an identifier, ``{}`` where junk goes.
SEGMENTS = [
    ("GET", "/rooms/{}/state"),
    ("GET", "/rooms/{}/messages"),
    ("GET", "/rooms/{room}/event/{}"),
    ("GET", "/rooms/{room}/context/{}"),
    ("GET", "/rooms/{room}/state/{}/x"),
    ("GET", "/profile/{}"),
    ("GET", "/profile/{alice}/{}"),
    ("GET", "/user/{alice}/filter/{}"),
    ("GET", "/user/{alice}/account_data/{}"),
    ("GET", "/directory/room/{}"),
    ("GET", "/devices/{}"),
    ("GET", "/room_keys/version/{}"),
    ("GET", "/pushrules/{}"),
    ("GET", "/pushrules/global/{}/x"),
    ("PUT", "/rooms/{room}/send/{}/1"),
    ("PUT", "/rooms/{room}/state/{}/x"),
    ("PUT", "/user/{alice}/account_data/{}"),
    ("PUT", "/user/{alice}/rooms/{}/account_data/x.y"),
    ("PUT", "/sendToDevice/{}/1"),
    ("PUT", "/pushrules/global/{}/x"),
    ("PUT", "/pushrules/global/override/{}"),
    ("PUT", "/pushrules/global/override/.m.rule.master/{}"),
    ("POST", "/join/{}"),
    ("POST", "/rooms/{}/invite"),
    ("POST", "/rooms/{room}/receipt/{}/{event}"),
    ("POST", "/rooms/{room}/receipt/m.read/{}"),
    ("PUT", "/rooms/{room}/redact/{}/1"),
    ("PUT", "/rooms/{room}/typing/{}"),
    ("PUT", "/profile/{alice}/{}"),
    ("PUT", "/presence/{}/status"),
    ("DELETE", "/directory/room/{}"),
]
SEGMENT_BODIES = {"PUT": b'{"a": 1, "typing": true, "actions": []}', "POST": b'{"user_id": "@x:y"}'}


def _room_still_works(node: Node, http: httpx.Client, w: dict[str, Any]) -> None:
    assert node.call(node.api.store.db.integrity_check) == []
    headers = auth(w["token"])
    sent = http.put(
        f"{V3}/rooms/{w['room']}/send/m.room.message/{unique('after-fuzz')}",
        headers=headers,
        json={"msgtype": "m.text", "body": "after the fuzz"},
    )
    assert sent.status_code == 200, sent.text
    synced = http.get(f"{V3}/sync", headers=auth(w["bob_token"]), params={"timeout": "0"})
    assert synced.status_code == 200, synced.text
    events = synced.json()["rooms"]["join"][w["room"]]["timeline"]["events"]
    assert sent.json()["event_id"] in [e["event_id"] for e in events]


def test_request_bodies_with_wrong_types_missing_keys_and_junk(
    node: Node, world: dict[str, Any]
) -> None:
    with node.http() as http:
        fuzz = Fuzz(http, world["token"])
        for n, (method, path, base, token) in enumerate(_endpoints(world)):
            for m, body in enumerate(body_variants(base)):
                # A new transaction ID each time, so no answer comes from the cache.
                fuzz.send(method, V3 + path.replace("TXN", f"t{n}.{m}"), body, token=token)
        assert fuzz.failures == [], "\n".join(fuzz.failures)
        assert fuzz.answers > 5000
        _room_still_works(node, http, world)


def test_query_parameters_and_path_segments(node: Node, world: dict[str, Any]) -> None:
    with node.http() as http:
        fuzz = Fuzz(http, world["token"])
        for path, base in _queries(world):
            fuzz.send("GET", V3 + path, query=base)
            for key in base:
                fuzz.send("GET", V3 + path, query={k: v for k, v in base.items() if k != key})
                for junk in TEXT_JUNK:
                    fuzz.send("GET", V3 + path, query={**base, key: junk})
        # Inline filters, which bypass the body parser: junk at every depth.
        room, event = world["room"], world["event"]
        event_filter = {
            "limit": 5,
            "types": ["m.room.message"],
            "not_senders": [world["bob"]],
            "lazy_load_members": True,
            "contains_url": False,
        }
        sync_filter = {
            "room": {"timeline": event_filter, "rooms": [room]},
            "event_fields": ["type"],
            "event_format": "client",
            "presence": {"types": ["m.presence"]},
        }
        for path, flt in (
            ("/sync", sync_filter),
            (f"/rooms/{room}/messages", event_filter),
            (f"/rooms/{room}/context/{event}", event_filter),
        ):
            for variant in [flt, *mutations(flt)]:
                fuzz.send("GET", V3 + path, query={"filter": json.dumps(variant), "dir": "b"})
        for method, template in SEGMENTS:
            for junk in TEXT_JUNK:
                path = template.format(
                    junk, room=world["room"], alice=world["alice"], event=world["event"]
                )
                fuzz.send(method, V3 + path, SEGMENT_BODIES.get(method))
        assert fuzz.failures == [], "\n".join(fuzz.failures)
        _room_still_works(node, http, world)


def test_a_handler_that_raises_costs_one_request_not_the_server() -> None:
    """The fuzz above once made ClientAPI.handle raise from its own error branch
    (an error message json_bytes could not encode), which took the whole HTTP
    server down. Whatever escapes a handler must cost that request only."""

    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return Response(200, b"{}")

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(HttpServer(handler).serve, listeners)

            def client() -> list[tuple[int, Any]]:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                    answers = [http.get(path) for path in ("/boom", "/ok", "/boom")]
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                    answers.append(http.get("/ok"))  # a new connection
                return [(a.status_code, a.json()) for a in answers]

            answers = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
        assert answers == [
            (500, {"errcode": "M_UNKNOWN", "error": "internal server error"}),
            (200, {}),
            (500, {"errcode": "M_UNKNOWN", "error": "internal server error"}),
            (200, {}),
        ]

    trio.run(main)
