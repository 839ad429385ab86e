"""Unread counts kept per event across syncs equal a recount from scratch.

A live conversation syncs after every message; the counts for it are carried
forward one event at a time (:meth:`Sync._unread`). Whatever the path, they
must equal what a fresh count over the newest UNREAD_SCAN events gives.
"""

from __future__ import annotations

from p2pserver.clientapi.syncing import UNREAD_SCAN
from tests.clientapi.conftest import Node, auth, register_raw

V3 = "/_matrix/client/v3"


def test_counts_carried_across_syncs_equal_a_recount(node: Node) -> None:
    with node.http() as http:
        _, alice = register_raw(http)
        bob_id, bob = register_raw(http, "unreadbob")
        room_id = http.post(
            f"{V3}/createRoom", headers=auth(alice), json={"invite": [bob_id]}
        ).json()["room_id"]
        assert http.post(f"{V3}/join/{room_id}", headers=auth(bob)).status_code == 200
        since = http.get(f"{V3}/sync", headers=auth(bob)).json()["next_batch"]

        def counts(full: bool) -> dict[str, int]:
            nonlocal since
            if full:  # forget what was carried: a recount
                node.call(node.api.unread_counts.clear)
            params = {} if full else {"since": since}
            data = http.get(f"{V3}/sync", headers=auth(bob), params=params).json()
            if not full:
                since = data["next_batch"]
            return dict(data["rooms"]["join"][room_id]["unread_notifications"])

        last = ""
        # Past the window, with mentions (highlights) and bob's own messages.
        for i in range(UNREAD_SCAN + 15):
            sender, body = (
                (bob, "mine")
                if i % 7 == 3
                else (alice, f"unreadbob {i}" if i % 5 == 0 else f"m{i}")
            )
            last = http.put(
                f"{V3}/rooms/{room_id}/send/m.room.message/u{i}",
                headers=auth(sender),
                json={"msgtype": "m.text", "body": body},
            ).json()["event_id"]
            carried = counts(False)
            if i % 10 == 0 or i >= UNREAD_SCAN - 2:
                assert carried == counts(True), i
        assert counts(True)["notification_count"] <= UNREAD_SCAN
        # A read receipt moves the window: nothing unread.
        http.post(f"{V3}/rooms/{room_id}/receipt/m.read/{last}", headers=auth(bob), json={})
        assert counts(False) == {"notification_count": 0, "highlight_count": 0}
