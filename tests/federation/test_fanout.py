"""The per-event dissemination tree (p2pserver.federation.fanout), as pure functions."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from p2pserver.federation.fanout import EventTree, dissemination_order, push_targets


def servers(n: int) -> frozenset[str]:
    return frozenset(f"server{i:04d}" for i in range(n))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 17, 64, 101, 1000])
@pytest.mark.parametrize("fanout", [1, 2, 4, 7])
def test_the_tree_reaches_every_server_once_with_bounded_fanout(n: int, fanout: int) -> None:
    members = servers(n)
    origin = "server0003" if n > 3 else "server0000"
    tree = EventTree("$event", origin, members)
    order = tree.order()
    assert order[0] == origin and sorted(order) == sorted(members)
    assert [tree.position(s) for s in order] == list(range(n))
    reached, frontier = {origin}, [origin]
    while frontier:
        children = tree.children(frontier.pop(), fanout)
        assert len(children) <= fanout and not reached & set(children)
        reached |= set(children)
        frontier += children
    assert reached == set(members)


def test_an_origin_outside_the_member_set_still_roots_the_tree() -> None:
    tree = EventTree("$event", "elsewhere", servers(10))
    assert tree.order()[0] == "elsewhere"
    assert sorted(tree.order()[1:]) == sorted(servers(10))
    assert tree.position("nobody") is None and tree.children("nobody", 3) == []


def test_the_order_is_deterministic_and_differs_per_event() -> None:
    members = servers(50)
    origin = "server0000"
    assert dissemination_order("$a", origin, members) == dissemination_order(
        "$a", origin, set(members)
    )
    orders = {tuple(dissemination_order(f"$e{i}", origin, members)) for i in range(20)}
    assert len(orders) == 20


def test_load_spreads_over_the_servers() -> None:
    # Over many events every non-origin server is a first-hop child about
    # equally often (fanout / (N - 1) of the time).
    members = servers(41)
    origin = "server0000"
    first_hop: Counter[str] = Counter()
    for i in range(4000):
        first_hop.update(EventTree(f"$e{i}", origin, members).children(origin, 4))
    assert set(first_hop) == set(members) - {origin}
    assert min(first_hop.values()) > 0.6 * 400 and max(first_hop.values()) < 1.4 * 400


def test_push_targets_adds_a_membership_target_and_excludes_sender_origin_self() -> None:
    members = servers(30)
    origin = "server0000"
    event = SimpleNamespace(
        event_id="$m", origin=origin, type="m.room.member", state_key="@u:newcomer"
    )
    own = push_targets(event, origin, members, 4)  # type: ignore[arg-type]
    tree = EventTree("$m", origin, members)
    assert own == [*tree.children(origin, 4), "newcomer"]
    child = own[0]
    relayed = push_targets(event, child, members, 4, received_from=origin)  # type: ignore[arg-type]
    assert relayed == [*tree.children(child, 4), "newcomer"]
    handshake = push_targets(event, child, members, 4, received_from=origin, for_origin=True)  # type: ignore[arg-type]
    assert origin not in handshake and child not in handshake
    assert set(tree.children(origin, 4)) - {child} <= set(handshake)
