"""The server half: shapes, limits, errcodes, identity, idempotency; the node keeps serving."""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager

import pytest
import trio

from p2pserver.federation.membership import fill_template
from p2pserver.rooms.auth import select_auth_event_ids
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.receipt import hex_server_keys
from p2pserver.rooms.signing import SigningKey, verify_event_signature
from p2pserver.storage.invites import InviteStates
from p2pserver.transport.network import RemoteError

from .conftest import Node, cluster, run, shared_room, start_all, txn, wait_until


@asynccontextmanager
async def setup(preset: str = "public_chat"):
    """a and b share a room; mallory is a bare network node (no federation) that a can reach."""
    hub, (a, b) = cluster(2)
    mallory_key = SigningKey.generate()
    mallory = hub.network(mallory_key.server_name)
    mallory.add_peer_address(a.server_name, ["/memory/a"])
    async with trio.open_nursery() as nursery, mallory.running():
        await start_all(nursery, [a, b])
        room_id = await shared_room([a, b], preset=preset)
        yield a, b, mallory, mallory_key, room_id
        nursery.cancel_scope.cancel()


def message(node: Node, key: SigningKey, sender: str, room_id: str, body: str = "m") -> dict:
    """A message by ``sender`` signed with ``key``, on top of ``node``'s view of the room."""
    store = node.store
    version = store.room_version(room_id)
    heads = store.forward_extremities(room_id)
    auth = select_auth_event_ids(
        version, "m.room.message", sender, None, {}, store.current_state(room_id)
    )
    depth = max(store.event_meta(h).depth for h in heads) + 1
    event = build_event(
        version,
        signing_key=key,
        sender=sender,
        type="m.room.message",
        content={"body": body},
        room_id=room_id,
        prev_events=heads,
        auth_events=auth,
        depth=depth,
        origin_server_ts=1,
    )
    return event.get_pdu_json()


async def refused(net, destination, method, body, errcode):
    with pytest.raises(RemoteError) as info:
        await net.request(destination, method, body, timeout=5)
    assert info.value.errcode == errcode, info.value
    return info.value


def test_malformed_requests_get_the_spec_errcodes():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            me, dest = mallory.server_name, a.server_name
            await refused(mallory, dest, "no_such_method", {}, "M_UNRECOGNIZED")
            await refused(
                mallory, dest, "send_transaction", {"origin": me, "pdus": []}, "M_MISSING_PARAM"
            )
            await refused(
                mallory, dest, "send_transaction", {**txn(me), "pdus": {}}, "M_INVALID_PARAM"
            )
            await refused(mallory, dest, "event", {"event_id": "not-an-id"}, "M_INVALID_PARAM")
            await refused(mallory, dest, "get_missing_events", {"room_id": 5}, "M_INVALID_PARAM")
            await refused(mallory, dest, "room_heads", {"rooms": []}, "M_INVALID_PARAM")
            no_ts = {k: v for k, v in txn(me).items() if k != "origin_server_ts"}
            await refused(mallory, dest, "send_transaction", no_ts, "M_MISSING_PARAM")
            backfill = {"room_id": room_id, "v": [a.store.forward_extremities(room_id)[0]]}
            await refused(b.net, dest, "backfill", backfill, "M_MISSING_PARAM")
            await refused(b.net, dest, "backfill", {**backfill, "limit": -1}, "M_INVALID_PARAM")
            await refused(mallory, dest, "event", {"event_id": "$" + "A" * 43}, "M_NOT_FOUND")
            # Still serving its members.
            heads = await b.net.request(dest, "room_heads", {"rooms": {room_id: []}}, timeout=5)
            assert heads["rooms"][room_id] == a.store.forward_extremities(room_id)

    run(main)


def test_transaction_limits_are_50_pdus_and_100_edus():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            me, dest = mallory.server_name, a.server_name
            junk = {"type": "m.room.message"}
            await refused(mallory, dest, "send_transaction", txn(me, [junk] * 51), "M_TOO_LARGE")
            edu = {"edu_type": "m.x", "content": {}}
            await refused(
                mallory, dest, "send_transaction", txn(me, edus=[edu] * 101), "M_TOO_LARGE"
            )
            answer = await mallory.request(
                dest, "send_transaction", txn(me, [junk] * 50, [edu] * 100, "t2"), timeout=5
            )
            assert answer == {"pdus": {}}  # nothing there had an event ID

    run(main)


def test_a_peer_may_not_speak_for_another_server():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            dest = a.server_name
            # A transaction claiming to come from b.
            await refused(mallory, dest, "send_transaction", txn(b.server_name), "M_FORBIDDEN")
            # Any request naming another origin.
            await refused(
                mallory, dest, "room_heads", {"origin": b.server_name, "rooms": {}}, "M_FORBIDDEN"
            )
            # Joins and leaves for users of another server.
            body = {"room_id": room_id, "user_id": b.user("u1"), "ver": ["11", "12"]}
            await refused(mallory, dest, "make_join", body, "M_FORBIDDEN")
            await refused(mallory, dest, "make_leave", body, "M_FORBIDDEN")
            # An EDU speaking for b's user is dropped; one for our own user is handled.
            seen = []

            async def on_typing(origin, content):
                seen.append((origin, content["user_id"]))

            a.fed.on_edu("m.typing", on_typing)
            typing = {"room_id": room_id, "typing": True}
            edus = [
                {"edu_type": "m.typing", "content": {**typing, "user_id": b.user("u1")}},
                {
                    "edu_type": "m.typing",
                    "content": {**typing, "user_id": f"@m:{mallory.server_name}"},
                },
            ]
            await mallory.request(
                dest, "send_transaction", txn(mallory.server_name, edus=edus), timeout=5
            )
            assert seen == [(mallory.server_name, f"@m:{mallory.server_name}")]

    run(main)


def test_forged_and_unauthorised_pdus_are_refused_and_relayed_ones_checked_by_signature():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            dest = a.server_name
            # Relayed: b's user's message, signed by b, pushed by mallory. Accepted.
            relayed = message(a, b.key, b.user("u1"), room_id, "relayed")
            # Forged: claims a's user, but mallory signed it.
            forged = message(a, key, a.user("u0"), room_id, "forged")
            forged["signatures"] = {a.server_name: forged["signatures"][mallory.server_name]}
            # Unauthorised: mallory's own user is not in the room.
            stranger = message(a, key, f"@m:{mallory.server_name}", room_id, "let me in")
            answer = await mallory.request(
                dest,
                "send_transaction",
                txn(mallory.server_name, [relayed, forged, stranger]),
                timeout=5,
            )
            results = answer["pdus"]
            assert len(results) == 3
            ok = [e for e, r in results.items() if r == {}]
            bad = {e: r["error"] for e, r in results.items() if r != {}}
            assert len(ok) == 1 and a.has(ok[0])
            assert any("signature" in reason for reason in bad.values())
            assert len(bad) == 2 and not any(a.has(e) for e in bad)
            # And a still serves b.
            assert await b.net.request(dest, "event", {"event_id": ok[0]}, timeout=5)

    run(main)


def test_transactions_are_idempotent_by_origin_and_txn_id():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            calls = []
            original = a.engine.receive_transaction

            async def counting(origin, pdus):
                calls.append(len(pdus))
                await trio.sleep(0.5)  # slow, so the repeats overlap it
                return await original(origin, pdus)

            a.engine.receive_transaction = counting
            pdu = message(a, b.key, b.user("u1"), room_id, "once")
            body = txn(b.server_name, [pdu], txn_id="same")
            answers = []

            async def send():
                answers.append(
                    await b.net.request(a.server_name, "send_transaction", body, timeout=10)
                )

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(send)
            answers.append(await b.net.request(a.server_name, "send_transaction", body, timeout=10))
            assert len(calls) == 1
            assert all(x == answers[0] for x in answers) and list(answers[0]["pdus"].values()) == [
                {}
            ]
            # Another transaction ID is processed again (and the PDU found known).
            await b.net.request(
                a.server_name, "send_transaction", {**body, "txn_id": "other"}, timeout=10
            )
            assert len(calls) == 2

    run(main)


def test_make_join_and_send_join_checks():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            dest, me = a.server_name, mallory.server_name
            user = f"@m:{me}"
            await refused(
                mallory,
                dest,
                "make_join",
                {"room_id": room_id, "user_id": user},
                "M_INCOMPATIBLE_ROOM_VERSION",
            )
            await refused(
                mallory,
                dest,
                "make_join",
                {"room_id": "!nope:x", "user_id": user, "ver": ["12"]},
                "M_NOT_FOUND",
            )
            answer = await mallory.request(
                dest,
                "make_join",
                {"room_id": room_id, "user_id": user, "ver": ["10", "11", "12"]},
                timeout=5,
            )
            template = answer["event"]
            assert template["sender"] == template["state_key"] == user
            assert template["content"] == {"membership": "join"}
            assert set(template["prev_events"]) == set(a.store.forward_extremities(room_id))
            version = a.store.room_version(room_id)
            event = fill_template(template, version, key, server_name=me)
            pdu = event.get_pdu_json()
            # The wrong event ID, then another server's user: refused.
            wrong = {"room_id": room_id, "event_id": "$" + "B" * 43, "event": pdu}
            await refused(mallory, dest, "send_join", wrong, "M_BAD_JSON")
            foreign = fill_template(
                {**template, "sender": b.user("x"), "state_key": b.user("x")},
                version,
                key,
                server_name=me,
            )
            body = {
                "room_id": room_id,
                "event_id": foreign.event_id,
                "event": foreign.get_pdu_json(),
            }
            await refused(mallory, dest, "send_join", body, "M_FORBIDDEN")
            # The real one: accepted, with the state before it and the auth chain.
            body = {"room_id": room_id, "event_id": event.event_id, "event": pdu}
            answer = await mallory.request(dest, "send_join", body, timeout=10)
            state_types = {(e["type"], e.get("state_key")) for e in answer["state"]}
            assert ("m.room.create", "") in state_types and ("m.room.join_rules", "") in state_types
            assert answer["members_omitted"] is False
            assert me in answer["servers_in_room"]
            assert a.has(event.event_id)
            await wait_until(lambda: b.has(event.event_id), timeout=10)  # a relays it

    run(main)


def test_make_join_refuses_a_user_the_rules_keep_out():
    async def main():
        async with setup(preset="private_chat") as (a, b, mallory, key, room_id):
            body = {"room_id": room_id, "user_id": f"@m:{mallory.server_name}", "ver": ["12"]}
            await refused(mallory, a.server_name, "make_join", body, "M_FORBIDDEN")

    run(main)


def test_invite_handshake_checks_and_countersigns():
    async def main():
        async with setup(preset="private_chat") as (a, b, mallory, key, room_id):
            version = b.store.room_version(room_id)
            state = b.store.current_state(room_id)
            inviter, target = b.user("u1"), a.user("newbie")

            def invite_for(target_user, signing_key=b.key):
                content = {"membership": "invite"}
                auth = select_auth_event_ids(
                    version, "m.room.member", inviter, target_user, content, state
                )
                heads = b.store.forward_extremities(room_id)
                return build_event(
                    version,
                    signing_key=signing_key,
                    server_name=b.server_name,
                    sender=inviter,
                    type="m.room.member",
                    content=content,
                    room_id=room_id,
                    prev_events=heads,
                    auth_events=auth,
                    state_key=target_user,
                    depth=1 + max(b.store.event_meta(h).depth for h in heads),
                    origin_server_ts=1,
                )

            name = {"type": "m.room.name", "state_key": "", "content": {"name": "n"}}
            name["sender"] = inviter

            def body(event, room_version=version.identifier, room_state=(name,)):
                return {
                    "room_id": room_id,
                    "event_id": event.event_id,
                    "room_version": room_version,
                    "event": event.get_pdu_json(),
                    "invite_room_state": list(room_state),
                }

            event = invite_for(target)
            await refused(
                b.net, a.server_name, "invite", body(event, "1"), "M_INCOMPATIBLE_ROOM_VERSION"
            )
            elsewhere = invite_for(f"@x:{mallory.server_name}")
            await refused(b.net, a.server_name, "invite", body(elsewhere), "M_FORBIDDEN")
            # mallory may not deliver b's invite handshake.
            await refused(mallory, a.server_name, "invite", body(event), "M_FORBIDDEN")
            tampered = copy.deepcopy(body(event))
            tampered["event"]["signatures"][b.server_name] = {
                k: "A" * 86 for k in tampered["event"]["signatures"][b.server_name]
            }
            await refused(b.net, a.server_name, "invite", tampered, "M_FORBIDDEN")
            # invite_room_state is untrusted: stripped events only, bounded.
            for bad in ([{**name, "content": "n"}], [{**name, "state_key": None}], ["x"]):
                await refused(
                    b.net, a.server_name, "invite", body(event, room_state=bad), "M_INVALID_PARAM"
                )
            big = [{**name, "content": {"name": "n" * 40000}}] * 2
            await refused(
                b.net, a.server_name, "invite", body(event, room_state=big), "M_TOO_LARGE"
            )
            many = [name] * 51
            await refused(
                b.net, a.server_name, "invite", body(event, room_state=many), "M_TOO_LARGE"
            )
            assert InviteStates(a.store.db).get(event.event_id) is None
            answer = await b.net.request(a.server_name, "invite", body(event), timeout=5)
            # Kept with the invite for the invitee's client.
            assert InviteStates(a.store.db).get(event.event_id) == [name]
            signed = answer["event"]
            for server in (a.server_name, b.server_name):
                verify_event_signature(signed, server, version, hex_server_keys(server))
            await wait_until(lambda: a.has(event.event_id), timeout=10)

    run(main)


def test_reads_are_for_servers_in_the_room():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            dest = a.server_name
            head = a.store.forward_extremities(room_id)[0]
            gme = {"room_id": room_id, "earliest_events": [], "latest_events": [head], "limit": 5}
            await refused(mallory, dest, "get_missing_events", gme, "M_FORBIDDEN")
            await refused(
                mallory, dest, "state_ids", {"room_id": room_id, "event_id": head}, "M_FORBIDDEN"
            )
            await refused(
                mallory,
                dest,
                "backfill",
                {"room_id": room_id, "v": [head], "limit": 5},
                "M_FORBIDDEN",
            )
            # Heads of a room it is not in are not revealed.
            answer = await mallory.request(dest, "room_heads", {"rooms": {room_id: []}}, timeout=5)
            assert answer == {"rooms": {}}
            # Members get answers in the spec's shapes.
            events = (await b.net.request(dest, "get_missing_events", gme, timeout=5))["events"]
            assert 0 < len(events) <= 5
            backfill = await b.net.request(
                dest, "backfill", {"room_id": room_id, "v": [head], "limit": 3}, timeout=5
            )
            assert backfill["origin"] == dest and len(backfill["pdus"]) == 3
            state = await b.net.request(
                dest, "state", {"room_id": room_id, "event_id": head}, timeout=5
            )
            ids = await b.net.request(
                dest, "state_ids", {"room_id": room_id, "event_id": head}, timeout=5
            )
            assert len(state["pdus"]) == len(ids["pdu_ids"]) > 0
            auth = await b.net.request(
                dest, "event_auth", {"room_id": room_id, "event_id": head}, timeout=5
            )
            assert auth["auth_chain"]

    run(main)


def test_queries_route_to_the_hook_for_local_users_only():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            dest = a.server_name
            await a.engine.create_room(
                a.user("alice"), {}, creator_profile={"displayname": "Alice"}
            )
            profile = await mallory.request(
                dest, "query_profile", {"user_id": a.user("alice")}, timeout=5
            )
            assert profile == {"displayname": "Alice"}
            name = await mallory.request(
                dest,
                "query_profile",
                {"user_id": a.user("alice"), "field": "displayname"},
                timeout=5,
            )
            assert name == {"displayname": "Alice"}
            await refused(
                mallory, dest, "query_profile", {"user_id": a.user("nobody")}, "M_NOT_FOUND"
            )
            await refused(mallory, dest, "query_profile", {"user_id": b.user("u1")}, "M_NOT_FOUND")
            await refused(
                mallory,
                dest,
                "query_profile",
                {"user_id": a.user("alice"), "field": "x"},
                "M_INVALID_PARAM",
            )
            devices = await mallory.request(
                dest, "user_devices", {"user_id": a.user("alice")}, timeout=5
            )
            assert devices == {"user_id": a.user("alice"), "stream_id": 0, "devices": []}
            keys = await mallory.request(
                dest,
                "keys_query",
                {"device_keys": {a.user("alice"): [], b.user("u1"): []}},
                timeout=5,
            )
            assert keys == {"device_keys": {a.user("alice"): {}}}
            claim = await mallory.request(
                dest,
                "keys_claim",
                {"one_time_keys": {a.user("alice"): {"D": "signed_curve25519"}}},
                timeout=5,
            )
            assert claim == {"one_time_keys": {}}
            await refused(
                mallory, dest, "keys_claim", {"one_time_keys": {"x": 1}}, "M_INVALID_PARAM"
            )

    run(main)


def test_rejecting_an_invite_by_make_leave_and_send_leave():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            # c's network runs but not its federation: it never holds the room.
            c = Node(a.hub)
            c.net.add_peer_address(a.server_name, ["/memory/a"])
            a.net.add_peer_address(c.server_name, ["/memory/c"])
            async with c.net.running():
                invite = await a.fed.invite(room_id, a.user("u0"), c.user("dan"))
                leave = await c.fed.leave(room_id, c.user("dan"), via=[a.server_name])
                await wait_until(lambda: a.has(leave), timeout=10)
                assert a.store.current_membership(room_id, c.user("dan")) == "leave"
                assert a.store.event_meta(invite) is not None
                await wait_until(lambda: b.has(leave), timeout=10)  # a relays it for c
                # A leave for someone else's user is refused.
                body = {"room_id": room_id, "user_id": a.user("u0")}
                await refused(c.net, a.server_name, "make_leave", body, "M_FORBIDDEN")

    run(main)


def test_directory_query_is_for_the_answering_servers_own_aliases():
    async def main():
        async with setup() as (a, b, mallory, key, room_id):
            dest = a.server_name
            await refused(b.net, dest, "query_directory", {}, "M_MISSING_PARAM")
            for bad in ("lobby", f"lobby:{dest}", 7):
                await refused(
                    b.net, dest, "query_directory", {"room_alias": bad}, "M_INVALID_PARAM"
                )
            # An alias of another server is that server's to answer.
            other = {"room_alias": f"#lobby:{b.server_name}"}
            await refused(b.net, dest, "query_directory", other, "M_NOT_FOUND")
            # The room store alone knows no aliases.
            own = {"room_alias": f"#lobby:{dest}"}
            await refused(b.net, dest, "query_directory", own, "M_NOT_FOUND")

    run(main)
