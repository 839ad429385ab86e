"""FederationRemote: the client API's hook for other servers, over a MemoryHub."""

from __future__ import annotations

import pytest
import trio

from p2pserver.clientapi.remote import Remote
from p2pserver.federation import FederationRemote
from p2pserver.rooms.errors import MatrixError

from .conftest import cluster, run, shared_room, start_all, wait_until


def test_remote_join_invite_and_profile_for_the_client_api():
    async def main():
        _, (a, b, c) = cluster(3)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, [a, b, c])
            room_id = await shared_room([a, b])
            remote: Remote = FederationRemote(c.fed)
            join = await remote.join(
                room_id, c.user("carol"), [b.server_name], {"displayname": "Carol"}
            )
            await wait_until(lambda: a.has(join))
            profile = await FederationRemote(a.fed).query_profile(c.user("carol"))
            assert profile == {"displayname": "Carol"}
            invite = await FederationRemote(a.fed).invite(
                room_id, a.user("u0"), c.user("dan"), "hi"
            )
            await wait_until(lambda: c.has(invite))
            with pytest.raises(MatrixError) as info:
                await remote.query_profile(b.user("nobody"))
            assert info.value.errcode == "M_NOT_FOUND"
            with pytest.raises(MatrixError) as info:
                await remote.join("!unknown:x", c.user("carol"), [a.server_name], {})
            assert info.value.errcode == "M_NOT_FOUND"  # the resident's own errcode
            with pytest.raises(MatrixError):
                await remote.query_alias("#a:b")
            nursery.cancel_scope.cancel()

    run(main)
