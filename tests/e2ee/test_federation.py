"""E2EE between two in-process nodes (MemoryHub, MockClock): to-device, device lists, keys.

The nodes are full nodes over store files (:mod:`.conftest`); stopping one
is a crash (nothing is flushed), starting it again builds new objects over
the same files.
"""

from __future__ import annotations

from pathlib import Path

import trio

from p2pserver.storage.database import Database

from .conftest import Account, E2eeNode, cluster, run, shared_room, wait_until
from .signing import Signer, cross_signing_key, device_keys

TEST_TYPE = "org.example.test"


async def send_to_device(alice: Account, txn: str, messages: dict) -> None:
    await alice.call("PUT", f"/sendToDevice/{TEST_TYPE}/{txn}", {"messages": messages})


def queued_edus(node: E2eeNode, destination: str) -> list[tuple[str, bytes]]:
    return [
        (r[0], bytes(r[1]))
        for r in node.store.db.query(
            "SELECT destination, edu FROM outbound_queue WHERE destination = ? AND edu IS NOT NULL",
            (destination,),
        )
    ]


def test_to_device_exactly_once_across_restarts_of_sender_and_receiver(tmp_path: Path) -> None:
    async def main() -> None:
        _, (one, two) = cluster(tmp_path)
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            alice = await one.register("alice")
            bob = await two.register("bob")
            bob_laptop = await two.register("bobby")  # another user, for "*" below
            await two.stop()  # the receiver is away
            for i in range(5):
                await send_to_device(alice, f"t{i}", {bob.user_id: {bob.device_id: {"n": i}}})
            # The client retries its last request: the transaction ID makes it a no-op.
            await send_to_device(alice, "t4", {bob.user_id: {bob.device_id: {"n": 4}}})
            await one.stop()  # the sender restarts while the receiver is away
            await one.start(nursery)
            for i in range(5, 10):
                await send_to_device(
                    alice,
                    f"t{i}",
                    {bob.user_id: {"*": {"n": i}}, bob_laptop.user_id: {"*": {"n": i}}},
                )
            queued = queued_edus(one, two.server_name)
            assert len(queued) == 10  # durable, one EDU per request

            await two.start(nursery)
            await wait_until(lambda: one.store.outbound.pending(two.server_name) == 0)
            # Node 1 crashes after node 2 took the transaction but before the
            # acknowledgement was recorded: its queue still holds the EDUs.
            await one.stop()
            db = Database(one.path)
            with db.transaction():
                db.executemany(
                    "INSERT INTO outbound_queue (destination, edu) VALUES (?, ?)", queued
                )
            db.close()
            await two.stop()  # and the receiver restarts too: its memory is gone
            await two.start(nursery)
            await one.start(nursery)
            await wait_until(lambda: one.store.outbound.pending(two.server_name) == 0)
            assert one.fed.sender.transactions_sent >= 1  # the retry really went out

            first = await bob.sync(initial=True)
            numbers = [e["content"]["n"] for e in first["to_device"]["events"]]
            assert numbers == list(range(10))  # each once, in order
            assert {e["sender"] for e in first["to_device"]["events"]} == {alice.user_id}
            assert {e["type"] for e in first["to_device"]["events"]} == {TEST_TYPE}
            laptop = await bob_laptop.sync(initial=True)
            assert [e["content"]["n"] for e in laptop["to_device"]["events"]] == list(range(5, 10))
            # Not acknowledged yet: a retried sync from the same point gets them again...
            again = await bob.sync(initial=True)
            assert [e["content"]["n"] for e in again["to_device"]["events"]] == list(range(10))
            # ...and the next token acknowledges and deletes them.
            await bob.sync()
            assert two.api.e2ee.pending_to_device(bob.user_id, bob.device_id) == 0
            assert (await bob.sync())["to_device"]["events"] == []
            nursery.cancel_scope.cancel()

    run(main)


def test_device_list_updates_chain_and_a_gap_is_refetched(tmp_path: Path) -> None:
    async def main() -> None:
        hub, (one, two) = cluster(tmp_path)
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            alice = await one.register("alice")
            bob = await two.register("bob", password="pw")
            await shared_room(alice, [bob])
            await alice.sync(initial=True)
            signer = Signer()
            await bob.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(bob.user_id, bob.device_id, signer)},
            )
            changed = await alice.sync(timeout=30_000)
            assert bob.user_id in changed["device_lists"]["changed"]

            async def bobs_devices() -> set[str]:
                answer = await alice.call("POST", "/keys/query", {"device_keys": {bob.user_id: []}})
                return set(answer["device_keys"].get(bob.user_id, {}))

            assert await bobs_devices() == {bob.device_id}  # cached from a user_devices snapshot
            cached = one.api.e2ee.remote_device_list(bob.user_id)
            assert cached is not None and not cached.stale

            # A second device: one EDU whose prev_id is the cached stream_id, applied as is.
            bob2 = await two.login(bob.user_id, "pw")
            await bob2.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(bob.user_id, bob2.device_id, Signer())},
            )
            await wait_until(
                lambda: bob2.device_id in one.api.e2ee.remote_device_list(bob.user_id).devices  # type: ignore[union-attr]
            )
            applied = one.api.e2ee.remote_device_list(bob.user_id)
            assert applied is not None and applied.stream_id > cached.stream_id
            assert not applied.stale
            hub.set_link(one.server_name, two.server_name, up=False)
            answer = await alice.call("POST", "/keys/query", {"device_keys": {bob.user_id: []}})
            assert set(answer["device_keys"][bob.user_id]) == {bob.device_id, bob2.device_id}
            assert answer["failures"] == {}  # answered from the cache, node 2 unreachable

            # A lost update: bob's third device is announced while the link is
            # down, and that EDU never arrives.
            bob3 = await two.login(bob.user_id, "pw")
            await bob3.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(bob.user_id, bob3.device_id, Signer())},
            )
            with two.store.db.transaction():
                two.store.db.execute("DELETE FROM outbound_queue WHERE edu IS NOT NULL")
            # The next update names it in prev_id: node 1 sees the gap and refetches.
            await bob2.call("PUT", f"/devices/{bob2.device_id}", {"display_name": "tablet"})
            hub.set_link(one.server_name, two.server_name, up=True)
            two.fed.sender.peer_connected(one.server_name)
            await wait_until(
                lambda: bob3.device_id in one.api.e2ee.remote_device_list(bob.user_id).devices  # type: ignore[union-attr]
            )
            refetched = one.api.e2ee.remote_device_list(bob.user_id)
            assert refetched is not None and not refetched.stale
            assert refetched.stream_id == two.api.e2ee.device_list_stream_id(bob.user_id)
            assert refetched.devices[bob2.device_id][0] == "tablet"
            # A repeat of an old update changes nothing.
            handler = one.api.e2ee_edu_handlers()["m.device_list_update"]
            await handler(
                two.server_name,
                {
                    "user_id": bob.user_id,
                    "device_id": bob3.device_id,
                    "stream_id": cached.stream_id,
                    "deleted": True,
                },
            )
            assert one.api.e2ee.remote_device_list(bob.user_id) == refetched

            # Logging out deletes the device everywhere.
            await bob3.call("POST", "/logout", {})
            await wait_until(
                lambda: bob3.device_id not in one.api.e2ee.remote_device_list(bob.user_id).devices  # type: ignore[union-attr]
            )
            nursery.cancel_scope.cancel()

    run(main)


def test_remote_keys_claim_query_cross_signing_and_failures(tmp_path: Path) -> None:
    async def main() -> None:
        hub, (one, two) = cluster(tmp_path)
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            alice = await one.register("alice")
            bob = await two.register("bob")
            carol = await two.register("carol")  # shares no room with alice
            await shared_room(alice, [bob])
            signer = Signer()
            await bob.call(
                "POST",
                "/keys/upload",
                {
                    "device_keys": device_keys(bob.user_id, bob.device_id, signer),
                    "one_time_keys": {
                        "signed_curve25519:AAA": signer.sign({"key": "otk1"}, bob.user_id),
                        "signed_curve25519:AAB": signer.sign({"key": "otk2"}, bob.user_id),
                    },
                    "fallback_keys": {
                        "signed_curve25519:FB": signer.sign(
                            {"key": "fb", "fallback": True}, bob.user_id
                        )
                    },
                },
            )
            await carol.call(
                "POST",
                "/keys/upload",
                {"device_keys": device_keys(carol.user_id, carol.device_id, Signer())},
            )
            claim = {"one_time_keys": {bob.user_id: {bob.device_id: "signed_curve25519"}}}
            keys = []
            for _ in range(3):
                answer = await alice.call("POST", "/keys/claim", claim)
                assert answer["failures"] == {}
                (name,) = answer["one_time_keys"][bob.user_id][bob.device_id]
                keys.append(name)
            assert keys == [
                "signed_curve25519:AAA",
                "signed_curve25519:AAB",
                "signed_curve25519:FB",
            ]
            sync = await bob.sync(initial=True)
            assert sync["device_one_time_keys_count"] == {"signed_curve25519": 0}
            assert sync["device_unused_fallback_key_types"] == []

            # A user sharing no room: asked over the network, not cached.
            answer = await alice.call("POST", "/keys/query", {"device_keys": {carol.user_id: []}})
            assert set(answer["device_keys"][carol.user_id]) == {carol.device_id}
            assert one.api.e2ee.remote_device_list(carol.user_id) is None

            # Cross-signing keys reach the other node by m.signing_key_update.
            master, self_signing = Signer(), Signer()
            await alice.call("POST", "/keys/query", {"device_keys": {bob.user_id: []}})
            await bob.call(
                "POST",
                "/keys/device_signing/upload",
                {
                    "master_key": cross_signing_key(bob.user_id, "master", master),
                    "self_signing_key": cross_signing_key(
                        bob.user_id, "self_signing", self_signing, master
                    ),
                },
            )
            await wait_until(lambda: "master" in one.api.e2ee.cross_signing_keys(bob.user_id))
            answer = await alice.call("POST", "/keys/query", {"device_keys": {bob.user_id: []}})
            assert answer["master_keys"][bob.user_id]["keys"] == {
                f"ed25519:{master.public}": master.public
            }
            assert bob.user_id in answer["self_signing_keys"]
            assert bob.user_id not in answer["user_signing_keys"]

            # A slow server: failures name it once the timeout has passed.
            hub.set_latency(one.server_name, two.server_name, 30.0)
            start = trio.current_time()
            slow = await alice.call(
                "POST", "/keys/query", {"device_keys": {carol.user_id: []}, "timeout": 2000}
            )
            assert trio.current_time() - start < 2.5
            assert slow["failures"] == {two.server_name: {"status": 504, "message": "timed out"}}
            claimed = await alice.call("POST", "/keys/claim", claim | {"timeout": 1000})
            assert claimed["failures"][two.server_name]["status"] == 504
            # An unreachable one fails at once.
            hub.set_latency(one.server_name, two.server_name, 0.002)
            await two.stop()
            start = trio.current_time()
            gone = await alice.call("POST", "/keys/claim", claim)
            assert gone["failures"][two.server_name]["status"] == 503
            assert gone["one_time_keys"] == {}
            gone = await alice.call("POST", "/keys/query", {"device_keys": {carol.user_id: []}})
            assert two.server_name in gone["failures"]
            assert trio.current_time() - start < 10
            nursery.cancel_scope.cancel()

    run(main)
