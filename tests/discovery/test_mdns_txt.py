"""The mDNS advertisement: signed TXT properties, what gets advertised."""

from __future__ import annotations

from p2pserver.discovery.mdns import Mdns, decode_txt, encode_txt
from p2pserver.rooms.signing import SigningKey

KEY = SigningKey.from_seed(b"\x07" * 32)
OTHER = SigningKey.from_seed(b"\x08" * 32)
ADDRS = ["/ip4/10.231.0.1/tcp/4001", "/ip4/10.231.1.1/tcp/4001"]


def wire(properties: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in properties.items()}


def test_an_advertisement_round_trips() -> None:
    peer = decode_txt(wire(encode_txt(KEY, ADDRS)))
    assert peer is not None
    assert peer.server_name == KEY.server_name and list(peer.addrs) == ADDRS


def test_an_advertisement_under_another_name_is_ignored() -> None:
    props = encode_txt(OTHER, ADDRS)
    props["sn"] = KEY.server_name
    assert decode_txt(wire(props)) is None


def test_changed_addresses_are_ignored() -> None:
    props = encode_txt(KEY, ADDRS)
    props["a1"] = "/ip4/6.6.6.6/tcp/666"
    assert decode_txt(wire(props)) is None
    del props["a1"]  # dropping one is a change too
    assert decode_txt(wire(props)) is None


def test_malformed_advertisements_are_ignored() -> None:
    good = encode_txt(KEY, ADDRS)
    for bad in (
        {},
        {**good, "sn": "not-hex"},
        {**good, "kid": "rsa:1"},
        {**good, "sig": "!!"},
    ):
        assert decode_txt(wire(bad)) is None
    assert decode_txt({b"sn": b"\xff"}) is None
    assert decode_txt({b"sn": None}) is None


def test_only_live_concrete_addresses_are_advertised() -> None:
    listen = ["/ip4/127.0.0.1/tcp/1", "/ip4/10.231.0.1/tcp/1", "/ip4/10.231.1.1/tcp/1"]
    live = ["127.0.0.1", "10.231.0.1"]
    mdns = Mdns(
        KEY,
        lambda: listen,
        on_found=lambda peer: None,
        on_lost=lambda name: None,
        interface_ips=lambda: live,
    )
    assert mdns.wanted_addresses() == ("/ip4/10.231.0.1/tcp/1",)
    live.remove("10.231.0.1")  # only loopback left: advertise it (one machine)
    assert mdns.wanted_addresses() == ("/ip4/127.0.0.1/tcp/1",)
    live.clear()
    assert mdns.wanted_addresses() == ()
