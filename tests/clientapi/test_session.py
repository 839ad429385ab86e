"""Session endpoints, driven by matrix-nio and by plain HTTP."""

from __future__ import annotations

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DevicesResponse,
    LoginError,
    LoginResponse,
    LogoutResponse,
    WhoamiResponse,
)

from tests.clientapi.conftest import (
    PASSWORD,
    Node,
    auth,
    new_client,
    register_raw,
    run_async,
    unique,
)


def test_versions_well_known_and_capabilities(node: Node) -> None:
    with node.http() as http:
        versions = http.get("/_matrix/client/versions")
        assert versions.status_code == 200
        assert "v1.1" in versions.json()["versions"]
        assert "r0.6.1" in versions.json()["versions"]
        assert versions.headers["access-control-allow-origin"] == "*"
        well_known = http.get("/.well-known/matrix/client").json()
        assert well_known["m.homeserver"]["base_url"].startswith("http://127.0.0.1:")
        _, token = register_raw(http)
        caps = http.get("/_matrix/client/v3/capabilities", headers=auth(token)).json()
        versions_cap = caps["capabilities"]["m.room_versions"]
        assert versions_cap["default"] == "12"
        assert versions_cap["available"] == {"10": "stable", "11": "stable", "12": "stable"}


def test_cors_preflight_on_any_path(node: Node) -> None:
    with node.http() as http:
        response = http.options("/_matrix/client/v3/rooms/!x:y/send/m.room.message/1")
        assert response.status_code == 200
        assert "Authorization" in response.headers["access-control-allow-headers"]
        assert "PUT" in response.headers["access-control-allow-methods"]


@run_async
async def test_register_login_whoami_logout(node: Node) -> None:
    client = await new_client(node, "alice")
    try:
        whoami = await client.whoami()
        assert isinstance(whoami, WhoamiResponse)
        assert whoami.user_id == client.user_id
        assert whoami.device_id == client.device_id

        second = AsyncClient(
            node.url, client.user_id, config=AsyncClientConfig(encryption_enabled=False)
        )
        login = await second.login(PASSWORD, device_name="laptop")
        assert isinstance(login, LoginResponse)
        assert login.device_id != client.device_id
        devices = await second.devices()
        assert isinstance(devices, DevicesResponse)
        assert {d.id for d in devices.devices} == {client.device_id, login.device_id}
        assert {d.display_name for d in devices.devices} == {"test device", "laptop"}

        bad = AsyncClient(
            node.url, client.user_id, config=AsyncClientConfig(encryption_enabled=False)
        )
        wrong = await bad.login("not the password")
        assert isinstance(wrong, LoginError)
        assert wrong.status_code == "M_FORBIDDEN"
        await bad.close()

        token = second.access_token
        assert isinstance(await second.logout(), LogoutResponse)
        await second.close()
        with node.http() as http:
            gone = http.get("/_matrix/client/v3/account/whoami", headers=auth(token))
            assert (gone.status_code, gone.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        # The first device still works; its device list lost the logged-out one.
        devices = await client.devices()
        assert isinstance(devices, DevicesResponse)
        assert [d.id for d in devices.devices] == [client.device_id]
    finally:
        await client.close()


def test_login_by_localpart_legacy_user_and_device_reuse(node: Node) -> None:
    with node.http() as http:
        name = unique("bob")
        user_id, _ = register_raw(http, name)
        legacy = http.post(
            "/_matrix/client/r0/login",
            json={
                "type": "m.login.password",
                "user": name,
                "password": PASSWORD,
                "device_id": "PHONE",
            },
        )
        assert legacy.status_code == 200, legacy.text
        assert legacy.json()["user_id"] == user_id
        assert legacy.json()["device_id"] == "PHONE"
        old_token = legacy.json()["access_token"]
        again = http.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": PASSWORD,
                "device_id": "PHONE",
            },
        )
        assert again.status_code == 200
        # One token per device: the new login replaced the old token.
        assert (
            http.get("/_matrix/client/v3/account/whoami", headers=auth(old_token)).json()["errcode"]
            == "M_UNKNOWN_TOKEN"
        )
        new_token = again.json()["access_token"]
        assert (
            http.get("/_matrix/client/v3/account/whoami", headers=auth(new_token)).status_code
            == 200
        )
        flows = http.get("/_matrix/client/v3/login").json()["flows"]
        assert {"type": "m.login.password"} in flows


def test_register_uia_flow_username_rules_and_availability(node: Node) -> None:
    with node.http() as http:
        name = unique("carol")
        first = http.post(
            "/_matrix/client/v3/register", json={"username": name, "password": PASSWORD}
        )
        assert first.status_code == 401
        body = first.json()
        assert body["flows"] == [{"stages": ["m.login.dummy"]}]
        session = body["session"]
        done = http.post(
            "/_matrix/client/v3/register",
            json={
                "username": name,
                "password": PASSWORD,
                "auth": {"type": "m.login.dummy", "session": session},
            },
        )
        assert done.status_code == 200, done.text
        taken = http.post(
            "/_matrix/client/v3/register", json={"username": name, "password": PASSWORD}
        )
        assert (taken.status_code, taken.json()["errcode"]) == (400, "M_USER_IN_USE")
        available = http.get("/_matrix/client/v3/register/available", params={"username": name})
        assert available.json()["errcode"] == "M_USER_IN_USE"
        free = http.get(
            "/_matrix/client/v3/register/available", params={"username": unique("free")}
        )
        assert free.json() == {"available": True}
        for bad in ("Has Space", "_reserved", "a:b", "é"):
            response = http.post(
                "/_matrix/client/v3/register", json={"username": bad, "password": "x"}
            )
            assert response.json()["errcode"] == "M_INVALID_USERNAME", bad
        guest = http.post("/_matrix/client/v3/register?kind=guest", json={})
        assert (guest.status_code, guest.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")


def test_registration_closed() -> None:
    closed = Node(registration_open=False).start()
    try:
        with closed.http() as http:
            response = http.post(
                "/_matrix/client/v3/register",
                json={"username": "x", "password": "y", "auth": {"type": "m.login.dummy"}},
            )
            assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    finally:
        closed.stop()


def test_password_change_with_uia_logs_out_other_devices(node: Node) -> None:
    with node.http() as http:
        name = unique("dave")
        user_id, token = register_raw(http, name)
        other = http.post(
            "/_matrix/client/v3/login",
            json={"type": "m.login.password", "user": name, "password": PASSWORD},
        ).json()["access_token"]
        challenge = http.post(
            "/_matrix/client/v3/account/password",
            headers=auth(token),
            json={"new_password": "new pw"},
        )
        assert challenge.status_code == 401
        session = challenge.json()["session"]
        assert challenge.json()["flows"] == [{"stages": ["m.login.password"]}]
        wrong = http.post(
            "/_matrix/client/v3/account/password",
            headers=auth(token),
            json={
                "new_password": "new pw",
                "auth": {
                    "type": "m.login.password",
                    "session": session,
                    "identifier": {"type": "m.id.user", "user": user_id},
                    "password": "wrong",
                },
            },
        )
        assert (wrong.status_code, wrong.json()["errcode"]) == (401, "M_FORBIDDEN")
        ok = http.post(
            "/_matrix/client/v3/account/password",
            headers=auth(token),
            json={
                "new_password": "new pw",
                "auth": {
                    "type": "m.login.password",
                    "session": session,
                    "identifier": {"type": "m.id.user", "user": user_id},
                    "password": PASSWORD,
                },
            },
        )
        assert ok.status_code == 200, ok.text
        assert http.get("/_matrix/client/v3/account/whoami", headers=auth(token)).status_code == 200
        assert http.get("/_matrix/client/v3/account/whoami", headers=auth(other)).status_code == 401
        login = http.post(
            "/_matrix/client/v3/login",
            json={"type": "m.login.password", "user": name, "password": "new pw"},
        )
        assert login.status_code == 200


def test_devices_get_update_delete(node: Node) -> None:
    with node.http() as http:
        user_id, token = register_raw(http)
        device_id = http.get("/_matrix/client/v3/account/whoami", headers=auth(token)).json()[
            "device_id"
        ]
        assert (
            http.put(
                f"/_matrix/client/v3/devices/{device_id}",
                headers=auth(token),
                json={"display_name": "renamed"},
            ).status_code
            == 200
        )
        device = http.get(f"/_matrix/client/v3/devices/{device_id}", headers=auth(token)).json()
        assert device["display_name"] == "renamed"
        missing = http.get("/_matrix/client/v3/devices/NOPE", headers=auth(token))
        assert (missing.status_code, missing.json()["errcode"]) == (404, "M_NOT_FOUND")
        challenge = http.request(
            "DELETE", f"/_matrix/client/v3/devices/{device_id}", headers=auth(token)
        )
        assert challenge.status_code == 401
        deleted = http.request(
            "DELETE",
            f"/_matrix/client/v3/devices/{device_id}",
            headers=auth(token),
            json={
                "auth": {
                    "type": "m.login.password",
                    "session": challenge.json()["session"],
                    "user": user_id,
                    "password": PASSWORD,
                }
            },
        )
        assert deleted.status_code == 200, deleted.text
        assert http.get("/_matrix/client/v3/account/whoami", headers=auth(token)).status_code == 401


def test_logout_all(node: Node) -> None:
    with node.http() as http:
        name = unique("erin")
        _, token = register_raw(http, name)
        other = http.post(
            "/_matrix/client/v3/login",
            json={"type": "m.login.password", "user": name, "password": PASSWORD},
        ).json()["access_token"]
        assert http.post("/_matrix/client/v3/logout/all", headers=auth(token)).status_code == 200
        for t in (token, other):
            assert (
                http.get("/_matrix/client/v3/account/whoami", headers=auth(t)).json()["errcode"]
                == "M_UNKNOWN_TOKEN"
            )


def test_a_registration_cut_short_leaves_no_account_behind() -> None:
    # A crash between creating the account and its first login (here: the
    # login raises) must not leave the name taken with no device to use it.
    fresh = Node().start()
    try:
        add_device = fresh.api.accounts.add_device

        def crash(*args: object, **kwargs: object) -> None:
            raise RuntimeError("the node died here")

        fresh.api.accounts.add_device = crash  # type: ignore[method-assign]
        body = {"username": "dora", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        with fresh.http() as http:
            assert http.post("/_matrix/client/v3/register", json=body).status_code == 500
            fresh.api.accounts.add_device = add_device  # type: ignore[method-assign]
            again = http.post("/_matrix/client/v3/register", json=body)
            assert again.status_code == 200, again.text
            assert again.json()["user_id"].startswith("@dora:")
    finally:
        fresh.stop()
