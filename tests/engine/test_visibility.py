import copy
from pathlib import Path

from p2pserver.engine.local import LocalNetwork
from p2pserver.engine.visibility import SHARED, effective_visibility, user_allowed
from p2pserver.storage import EventStatus
from p2pserver.storage.store import Store

from .conftest import make_room, trio_test, user


async def _room_with_visibility(visibility: str):  # type: ignore[no-untyped-def]
    room = await make_room(2)
    a = room.engines[0]
    alice = room.users[0]
    await a.send_state(
        room.room_id, alice, "m.room.history_visibility", "", {"history_visibility": visibility}
    )
    return room, a, alice


def test_rules_in_the_spec_order() -> None:
    assert user_allowed("world_readable", None, joined_later=False)
    assert user_allowed("joined", "join", joined_later=False)
    assert user_allowed("shared", "leave", joined_later=True)
    assert not user_allowed("shared", None, joined_later=False)
    assert user_allowed("invited", "invite", joined_later=False)
    assert not user_allowed("joined", "invite", joined_later=True)
    assert effective_visibility(None) == SHARED


@trio_test
async def test_shared_history_opens_to_later_joiners() -> None:
    room, a, alice = await _room_with_visibility("shared")
    rid = room.room_id
    bob = user(a, "bob")
    before = await a.send_message(rid, alice, {"body": "before bob"})
    assert not a.may_user_see_event(bob, before)
    await a.invite(rid, alice, bob)
    assert not a.may_user_see_event(bob, before)  # invited is not joined
    await a.join(rid, bob)
    assert a.may_user_see_event(bob, before)
    await a.leave(rid, bob)
    after = await a.send_message(rid, alice, {"body": "after bob left"})
    assert a.may_user_see_event(bob, before)  # he joined after it was sent
    assert not a.may_user_see_event(bob, after)


@trio_test
async def test_joined_and_invited_visibility() -> None:
    for visibility in ("joined", "invited"):
        room, a, alice = await _room_with_visibility(visibility)
        rid = room.room_id
        bob = user(a, "bob")
        early = await a.send_message(rid, alice, {"body": "early"})
        invite = await a.invite(rid, alice, bob)
        while_invited = await a.send_message(rid, alice, {"body": "while invited"})
        join = await a.join(rid, bob)
        joined = await a.send_message(rid, alice, {"body": "joined"})
        leave = await a.leave(rid, bob)
        later = await a.send_message(rid, alice, {"body": "later"})
        assert not a.may_user_see_event(bob, early)
        assert a.may_user_see_event(bob, invite)  # his own invite
        assert a.may_user_see_event(bob, while_invited) == (visibility == "invited")
        assert a.may_user_see_event(bob, join)
        assert a.may_user_see_event(bob, joined)
        assert a.may_user_see_event(bob, leave)  # own membership: joined before it
        assert not a.may_user_see_event(bob, later)


@trio_test
async def test_world_readable_and_visibility_changes() -> None:
    room, a, alice = await _room_with_visibility("world_readable")
    rid = room.room_id
    stranger = user(a, "stranger")
    public = await a.send_message(rid, alice, {"body": "public"})
    closing = await a.send_state(
        rid, alice, "m.room.history_visibility", "", {"history_visibility": "joined"}
    )
    private = await a.send_message(rid, alice, {"body": "private"})
    opening = await a.send_state(
        rid, alice, "m.room.history_visibility", "", {"history_visibility": "world_readable"}
    )
    assert a.may_user_see_event(stranger, public)
    assert a.may_user_see_event(stranger, closing)  # visible before it
    assert not a.may_user_see_event(stranger, private)
    assert a.may_user_see_event(stranger, opening)  # visible after it
    assert a.get_event_for_user(stranger, private) is None


@trio_test
async def test_servers_see_what_their_users_may() -> None:
    room, a, alice = await _room_with_visibility("joined")
    b = room.engines[1]
    rid = room.room_id
    outsider = room.net.add_engine()
    secret = await a.send_message(rid, alice, {"body": "secret"})
    await a.send_message(rid, alice, {"body": "next"})
    tip = a.forward_extremities(rid)
    assert a.may_server_see_event(b.server_name, secret)
    assert not a.may_server_see_event(outsider.server_name, secret)
    # to a server that may not see it, the event goes out redacted
    served = a.on_get_missing_events(
        outsider.server_name, rid, earliest_events=[], latest_events=tip, limit=5
    )
    assert served and all("body" not in p["content"] for p in served)
    served = a.on_get_missing_events(b.server_name, rid, earliest_events=[], latest_events=tip)
    assert any(p["content"].get("body") == "secret" for p in served)
    full = a.on_get_event(b.server_name, secret)
    assert full["content"]["body"] == "secret"
    assert "body" not in a.on_get_event(outsider.server_name, secret)["content"]


@trio_test
async def test_a_stripped_copy_is_replaced_by_the_full_event(tmp_path: Path) -> None:
    net = LocalNetwork()
    a = net.add_engine()
    b = net.add_engine(Store.open(tmp_path / "b.db"))
    alice, bob = user(a, "alice"), user(b, "bob")
    rid = await a.create_room(alice, {"preset": "private_chat"})  # history "shared"
    hello = await a.send_message(rid, alice, {"body": "hello"})
    await a.invite(rid, alice, bob)
    await net.deliver()  # b learns the room; bob is only invited, so the history comes stripped
    held = b.store.load_event(hello)
    assert held is not None and held.redacted and held.content == {}
    assert hello in b.store.stripped_event_ids(rid, limit=100)
    await b.join(rid, bob)
    await net.deliver()
    full = a.on_get_event(b.server_name, hello)
    assert full["content"] == {"body": "hello"}  # served whole now that a user of b joined
    tampered = copy.deepcopy(full)
    tampered["content"]["body"] = "forged"  # its content hash does not match
    await b.receive_pdu(a.server_name, tampered)
    assert b.store.load_event(hello).redacted  # type: ignore[union-attr]
    result = await b.receive_pdu(a.server_name, full)
    assert result.status == EventStatus.ACCEPTED
    seen = b.get_event_for_user(bob, hello)
    assert seen is not None and seen.content == {"body": "hello"}
    assert hello not in b.store.stripped_event_ids(rid, limit=100)
    assert b.store.check_consistency() == []
    b.store.close()
    reopened = Store.open(tmp_path / "b.db")
    assert reopened.load_event(hello).content == {"body": "hello"}  # type: ignore[union-attr]
    reopened.close()


@trio_test
async def test_a_server_is_entitled_to_what_its_own_view_lets_it_see() -> None:
    """What decides whether a stripped copy is worth fetching whole again:
    under "joined" history, what was sent while our users were away stays
    stripped; what was sent while one was joined may be seen."""
    room, a, alice = await _room_with_visibility("joined")
    b, bob = room.engines[1], room.users[1]
    rid = room.room_id
    present = await a.send_message(rid, alice, {"body": "while bob is here"})
    await room.net.deliver()
    await b.leave(rid, bob)
    await room.net.deliver()
    away = await a.send_message(rid, alice, {"body": "while bob is away"})
    await b.join(rid, bob)
    await room.net.deliver()
    served = a.on_get_event(b.server_name, away)
    assert "body" not in served["content"]  # a strips it: bob was away
    await b.receive_pdu(a.server_name, served)
    held = b.store.load_event(away)
    assert held is not None and held.redacted
    assert b.entitled_to_content(present)
    assert not b.entitled_to_content(away)
    assert a.may_server_see_event(b.server_name, present)
    assert not a.may_server_see_event(b.server_name, away)
