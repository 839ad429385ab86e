"""Who is around: the peer directory."""

from __future__ import annotations

import pytest

from p2pserver.discovery.directory import PeerDirectory

ME, A, B, C = "m" * 64, "a" * 64, "b" * 64, "c" * 64


def test_sightings_accumulate_ways_and_addresses() -> None:
    d = PeerDirectory(ME)
    d.saw(A, "mdns", 100, ["/ip4/1.1.1.1/tcp/1"])
    d.saw(A, "dht", 200, ["/ip4/2.2.2.2/tcp/1", "/ip4/1.1.1.1/tcp/1"])
    d.set_nearby(A, True, 250, ["/ip4/2.2.2.2/tcp/1"])
    peer = d.get(A)
    assert peer is not None
    assert peer.found_by == ["mdns", "dht"]
    assert peer.addrs == ["/ip4/2.2.2.2/tcp/1", "/ip4/1.1.1.1/tcp/1"]
    assert (peer.first_seen_ms, peer.last_seen_ms) == (100, 250)
    assert peer.to_json()["lan_addrs"] == ["/ip4/2.2.2.2/tcp/1"]
    d.set_nearby(A, False, 300)
    assert d.get(A).lan_addrs == () and d.nearby() == []


def test_own_name_is_never_listed_and_unknown_ways_are_refused() -> None:
    d = PeerDirectory(ME)
    assert d.saw(ME, "mdns", 1) is None and d.peers() == []
    with pytest.raises(ValueError):
        d.saw(A, "carrier pigeon", 1)


def test_order_is_connected_then_nearby_then_recent() -> None:
    d = PeerDirectory(ME)
    d.saw(A, "dht", 300)
    d.saw(B, "mdns", 100)
    d.set_nearby(B, True, 100)
    d.set_connected(C, True, 50)
    assert [p.server_name for p in d.peers()] == [C, B, A]
    assert d.get(C).found_by == ["connection"]


def test_display_names_hook() -> None:
    d = PeerDirectory(ME)
    d.saw(A, "bootstrap", 1)
    d.set_display_names(A, ["Ann", "Ann", "", "Bob"])
    assert d.get(A).display_names == ("Ann", "Bob")
    d.set_display_names(B, ["nobody"])  # unknown peers are not created
    assert d.get(B) is None


def test_a_full_directory_forgets_the_stalest_idle_peer() -> None:
    d = PeerDirectory(ME, max_peers=2)
    d.saw(A, "dht", 1)
    d.set_connected(B, True, 0)
    d.saw(C, "dht", 5)
    assert {p.server_name for p in d.peers()} == {B, C}
