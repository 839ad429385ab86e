"""The E2EE endpoints on one node: keys, cross-signing, to-device, device lists, backup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserver.clientapi.todevice import FRAME_LEVELS_ABOVE_MESSAGE, MAX_PER_SYNC
from p2pserver.transport.framing import MAX_DEPTH, Request, encode_request

from .conftest import Account, ApiFailure, E2eeNode, cluster, run, shared_room
from .signing import Signer, cross_signing_key, device_keys

SIGNED = "signed_curve25519"


async def one_node(tmp_path: Path, nursery: trio.Nursery) -> E2eeNode:
    _, (node,) = cluster(tmp_path, 1)
    await node.start(nursery)
    return node


async def errcode(account: Account, method: str, path: str, body: Any, status: int) -> str:
    with pytest.raises(ApiFailure) as info:
        await account.call(method, path, body)
    assert info.value.status == status, info.value.body
    return str(info.value.body["errcode"])


def nested_object(depth: int) -> dict[str, Any]:
    """An object ``depth`` containers deep, itself included."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def to(user_id: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"messages": {user_id: {"*": content}}}


def test_upload_query_claim_and_sync_counts(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await one_node(tmp_path, nursery)
            alice, bob = await node.register("alice"), await node.register("bob")
            signer = Signer()
            keys = device_keys(alice.user_id, alice.device_id, signer)
            otks = {
                f"{SIGNED}:K{i}": signer.sign({"key": f"k{i}"}, alice.user_id) for i in range(3)
            }
            answer = await alice.call(
                "POST",
                "/keys/upload",
                {
                    "device_keys": keys,
                    "one_time_keys": otks,
                    "fallback_keys": {f"{SIGNED}:F": {"key": "f", "fallback": True}},
                },
            )
            assert answer == {"one_time_key_counts": {SIGNED: 3}}
            empty = await bob.call("POST", "/keys/upload", {})
            assert empty == {"one_time_key_counts": {SIGNED: 0}}
            # Refusals: someone else's device, a changed one-time key, two fallback keys.
            other = device_keys(bob.user_id, alice.device_id, signer)
            path = "/keys/upload"
            assert (
                await errcode(alice, "POST", path, {"device_keys": other}, 400) == "M_INVALID_PARAM"
            )
            changed = {f"{SIGNED}:K0": {"key": "different"}}
            assert (
                await errcode(alice, "POST", path, {"one_time_keys": changed}, 400)
                == "M_INVALID_PARAM"
            )
            two = {f"{SIGNED}:F1": {"key": "a"}, f"{SIGNED}:F2": {"key": "b"}}
            assert (
                await errcode(alice, "POST", path, {"fallback_keys": two}, 400) == "M_INVALID_PARAM"
            )
            assert (
                await errcode(alice, "POST", path, {"one_time_keys": {"nocolon": "k"}}, 400)
                == "M_BAD_JSON"
            )

            queried = await bob.call(
                "POST", "/keys/query", {"device_keys": {alice.user_id: [], "@nobody:x": []}}
            )
            device = queried["device_keys"][alice.user_id][alice.device_id]
            assert device["keys"] == keys["keys"] and device["signatures"] == keys["signatures"]
            assert queried["failures"] == {
                "x": {"status": 503, "message": "x could not be reached"}
            }
            only = await bob.call(
                "POST", "/keys/query", {"device_keys": {alice.user_id: ["OTHER"]}}
            )
            assert only["device_keys"] == {alice.user_id: {}}

            claim = {"one_time_keys": {alice.user_id: {alice.device_id: SIGNED}}}
            names = []
            for _ in range(5):
                got = await bob.call("POST", "/keys/claim", claim)
                names += list(got["one_time_keys"][alice.user_id][alice.device_id])
            assert names == [f"{SIGNED}:K0", f"{SIGNED}:K1", f"{SIGNED}:K2"] + [f"{SIGNED}:F"] * 2
            sync = await alice.sync(initial=True)
            assert sync["device_one_time_keys_count"] == {SIGNED: 0}
            assert sync["device_unused_fallback_key_types"] == []
            await alice.call(
                "POST", "/keys/upload", {"fallback_keys": {f"{SIGNED}:G": {"key": "g"}}}
            )
            sync = await alice.sync()
            assert sync["device_unused_fallback_key_types"] == [SIGNED]
            nursery.cancel_scope.cancel()

    run(main)


def test_to_device_local_ack_limits_and_long_poll(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await one_node(tmp_path, nursery)
            alice, bob = await node.register("alice"), await node.register("bob")
            await bob.sync(initial=True)
            sent = MAX_PER_SYNC + 20
            for i in range(sent):
                body = {"messages": {bob.user_id: {"*": {"n": i}}}}
                await alice.call("PUT", f"/sendToDevice/m.test/txn{i}", body)
            first = await bob.sync()
            second = await bob.sync()
            numbers = [e["content"]["n"] for r in (first, second) for e in r["to_device"]["events"]]
            assert len(first["to_device"]["events"]) == MAX_PER_SYNC
            assert numbers == list(range(sent))
            assert node.api.e2ee.pending_to_device(bob.user_id, bob.device_id) == 20
            assert (await bob.sync())["to_device"]["events"] == []
            assert node.api.e2ee.pending_to_device(bob.user_id, bob.device_id) == 0

            # A long-polling sync returns when a message arrives.
            async def poll() -> dict[str, Any]:
                return await bob.sync(timeout=60_000)

            result: dict[str, Any] = {}

            async def poller() -> None:
                result.update(await poll())

            started = trio.current_time()
            async with trio.open_nursery() as inner:
                inner.start_soon(poller)
                await trio.sleep(5)
                body = {"messages": {bob.user_id: {bob.device_id: {"wake": True}}}}
                await alice.call("PUT", "/sendToDevice/m.test/wake", body)
            assert trio.current_time() - started < 10
            assert [e["content"] for e in result["to_device"]["events"]] == [{"wake": True}]
            # Messages to unknown devices and users go nowhere; bad bodies are refused.
            await alice.call(
                "PUT",
                "/sendToDevice/m.test/x",
                {"messages": {bob.user_id: {"NOPE": {}}, "@ghost:" + node.server_name: {"*": {}}}},
            )
            assert (await bob.sync())["to_device"]["events"] == []
            path = "/sendToDevice/m.test/y"
            assert await errcode(alice, "PUT", path, {}, 400) == "M_MISSING_PARAM"
            assert await errcode(alice, "PUT", path, {"messages": []}, 400) == "M_BAD_JSON"
            bad_user = {"messages": {"not a user": {"*": {}}}}
            assert await errcode(alice, "PUT", path, bad_user, 400) == "M_INVALID_PARAM"
            # As deep as a transaction frame carries it, and no deeper.
            remote = "@far:" + "ab" * 32
            deepest = nested_object(MAX_DEPTH - FRAME_LEVELS_ABOVE_MESSAGE)
            await alice.call("PUT", "/sendToDevice/m.test/deep", to(remote, deepest))
            (edu,) = [
                json.loads(r[0])
                for r in node.api.store.db.query(
                    "SELECT edu FROM outbound_queue WHERE destination = ?", ("ab" * 32,)
                )
            ]
            encode_request(
                Request(1, "send_transaction", {"origin": "x", "pdus": [], "edus": [edu]})
            )
            too_deep = to(remote, nested_object(MAX_DEPTH - FRAME_LEVELS_ABOVE_MESSAGE + 1))
            assert await errcode(alice, "PUT", path, too_deep, 400) == "M_BAD_JSON"
            nursery.cancel_scope.cancel()

    run(main)


def test_cross_signing_uia_and_signatures(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await one_node(tmp_path, nursery)
            alice = await node.register("alice", password="pw")
            bob = await node.register("bob")
            device_signer = Signer()
            await alice.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(alice.user_id, alice.device_id, device_signer)},
            )
            master, ssk, usk = Signer(), Signer(), Signer()
            keys = {
                "master_key": cross_signing_key(alice.user_id, "master", master),
                "self_signing_key": cross_signing_key(alice.user_id, "self_signing", ssk, master),
                "user_signing_key": cross_signing_key(alice.user_id, "user_signing", usk, master),
            }
            path = "/keys/device_signing/upload"
            unsigned = dict(
                keys, self_signing_key=cross_signing_key(alice.user_id, "self_signing", ssk)
            )
            assert await errcode(alice, "POST", path, unsigned, 400) == "M_INVALID_SIGNATURE"
            lone = {"self_signing_key": keys["self_signing_key"]}
            assert await errcode(alice, "POST", path, lone, 400) == "M_MISSING_PARAM"
            await alice.call("POST", path, keys)  # the first upload needs no UIA
            await alice.call("POST", path, keys)  # nor does the same again
            new_master = Signer()
            replacing = {"master_key": cross_signing_key(alice.user_id, "master", new_master)}
            with pytest.raises(ApiFailure) as info:
                await alice.call("POST", path, replacing)
            assert info.value.status == 401
            assert info.value.body["flows"] == [{"stages": ["m.login.password"]}]
            session = info.value.body["session"]
            auth = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": alice.user_id},
                "password": "pw",
                "session": session,
            }
            await alice.call("POST", path, replacing | {"auth": auth})
            await alice.call("POST", path, keys | {"auth": auth | {"session": None}})  # back again

            # Alice's self-signing key signs her device; her device signs her master key.
            own = device_keys(alice.user_id, alice.device_id, device_signer)
            signed_device = ssk.sign(own, alice.user_id)
            signed_master = device_signer.sign(
                cross_signing_key(alice.user_id, "master", master),
                alice.user_id,
                f"ed25519:{alice.device_id}",
            )
            forged = Signer().sign(
                device_keys(alice.user_id, alice.device_id, device_signer),
                alice.user_id,
                f"ed25519:{ssk.public}",
            )
            answer = await alice.call(
                "POST",
                "/keys/signatures/upload",
                {alice.user_id: {alice.device_id: signed_device, master.public: signed_master}},
            )
            assert answer == {"failures": {}}
            answer = await alice.call(
                "POST",
                "/keys/signatures/upload",
                {alice.user_id: {alice.device_id: forged, "NOKEY": own}},
            )
            assert (
                answer["failures"][alice.user_id][alice.device_id]["errcode"]
                == "M_INVALID_SIGNATURE"
            )
            assert answer["failures"][alice.user_id]["NOKEY"]["errcode"] == "M_NOT_FOUND"

            # Bob's master key, signed by Alice's user-signing key: only Alice sees that.
            bob_master = Signer()
            await bob.call(
                "POST",
                path,
                {"master_key": cross_signing_key(bob.user_id, "master", bob_master)},
            )
            signed_bob = usk.sign(
                cross_signing_key(bob.user_id, "master", bob_master), alice.user_id
            )
            answer = await alice.call(
                "POST", "/keys/signatures/upload", {bob.user_id: {bob_master.public: signed_bob}}
            )
            assert answer == {"failures": {}}

            query = {"device_keys": {alice.user_id: [], bob.user_id: []}}
            seen_by_alice = await alice.call("POST", "/keys/query", query)
            seen_by_bob = await bob.call("POST", "/keys/query", query)
            device = seen_by_bob["device_keys"][alice.user_id][alice.device_id]
            assert f"ed25519:{ssk.public}" in device["signatures"][alice.user_id]
            assert (
                f"ed25519:{alice.device_id}"
                in (seen_by_bob["master_keys"][alice.user_id]["signatures"][alice.user_id])
            )
            assert alice.user_id in seen_by_alice["user_signing_keys"]
            assert seen_by_bob["user_signing_keys"] == {}
            alice_view = seen_by_alice["master_keys"][bob.user_id].get("signatures", {})
            bob_view = seen_by_bob["master_keys"][bob.user_id].get("signatures", {})
            assert f"ed25519:{usk.public}" in alice_view.get(alice.user_id, {})
            assert alice.user_id not in bob_view
            nursery.cancel_scope.cancel()

    run(main)


def test_device_lists_in_sync_and_keys_changes(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await one_node(tmp_path, nursery)
            alice, bob, carol = [await node.register(n) for n in ("alice", "bob", "carol")]
            await alice.sync(initial=True)
            start = alice.since
            room_id = await shared_room(alice, [bob])
            joined = await alice.sync()
            assert bob.user_id in joined["device_lists"]["changed"]  # now shares an encrypted room
            await bob.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(bob.user_id, bob.device_id, Signer())},
            )
            await carol.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(carol.user_id, carol.device_id, Signer())},
            )
            after_upload = await alice.sync()
            assert after_upload["device_lists"] == {"changed": [bob.user_id], "left": []}
            changes = await alice.call("GET", f"/keys/changes?from={start}&to={alice.since}")
            assert changes == {"changed": [bob.user_id], "left": []}
            await bob.call("POST", f"/rooms/{room_id}/leave", {})
            left = await alice.sync()
            assert left["device_lists"] == {"changed": [], "left": [bob.user_id]}
            quiet = await alice.sync()
            assert quiet["device_lists"] == {"changed": [], "left": []}
            assert (
                await errcode(alice, "GET", "/keys/changes?from=s1_1_1", None, 400)
                == "M_MISSING_PARAM"
            )
            nursery.cancel_scope.cancel()

    run(main)


def test_room_keys_backup(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await one_node(tmp_path, nursery)
            alice = await node.register("alice")
            assert await errcode(alice, "GET", "/room_keys/version", None, 404) == "M_NOT_FOUND"
            algorithm = "m.megolm_backup.v1.curve25519-aes-sha2"
            v1 = (
                await alice.call(
                    "POST",
                    "/room_keys/version",
                    {"algorithm": algorithm, "auth_data": {"public_key": "a"}},
                )
            )["version"]
            v2 = (
                await alice.call(
                    "POST",
                    "/room_keys/version",
                    {"algorithm": algorithm, "auth_data": {"public_key": "b"}},
                )
            )["version"]
            current = await alice.call("GET", "/room_keys/version")
            assert current == {
                "algorithm": algorithm,
                "auth_data": {"public_key": "b"},
                "count": 0,
                "etag": "0",
                "version": v2,
            }

            def key(index: int, forwarded: int = 0, verified: bool = False) -> dict[str, Any]:
                return {
                    "first_message_index": index,
                    "forwarded_count": forwarded,
                    "is_verified": verified,
                    "session_data": {"ciphertext": f"c{index}{forwarded}{verified}"},
                }

            stale = await errcode(
                alice, "PUT", f"/room_keys/keys/!r:x/s1?version={v1}", key(5), 403
            )
            assert stale == "M_WRONG_ROOM_KEYS_VERSION"
            put = await alice.call("PUT", f"/room_keys/keys/!r:x/s1?version={v2}", key(5))
            assert put == {"etag": "1", "count": 1}
            # Worse keys never replace better ones: higher index, unverified, more forwards.
            await alice.call("PUT", f"/room_keys/keys/!r:x/s1?version={v2}", key(9))
            assert (await alice.call("GET", f"/room_keys/keys/!r:x/s1?version={v2}"))[
                "first_message_index"
            ] == 5
            await alice.call(
                "PUT",
                f"/room_keys/keys/!r:x?version={v2}",
                {"sessions": {"s1": key(7, verified=True), "s2": key(0, 3)}},
            )
            await alice.call(
                "PUT",
                f"/room_keys/keys?version={v2}",
                {
                    "rooms": {
                        "!r:x": {"sessions": {"s2": key(0, 1)}},
                        "!q:x": {"sessions": {"s3": key(1)}},
                    }
                },
            )
            everything = await alice.call("GET", f"/room_keys/keys?version={v2}")
            assert everything["rooms"]["!r:x"]["sessions"]["s1"] == key(7, verified=True)
            assert everything["rooms"]["!r:x"]["sessions"]["s2"] == key(0, 1)
            assert set(everything["rooms"]) == {"!r:x", "!q:x"}
            described = await alice.call("GET", f"/room_keys/version/{v2}")
            assert described["count"] == 3
            deleted = await alice.call("DELETE", f"/room_keys/keys/!r:x?version={v2}")
            assert deleted["count"] == 1 and int(deleted["etag"]) > int(described["etag"])
            assert await alice.call("GET", f"/room_keys/keys/!r:x?version={v2}") == {"sessions": {}}
            assert (
                await errcode(alice, "GET", f"/room_keys/keys/!r:x/s1?version={v2}", None, 404)
                == "M_NOT_FOUND"
            )
            # Updating: only auth_data, same algorithm, matching version.
            await alice.call(
                "PUT",
                f"/room_keys/version/{v2}",
                {"algorithm": algorithm, "auth_data": {"public_key": "c"}, "version": v2},
            )
            assert (await alice.call("GET", "/room_keys/version"))["auth_data"] == {
                "public_key": "c"
            }
            wrong = {"algorithm": "other", "auth_data": {}}
            assert (
                await errcode(alice, "PUT", f"/room_keys/version/{v2}", wrong, 400)
                == "M_INVALID_PARAM"
            )
            # Deleting: the older version is current again; deleting twice succeeds.
            await alice.call("DELETE", f"/room_keys/version/{v2}")
            await alice.call("DELETE", f"/room_keys/version/{v2}")
            assert (await alice.call("GET", "/room_keys/version"))["version"] == v1
            assert (
                await errcode(alice, "GET", f"/room_keys/version/{v2}", None, 404) == "M_NOT_FOUND"
            )
            assert (
                await errcode(alice, "DELETE", "/room_keys/version/99", None, 404) == "M_NOT_FOUND"
            )
            assert (
                await errcode(alice, "GET", f"/room_keys/keys?version={v2}", None, 404)
                == "M_NOT_FOUND"
            )
            nursery.cancel_scope.cancel()

    run(main)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
ENDPOINTS = [
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    ("POST", "/keys/device_signing/upload"),
    ("POST", "/keys/signatures/upload"),
    ("PUT", "/sendToDevice/m.test/t"),
    ("POST", "/room_keys/version"),
    ("PUT", "/room_keys/keys?version=1"),
    ("PUT", "/room_keys/version/1"),
]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ENDPOINTS),
    st.one_of(
        JSON,
        st.dictionaries(
            st.sampled_from(
                [
                    "device_keys",
                    "one_time_keys",
                    "fallback_keys",
                    "messages",
                    "master_key",
                    "timeout",
                    "rooms",
                    "algorithm",
                    "auth_data",
                ]
            ),
            JSON,
        ),
    ),
)
def test_bad_bodies_never_cause_a_500(
    tmp_path_factory: pytest.TempPathFactory, endpoint: tuple[str, str], body: Any
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await one_node(tmp_path_factory.mktemp("n"), nursery)
            alice = await node.register("alice")
            await alice.call(
                "POST",
                "/room_keys/version",
                {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}},
            )
            method, path = endpoint
            try:
                await alice.call(method, path, body)
            except ApiFailure as exc:
                assert 400 <= exc.status < 500, (exc.status, exc.body, json.dumps(body))
            nursery.cancel_scope.cancel()

    run(main)
