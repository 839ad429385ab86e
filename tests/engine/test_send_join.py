"""make_join templates and joining a room from a send_join answer, engine side."""

import copy
from typing import Any

import pytest

from p2pserver.engine import NotFound, RoomEngine
from p2pserver.engine.local import LocalNetwork
from p2pserver.federation.membership import fill_template
from p2pserver.rooms.errors import AuthError
from p2pserver.rooms.events import Event
from p2pserver.storage import EventStatus

from .conftest import trio_test, user


async def _resident(net: LocalNetwork, preset: str = "public_chat", messages: int = 30):  # type: ignore[no-untyped-def]
    a = net.add_engine()
    alice = user(a, "alice")
    rid = await a.create_room(alice, {"preset": preset})
    for i in range(messages):
        if i % 5 == 0:
            await a.send_state(rid, alice, "m.room.topic", "", {"topic": str(i)})
        else:
            await a.send_message(rid, alice, {"body": str(i)})
    return a, alice, rid


async def _send_join(
    resident: RoomEngine, joiner: RoomEngine, rid: str, name: str = "bob"
) -> tuple[Event, list[dict[str, Any]], list[dict[str, Any]], str]:
    """Our join, filled from the resident's template and accepted there; its send_join answer."""
    template, version = resident.build_membership_template(rid, user(joiner, name), "join")
    join = fill_template(template, version, joiner.signing_key, server_name=joiner.server_name)
    assert (await resident.receive_pdu(joiner.server_name, join.get_pdu_json())).accepted
    ids = resident.on_state_ids(joiner.server_name, rid, join.event_id)
    auth_ids = set(ids.auth_chain_ids) | resident.store.auth_chain_ids([join.event_id])
    events = resident.store.load_events([*ids.pdu_ids, *auth_ids])
    state = [events[i].get_pdu_json() for i in ids.pdu_ids]
    auth_chain = [events[i].get_pdu_json() for i in sorted(auth_ids)]
    return join, state, auth_chain, version.identifier


@trio_test
async def test_a_join_is_placed_on_the_send_join_state_without_fetching() -> None:
    net = LocalNetwork()
    a, alice, rid = await _resident(net)
    b = net.add_engine()
    join, state, auth_chain, version = await _send_join(a, b, rid)
    net.requests.clear()
    result = await b.accept_send_join(
        a.server_name, join.get_pdu_json(), state, auth_chain, room_version=version
    )
    assert result.status == EventStatus.ACCEPTED, result
    assert net.requests == []  # the answer held everything
    assert b.forward_extremities(rid) == [join.event_id]
    assert b.room_state(rid) == a.room_state(rid)
    assert b.store.check_consistency() == []
    # Both ways from here on.
    hello = await b.send_message(rid, user(b, "bob"), {"body": "hello"})
    assert (await a.receive_pdu(b.server_name, b.store.load_event(hello).get_pdu_json())).accepted  # type: ignore[union-attr]
    reply = await a.send_message(rid, alice, {"body": "welcome"})
    pdu = a.store.load_event(reply).get_pdu_json()  # type: ignore[union-attr]
    assert (await b.receive_pdu(a.server_name, pdu)).status == EventStatus.ACCEPTED
    # A repeat is answered from the store.
    again = await b.accept_send_join(
        a.server_name, join.get_pdu_json(), state, auth_chain, room_version=version
    )
    assert again == result


@trio_test
async def test_a_bad_send_join_answer_drops_the_join_and_a_good_one_still_works() -> None:
    net = LocalNetwork()
    a, alice, rid = await _resident(net)
    topics = [
        r[0] for r in a.store.db.query("SELECT event_id FROM events WHERE type = 'm.room.topic'")
    ]
    old_topic = a.store.load_event(topics[0])
    assert old_topic is not None

    def forged(state: list[Any], chain: list[Any]) -> tuple[Any, Any]:
        state = copy.deepcopy(state)
        topic = next(p for p in state if p["type"] == "m.room.topic")
        topic["origin_server_ts"] += 1  # its signature no longer verifies
        return state, chain

    def without(what: Any) -> Any:
        def change(state: list[Any], chain: list[Any]) -> tuple[Any, Any]:
            return [p for p in state if not what(p)], [p for p in chain if not what(p)]

        return change

    cases = {
        "a forged state event": forged,
        "no create event": without(lambda p: p["type"] == "m.room.create"),
        "a state event without its auth events": without(lambda p: p.get("state_key") == alice),
        "two events for a key": lambda s, c: ([*s, old_topic.get_pdu_json()], c),
        "not a list": lambda s, c: ({"state": s}, c),
    }
    for what, change in cases.items():
        b = net.add_engine()  # nothing held from an earlier answer
        join, state, auth_chain, version = await _send_join(a, b, rid)
        bad_state, bad_chain = change(state, auth_chain)
        result = await b.accept_send_join(
            a.server_name, join.get_pdu_json(), bad_state, bad_chain, room_version=version
        )
        assert result.status is None and result.reason, what
        assert not b.forward_extremities(rid), what
        wrong_version = await b.accept_send_join(
            a.server_name, join.get_pdu_json(), state, auth_chain, room_version="10"
        )
        assert wrong_version.status is None, what
        # The right answer still works (the same event twice is no conflict).
        result = await b.accept_send_join(
            a.server_name, join.get_pdu_json(), [*state, state[0]], auth_chain, room_version=version
        )
        assert result.status == EventStatus.ACCEPTED, what
        assert b.room_state(rid) == a.room_state(rid), what
        assert b.store.check_consistency() == [], what


@trio_test
async def test_only_joins_of_our_users_are_taken_from_send_join() -> None:
    net = LocalNetwork()
    a, _, rid = await _resident(net, messages=3)
    b, c = net.add_engine(), net.add_engine()
    join, state, auth_chain, version = await _send_join(a, c, rid, "carol")
    result = await b.accept_send_join(
        a.server_name, join.get_pdu_json(), state, auth_chain, room_version=version
    )
    assert result.status is None and "not a join of a user of this server" in (result.reason or "")


@trio_test
async def test_membership_templates_and_the_auth_events_selection() -> None:
    net = LocalNetwork()
    a, alice, rid = await _resident(net, preset="private_chat", messages=3)
    b = net.add_engine()
    bob = user(b, "bob")
    with pytest.raises(AuthError):  # invite only
        a.build_membership_template(rid, bob, "join")
    with pytest.raises(NotFound):
        a.build_membership_template("!nowhere:example.org", bob, "join")
    await a.invite(rid, alice, bob)
    template, version = a.build_membership_template(rid, bob, "join", now_ms=1234)
    assert template["origin_server_ts"] == 1234
    assert template["prev_events"] == a.forward_extremities(rid)
    state = a.room_state(rid)
    expected = {
        state[k]
        for k in (
            ("m.room.create", ""),
            ("m.room.power_levels", ""),
            ("m.room.join_rules", ""),
            ("m.room.member", bob),
        )
    }
    create = state[("m.room.create", "")]
    listed = expected - {create} if version.room_id_is_create_event_hash else expected
    assert set(template["auth_events"]) == listed  # v12 never lists the create event
    join = fill_template(template, version, b.signing_key, server_name=b.server_name)
    selected = a.auth_events_from_state(join, state)
    assert {e.event_id for e in selected.values()} == expected
    assert (await a.receive_pdu(b.server_name, join.get_pdu_json())).status == EventStatus.ACCEPTED
    leave, _ = a.build_membership_template(rid, bob, "leave")
    assert leave["content"] == {"membership": "leave"}
