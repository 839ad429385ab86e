"""/sync over HTTP: long-poll, since tokens, filters, full_state, sections."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.clientapi.conftest import Node, auth, register_raw

V3 = "/_matrix/client/v3"


def sync(http: httpx.Client, token: str, **params: object) -> dict:
    response = http.get(f"{V3}/sync", headers=auth(token), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def send(http: httpx.Client, token: str, room_id: str, body: str, txn: str) -> str:
    response = http.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/{txn}",
        headers=auth(token),
        json={"msgtype": "m.text", "body": body},
    )
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def two_users_in_room(http: httpx.Client) -> tuple[str, str, str, str, str]:
    alice, alice_token = register_raw(http)
    bob, bob_token = register_raw(http)
    room_id = http.post(
        f"{V3}/createRoom", headers=auth(alice_token), json={"invite": [bob], "name": "r"}
    ).json()["room_id"]
    assert http.post(f"{V3}/join/{room_id}", headers=auth(bob_token)).status_code == 200
    return alice, alice_token, bob, bob_token, room_id


def test_long_poll_wakes_promptly_and_honours_timeout(node: Node) -> None:
    with node.http() as http:
        _, alice_token, _, bob_token, room_id = two_users_in_room(http)
        since = sync(http, bob_token)["next_batch"]
        # Nothing happens: the request waits for its timeout, then answers empty.
        started = time.monotonic()
        quiet = sync(http, bob_token, since=since, timeout=700)
        waited = time.monotonic() - started
        assert 0.6 <= waited < 5, waited
        assert "rooms" not in quiet
        # A message while waiting wakes the poll at once.
        since = quiet["next_batch"]

        def later() -> None:
            time.sleep(0.3)
            with node.http() as other:
                send(other, alice_token, room_id, "wake up", "w1")

        thread = threading.Thread(target=later)
        started = time.monotonic()
        thread.start()
        woken = sync(http, bob_token, since=since, timeout=20000)
        waited = time.monotonic() - started
        thread.join()
        assert waited < 3, waited
        events = woken["rooms"]["join"][room_id]["timeline"]["events"]
        assert [e["content"]["body"] for e in events] == ["wake up"]
        # The sender's own device sees its transaction ID.
        own = sync(http, alice_token, since=since)
        mine = own["rooms"]["join"][room_id]["timeline"]["events"][-1]
        assert mine["unsigned"]["transaction_id"] == "w1"
        assert "transaction_id" not in events[0]["unsigned"]


def test_txn_ids_are_idempotent(node: Node) -> None:
    with node.http() as http:
        _, alice_token, _, _, room_id = two_users_in_room(http)
        first = send(http, alice_token, room_id, "once", "same")
        again = send(http, alice_token, room_id, "once", "same")
        assert first == again
        since_start = sync(
            http, alice_token, filter=json.dumps({"room": {"timeline": {"limit": 50}}})
        )
        bodies = [
            e["content"].get("body")
            for e in since_start["rooms"]["join"][room_id]["timeline"]["events"]
            if e["type"] == "m.room.message"
        ]
        assert bodies == ["once"]


def test_filters_stored_and_inline(node: Node) -> None:
    with node.http() as http:
        alice, alice_token, bob, bob_token, room_id = two_users_in_room(http)
        for i in range(5):
            send(http, alice_token, room_id, f"f{i}", f"f{i}")
        flt = {
            "room": {
                "timeline": {"limit": 2, "types": ["m.room.message"]},
                "state": {"types": ["m.room.name"]},
            }
        }
        created = http.post(f"{V3}/user/{bob}/filter", headers=auth(bob_token), json=flt)
        assert created.status_code == 200
        filter_id = created.json()["filter_id"]
        assert (
            http.get(f"{V3}/user/{bob}/filter/{filter_id}", headers=auth(bob_token)).json() == flt
        )
        forbidden = http.get(f"{V3}/user/{alice}/filter/{filter_id}", headers=auth(bob_token))
        assert forbidden.status_code == 403
        for value in (filter_id, json.dumps(flt)):
            response = sync(http, bob_token, filter=value)
            room = response["rooms"]["join"][room_id]
            assert [e["content"]["body"] for e in room["timeline"]["events"]] == ["f3", "f4"]
            assert room["timeline"]["limited"] is True
            assert {e["type"] for e in room["state"]["events"]} == {"m.room.name"}
        bad = http.post(
            f"{V3}/user/{bob}/filter",
            headers=auth(bob_token),
            json={"room": {"timeline": {"limit": "x"}}},
        )
        assert (bad.status_code, bad.json()["errcode"]) == (400, "M_BAD_JSON")
        unknown = http.get(f"{V3}/sync", headers=auth(bob_token), params={"filter": "9999"})
        assert unknown.status_code == 400


def test_initial_sync_state_and_full_state(node: Node) -> None:
    with node.http() as http:
        alice, alice_token, bob, bob_token, room_id = two_users_in_room(http)
        initial = sync(http, bob_token)
        room = initial["rooms"]["join"][room_id]
        state_types = {(e["type"], e["state_key"]) for e in room["state"]["events"]}
        timeline_types = {(e["type"], e.get("state_key")) for e in room["timeline"]["events"]}
        # State and timeline together hold the whole current state, without overlap.
        assert ("m.room.create", "") in state_types | timeline_types
        assert ("m.room.member", bob) in state_types | timeline_types
        assert not state_types & timeline_types
        assert room["summary"]["m.joined_member_count"] == 2
        assert room["summary"]["m.heroes"] == [alice]
        assert initial["account_data"]["events"][0]["type"] == "m.push_rules"
        since = initial["next_batch"]
        quiet = sync(http, bob_token, since=since)
        assert room_id not in quiet.get("rooms", {}).get("join", {})
        full = sync(http, bob_token, since=since, full_state="true")
        full_types = {
            (e["type"], e["state_key"]) for e in full["rooms"]["join"][room_id]["state"]["events"]
        }
        assert ("m.room.create", "") in full_types
        # An incremental sync carries the state change in the timeline.
        http.put(
            f"{V3}/rooms/{room_id}/state/m.room.name",
            headers=auth(alice_token),
            json={"name": "renamed"},
        )
        update = sync(http, bob_token, since=since)
        name_event = update["rooms"]["join"][room_id]["timeline"]["events"][-1]
        assert name_event["content"] == {"name": "renamed"}
        assert name_event["unsigned"]["prev_content"] == {"name": "r"}


def test_invite_and_leave_sections_and_lazy_members(node: Node) -> None:
    with node.http() as http:
        alice, alice_token = register_raw(http)
        carol, carol_token = register_raw(http)
        since = sync(http, carol_token)["next_batch"]
        room_id = http.post(
            f"{V3}/createRoom", headers=auth(alice_token), json={"name": "inv"}
        ).json()["room_id"]
        http.post(
            f"{V3}/rooms/{room_id}/invite", headers=auth(alice_token), json={"user_id": carol}
        )
        update = sync(http, carol_token, since=since)
        stripped = update["rooms"]["invite"][room_id]["invite_state"]["events"]
        assert {
            "type": "m.room.name",
            "state_key": "",
            "content": {"name": "inv"},
            "sender": alice,
        } in stripped
        assert any(
            e["type"] == "m.room.member" and e["content"]["membership"] == "invite"
            for e in stripped
        )
        http.post(f"{V3}/rooms/{room_id}/join", headers=auth(carol_token))
        lazy = sync(
            http,
            carol_token,
            filter=json.dumps(
                {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 1}}}
            ),
        )
        members = [
            e["state_key"]
            for e in lazy["rooms"]["join"][room_id]["state"]["events"]
            if e["type"] == "m.room.member"
        ]
        assert alice not in members  # alice sent nothing in the one-event timeline
        since = lazy["next_batch"]
        assert (
            http.post(f"{V3}/rooms/{room_id}/leave", headers=auth(carol_token)).status_code == 200
        )
        left = sync(http, carol_token, since=since)
        events = left["rooms"]["leave"][room_id]["timeline"]["events"]
        assert events[-1]["content"]["membership"] == "leave"
        assert room_id not in left["rooms"].get("join", {})
        with_leave = sync(http, carol_token, filter=json.dumps({"room": {"include_leave": True}}))
        assert room_id in with_leave["rooms"]["leave"]


def test_account_data_and_presence(node: Node) -> None:
    with node.http() as http:
        alice, alice_token, bob, bob_token, room_id = two_users_in_room(http)
        since = sync(http, alice_token, set_presence="offline")["next_batch"]
        assert (
            http.put(
                f"{V3}/user/{alice}/account_data/org.example",
                headers=auth(alice_token),
                json={"a": 1},
            ).status_code
            == 200
        )
        assert (
            http.put(
                f"{V3}/user/{alice}/rooms/{room_id}/account_data/org.example.room",
                headers=auth(alice_token),
                json={"b": 2},
            ).status_code
            == 200
        )
        assert http.get(
            f"{V3}/user/{alice}/account_data/org.example", headers=auth(alice_token)
        ).json() == {"a": 1}
        assert (
            http.get(f"{V3}/user/{alice}/account_data/none", headers=auth(alice_token)).status_code
            == 404
        )
        assert (
            http.get(
                f"{V3}/user/{bob}/account_data/org.example", headers=auth(alice_token)
            ).status_code
            == 403
        )
        update = sync(http, alice_token, since=since, set_presence="offline")
        assert {"type": "org.example", "content": {"a": 1}} in update["account_data"]["events"]
        room_data = update["rooms"]["join"][room_id]["account_data"]["events"]
        assert room_data == [{"type": "org.example.room", "content": {"b": 2}}]
        since = update["next_batch"]
        http.put(
            f"{V3}/presence/{bob}/status",
            headers=auth(bob_token),
            json={"presence": "unavailable", "status_msg": "away"},
        )
        presence = sync(http, alice_token, since=since, set_presence="offline")["presence"][
            "events"
        ]
        assert {"type": "m.presence", "sender": bob} | {
            "content": presence[0]["content"]
        } == presence[0]
        assert presence[0]["content"]["presence"] == "unavailable"
        assert presence[0]["content"]["status_msg"] == "away"
        status = http.get(f"{V3}/presence/{bob}/status", headers=auth(alice_token)).json()
        assert status["presence"] == "unavailable"


def test_startup_endpoints(node: Node) -> None:
    with node.http() as http:
        user, token = register_raw(http)
        headers = auth(token)
        rules = http.get(f"{V3}/pushrules/", headers=headers).json()
        override_ids = [r["rule_id"] for r in rules["global"]["override"]]
        assert override_ids[:4] == [
            ".m.rule.master",
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.member_event",
        ]
        assert [r["rule_id"] for r in rules["global"]["underride"]][-2:] == [
            ".m.rule.message",
            ".m.rule.encrypted",
        ]
        assert (
            http.put(
                f"{V3}/pushrules/global/override/.m.rule.master/enabled",
                headers=headers,
                json={"enabled": True},
            ).status_code
            == 200
        )
        assert http.get(
            f"{V3}/pushrules/global/override/.m.rule.master/enabled", headers=headers
        ).json() == {"enabled": True}
        assert (
            http.put(
                f"{V3}/pushrules/global/room/!r:x",
                headers=headers,
                json={"actions": ["dont_notify"]},
            ).status_code
            == 200
        )
        assert http.get(f"{V3}/pushrules/global/room/!r:x", headers=headers).json()["actions"] == [
            "dont_notify"
        ]
        assert (
            http.request(
                "DELETE", f"{V3}/pushrules/global/override/.m.rule.master", headers=headers
            ).status_code
            == 400
        )
        assert http.get(f"{V3}/voip/turnServer", headers=headers).json() == {}
        backup = http.get(f"{V3}/room_keys/version", headers=headers)
        assert (backup.status_code, backup.json()["errcode"]) == (404, "M_NOT_FOUND")
        assert http.get(f"{V3}/pushers", headers=headers).json() == {"pushers": []}
        assert http.get(f"{V3}/thirdparty/protocols", headers=headers).json() == {}
        http.put(
            f"{V3}/profile/{user}/displayname",
            headers=headers,
            json={"displayname": "Zed Searchable"},
        )
        found = http.post(
            f"{V3}/user_directory/search", headers=headers, json={"search_term": "zed sea"}
        ).json()
        assert {"user_id": user, "display_name": "Zed Searchable"} in found["results"]
        assert http.get(f"{V3}/profile/@nobody:{node.server_name}").status_code == 404


def test_merge_events_are_never_shown(node: Node) -> None:
    """org.matrix.dummy_event only merges forward extremities (federation/merging.py)."""
    import trio

    from p2pserver.rooms.events import DUMMY_EVENT_TYPE

    with node.http() as http:
        user_id, token = register_raw(http)
        room_id = http.post("/_matrix/client/v3/createRoom", json={}, headers=auth(token)).json()[
            "room_id"
        ]
        dummy = trio.from_thread.run(
            node.api.engine.send_event,
            room_id,
            user_id,
            DUMMY_EVENT_TYPE,
            {},
            trio_token=node._token,
        )
        sent = http.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
            json={"msgtype": "m.text", "body": "after"},
            headers=auth(token),
        ).json()["event_id"]
        timeline = http.get("/_matrix/client/v3/sync", headers=auth(token)).json()["rooms"]["join"][
            room_id
        ]["timeline"]["events"]
        messages = http.get(
            f"/_matrix/client/v3/rooms/{room_id}/messages",
            params={"dir": "b", "limit": 50},
            headers=auth(token),
        ).json()["chunk"]
        for events in (timeline, messages):
            ids = [e["event_id"] for e in events]
            assert sent in ids and dummy not in ids
        assert (
            http.get(
                f"/_matrix/client/v3/rooms/{room_id}/event/{dummy}", headers=auth(token)
            ).status_code
            == 404
        )
