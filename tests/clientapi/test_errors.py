"""Bad input gets the spec's errcodes, and a client's mistake never a 500."""

from __future__ import annotations

import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pserver.clientapi.http import MAX_BODY_BYTES
from tests.clientapi.conftest import Node, auth, register_raw

V3 = "/_matrix/client/v3"


@pytest.fixture(scope="module")
def user(node: Node) -> tuple[str, str, str]:
    """(user ID, token, a room the user created)."""
    with node.http() as http:
        user_id, token = register_raw(http)
        room_id = http.post(f"{V3}/createRoom", headers=auth(token), json={}).json()["room_id"]
        return user_id, token, room_id


def test_malformed_json(node: Node, user: tuple[str, str, str]) -> None:
    _, token, room_id = user
    with node.http() as http:
        for body in (b"{", b"not json", b"\xff\xfe", b'{"a": NaN}', b""):
            response = http.post(f"{V3}/createRoom", headers=auth(token), content=body)
            assert (response.status_code, response.json()["errcode"]) == (400, "M_NOT_JSON"), body
        for body in (b"[]", b"42", b'"text"', b"null"):
            response = http.put(
                f"{V3}/rooms/{room_id}/send/m.room.message/t{len(body)}",
                headers=auth(token),
                content=body,
            )
            assert (response.status_code, response.json()["errcode"]) == (400, "M_BAD_JSON"), body
        wrong_type = http.post(f"{V3}/createRoom", headers=auth(token), json={"name": 5})
        assert (wrong_type.status_code, wrong_type.json()["errcode"]) == (400, "M_BAD_JSON")
        float_content = http.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/float",
            headers=auth(token),
            content=b'{"x": 1.5}',
        )
        assert (float_content.status_code, float_content.json()["errcode"]) == (400, "M_BAD_JSON")


def test_unknown_endpoints_and_methods(node: Node, user: tuple[str, str, str]) -> None:
    _, token, _ = user
    with node.http() as http:
        for path in (
            "/_matrix/client/v3/nope",
            "/_matrix/client/v9/sync",
            "/",
            "/_matrix/client/unstable/x",
        ):
            response = http.get(path, headers=auth(token))
            assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED"), (
                path
            )
        wrong_method = http.delete(f"{V3}/sync", headers=auth(token))
        assert (wrong_method.status_code, wrong_method.json()["errcode"]) == (405, "M_UNRECOGNIZED")


def test_tokens(node: Node) -> None:
    with node.http() as http:
        missing = http.get(f"{V3}/account/whoami")
        assert (missing.status_code, missing.json()["errcode"]) == (401, "M_MISSING_TOKEN")
        unknown = http.get(f"{V3}/account/whoami", headers=auth("nope"))
        assert (unknown.status_code, unknown.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        query = http.get(f"{V3}/account/whoami", params={"access_token": "nope"})
        assert query.json()["errcode"] == "M_UNKNOWN_TOKEN"
        basic = http.get(f"{V3}/account/whoami", headers={"Authorization": "Basic abc"})
        assert basic.json()["errcode"] == "M_UNKNOWN_TOKEN"


def test_oversized_body_is_413(node: Node, user: tuple[str, str, str]) -> None:
    _, token, room_id = user
    big = b'{"body": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    with node.http() as http:
        response = http.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/big", headers=auth(token), content=big
        )
        assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")

        def chunks():  # no Content-Length: chunked transfer encoding
            for _ in range(MAX_BODY_BYTES // 65536 + 2):
                yield b"x" * 65536

        response = http.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/big2", headers=auth(token), content=chunks()
        )
        assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")
    # An event under the body limit but over the PDU limit is refused too.
    with node.http() as http:
        response = http.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/pdu",
            headers=auth(token),
            json={"body": "y" * 70000},
        )
        assert response.status_code in (400, 413)
        assert response.json()["errcode"] in ("M_TOO_LARGE", "M_BAD_JSON")


def test_malformed_http_gets_400_and_connection_closes(node: Node) -> None:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 400")


def test_rooms_that_do_not_exist_and_bad_ids(node: Node, user: tuple[str, str, str]) -> None:
    _, token, room_id = user
    headers = auth(token)
    with node.http() as http:
        missing = http.put(f"{V3}/rooms/!nothere:x/send/m.room.message/1", headers=headers, json={})
        assert (missing.status_code, missing.json()["errcode"]) == (404, "M_NOT_FOUND")
        join = http.post(f"{V3}/join/!nothere:x", headers=headers)
        assert (join.status_code, join.json()["errcode"]) == (404, "M_NOT_FOUND")
        alias = http.post(f"{V3}/join/%23nothere:{node.server_name}", headers=headers)
        assert (alias.status_code, alias.json()["errcode"]) == (404, "M_NOT_FOUND")
        bad = http.post(f"{V3}/rooms/{room_id}/invite", headers=headers, json={"user_id": "nobody"})
        assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")
        version = http.post(f"{V3}/createRoom", headers=headers, json={"room_version": "1"})
        assert (version.status_code, version.json()["errcode"]) == (
            400,
            "M_UNSUPPORTED_ROOM_VERSION",
        )
        since = http.get(f"{V3}/sync", headers=headers, params={"since": "garbage"})
        assert (since.status_code, since.json()["errcode"]) == (400, "M_INVALID_PARAM")
        direction = http.get(f"{V3}/rooms/{room_id}/messages", headers=headers, params={"dir": "x"})
        assert direction.json()["errcode"] == "M_INVALID_PARAM"
        event = http.get(f"{V3}/rooms/{room_id}/event/$nothing", headers=headers)
        assert (event.status_code, event.json()["errcode"]) == (404, "M_NOT_FOUND")
        stranger = http.get(f"{V3}/rooms/!nothere:x/messages", headers=headers)
        assert (stranger.status_code, stranger.json()["errcode"]) == (403, "M_FORBIDDEN")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
# Keys the endpoints read, so the generated bodies reach their checks.
FIELDS = [
    "name",
    "topic",
    "invite",
    "preset",
    "visibility",
    "room_version",
    "initial_state",
    "creation_content",
    "power_level_content_override",
    "room_alias_name",
    "is_direct",
    "user_id",
    "reason",
    "typing",
    "timeout",
    "displayname",
    "avatar_url",
    "presence",
    "status_msg",
    "room_id",
    "devices",
    "auth",
    "new_password",
    "m.fully_read",
    "m.read",
    "thread_id",
    "search_term",
    "limit",
    "filter",
    "since",
    "server",
    "actions",
    "conditions",
    "pattern",
    "enabled",
    "visibility",
    "identifier",
    "password",
    "type",
    "username",
    "device_id",
    "display_name",
    "room",
    "event_fields",
    "membership",
    "body",
]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5) | json_values
ENDPOINTS = [
    ("POST", "/createRoom"),
    ("POST", "/rooms/{room}/invite"),
    ("POST", "/rooms/{room}/kick"),
    ("POST", "/rooms/{room}/ban"),
    ("POST", "/rooms/{room}/leave"),
    ("POST", "/join/{room}"),
    ("PUT", "/rooms/{room}/send/m.room.message/{txn}"),
    ("PUT", "/rooms/{room}/state/m.room.name"),
    ("PUT", "/rooms/{room}/state/m.room.power_levels"),
    ("PUT", "/rooms/{room}/state/m.room.canonical_alias"),
    ("PUT", "/rooms/{room}/state/m.room.member/{user}"),
    ("PUT", "/rooms/{room}/typing/{user}"),
    ("POST", "/rooms/{room}/read_markers"),
    ("POST", "/rooms/{room}/receipt/m.read/$x"),
    ("PUT", "/rooms/{room}/redact/$x/{txn}"),
    ("PUT", "/profile/{user}/displayname"),
    ("PUT", "/presence/{user}/status"),
    ("POST", "/user/{user}/filter"),
    ("PUT", "/user/{user}/account_data/x.y"),
    ("PUT", "/directory/room/%23a{txn}:{server}"),
    ("PUT", "/directory/list/room/{room}"),
    ("POST", "/publicRooms"),
    ("POST", "/user_directory/search"),
    ("PUT", "/pushrules/global/override/x{txn}"),
    ("PUT", "/pushrules/global/override/.m.rule.master/actions"),
    ("POST", "/delete_devices"),
    ("POST", "/account/password"),
    ("POST", "/login"),
    ("POST", "/register"),
    ("PUT", "/devices/XYZ"),
]
QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "since": st.text(max_size=10),
        "from": st.text(max_size=10),
        "limit": st.text(max_size=5),
        "filter": st.text(max_size=20),
        "dir": st.text(max_size=2),
        "timeout": st.sampled_from(["0", "-1", "x", "1"]),
        "full_state": st.text(max_size=5),
    },
)
GETS = [
    "/sync",
    "/rooms/{room}/messages",
    "/rooms/{room}/context/$x",
    "/rooms/{room}/members",
    "/rooms/{room}/state",
    "/publicRooms",
    "/user/{user}/filter/{txn}",
    "/profile/{user}",
    "/rooms/{room}/state/m.room.create",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies, txn=st.integers(0, 10**6))
def test_random_bodies_never_500(
    node: Node, user: tuple[str, str, str], endpoint, body, txn
) -> None:
    user_id, token, room_id = user
    method, path = endpoint
    path = path.format(room=room_id, user=user_id, txn=txn, server=node.server_name)
    with httpx.Client(base_url=node.url, timeout=30) as http:
        response = http.request(method, V3 + path, headers=auth(token), json=body)
    assert response.status_code < 500, (method, path, body, response.text)
    answer = response.json()
    # Success, an error with its errcode, or a UIA challenge (401 with flows).
    assert (
        response.status_code == 200
        or "errcode" in answer
        or (response.status_code == 401 and "flows" in answer)
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(GETS), query=QUERIES, txn=st.integers(0, 5))
def test_random_queries_never_500(node: Node, user: tuple[str, str, str], path, query, txn) -> None:
    user_id, token, room_id = user
    url = V3 + path.format(room=room_id, user=user_id, txn=txn)
    with httpx.Client(base_url=node.url, timeout=30) as http:
        response = http.get(url, headers=auth(token), params=query)
    assert response.status_code < 500, (url, query, response.text)
