"""Signed DHT records: checks, forgeries, merging (p2pserver.dht.records)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserver.dht import records
from p2pserver.dht.records import (
    DIRECTORY_KEY,
    KIND_PUBLIC_ROOM,
    KIND_ROOM,
    RecordError,
    decode_value,
    encode_raw_entries,
    encode_value,
    make_entry,
    merge,
    parse_entry,
    room_key,
)
from p2pserver.rooms.signing import SigningKey

NOW = 1_800_000_000_000
TTL = 3600_000
KEYS = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 5)]
ROOM = "!room:" + KEYS[0].server_name
SUMMARY = {"num_joined_members": 3, "world_readable": False, "guest_can_join": False, "name": "Ops"}


def room_entry(key: SigningKey = KEYS[0], *, ts: int = NOW, present: bool = True, room: str = ROOM):
    return make_entry(
        key,
        kind=KIND_ROOM,
        room_id=room,
        addrs=["/ip4/10.0.0.1/tcp/4001"],
        now_ms=ts,
        ttl_ms=TTL,
        present=present,
    )


def test_an_entry_verifies_and_names_its_signer() -> None:
    entry = parse_entry(room_entry(), key=room_key(ROOM), now_ms=NOW)
    assert entry.server_name == KEYS[0].server_name
    assert entry.addrs == ("/ip4/10.0.0.1/tcp/4001",)
    assert entry.present and entry.room_id == ROOM


def test_an_entry_claiming_another_server_is_refused() -> None:
    forged = room_entry(KEYS[1])
    forged["server_name"] = KEYS[0].server_name  # signed by 1, claims 0
    with pytest.raises(RecordError, match="signature"):
        parse_entry(forged, key=room_key(ROOM), now_ms=NOW)


def test_an_entry_re_signed_by_another_key_is_refused() -> None:
    forged = room_entry(KEYS[0])
    forged["signatures"] = room_entry(KEYS[1])["signatures"]
    forged["signatures"][KEYS[0].server_name] = forged["signatures"].pop(KEYS[1].server_name)
    with pytest.raises(RecordError, match="signature"):
        parse_entry(forged, key=room_key(ROOM), now_ms=NOW)


def test_a_tampered_entry_is_refused() -> None:
    tampered = room_entry()
    tampered["addrs"] = ["/ip4/6.6.6.6/tcp/666"]
    with pytest.raises(RecordError, match="signature"):
        parse_entry(tampered, key=room_key(ROOM), now_ms=NOW)


def test_an_entry_under_another_rooms_key_is_refused() -> None:
    other = "!other:" + KEYS[0].server_name
    with pytest.raises(RecordError, match="another room"):
        parse_entry(room_entry(), key=room_key(other), now_ms=NOW)


def test_expired_and_overlong_entries_are_refused() -> None:
    with pytest.raises(RecordError, match="expired"):
        parse_entry(room_entry(), key=room_key(ROOM), now_ms=NOW + TTL)
    with pytest.raises(RecordError, match="future"):
        parse_entry(room_entry(ts=NOW + 2 * records.CLOCK_SKEW_MS), key=room_key(ROOM), now_ms=NOW)
    with pytest.raises(ValueError):
        make_entry(
            KEYS[0],
            kind=KIND_ROOM,
            room_id=ROOM,
            addrs=[],
            now_ms=NOW,
            ttl_ms=records.MAX_TTL_MS + 1,
        )


@pytest.mark.parametrize(
    "change",
    [
        {"kind": KIND_PUBLIC_ROOM},
        {"room_id": "not-a-room"},
        {"server_name": "Alice"},
        {"addrs": "/ip4/1.2.3.4/tcp/1"},
        {"addrs": ["x"] * (records.MAX_ADDRS + 1)},
        {"ts": -1},
        {"ts": 1.5},
        {"expires_ts": NOW},
        {"present": 1},
        {"summary": {}},
        {"extra": True},
    ],
)
def test_malformed_entries_get_a_clear_error(change: dict) -> None:
    entry = {**room_entry(), **change}
    with pytest.raises(RecordError):
        parse_entry(entry, key=room_key(ROOM), now_ms=NOW)


def test_public_room_summary_follows_publicroomschunk() -> None:
    entry = make_entry(
        KEYS[0],
        kind=KIND_PUBLIC_ROOM,
        room_id=ROOM,
        addrs=[],
        now_ms=NOW,
        ttl_ms=TTL,
        summary=SUMMARY,
    )
    assert parse_entry(entry, key=DIRECTORY_KEY, now_ms=NOW).summary == SUMMARY
    for bad in (
        {"world_readable": False, "guest_can_join": False},  # lacks num_joined_members
        {**SUMMARY, "num_joined_members": True},
        {**SUMMARY, "num_joined_members": -1},
        {**SUMMARY, "servers": ["x"]},
        {**SUMMARY, "name": "x" * (records.MAX_TEXT + 1)},
    ):
        with pytest.raises(ValueError):
            make_entry(
                KEYS[0],
                kind=KIND_PUBLIC_ROOM,
                room_id=ROOM,
                addrs=[],
                now_ms=NOW,
                ttl_ms=TTL,
                summary=bad,
            )


def test_keys_outside_our_namespaces_are_refused() -> None:
    for key in ("/pk/abc", "/p2pserver-room/xyz", "/p2pserver-room/" + "A" * 64, "plain"):
        with pytest.raises(RecordError):
            decode_value(key, encode_raw_entries([room_entry()]), now_ms=NOW)


def test_a_value_drops_forged_entries_one_by_one() -> None:
    forged = room_entry(KEYS[1])
    forged["server_name"] = KEYS[2].server_name
    value = encode_raw_entries([room_entry(), forged, room_entry(KEYS[3])])
    got = decode_value(room_key(ROOM), value, now_ms=NOW)
    assert {e.server_name for e in got} == {KEYS[0].server_name, KEYS[3].server_name}


@pytest.mark.parametrize("value", [b"", b"[]", b'{"entries": 1}', b'{"x": []}', b"\xff", b"1.5"])
def test_malformed_values_get_a_clear_error(value: bytes) -> None:
    with pytest.raises(RecordError):
        decode_value(room_key(ROOM), value, now_ms=NOW)


def test_merge_keeps_the_newest_entry_per_server_and_tombstones_win() -> None:
    key = room_key(ROOM)
    old = parse_entry(room_entry(ts=NOW - 10), key=key, now_ms=NOW)
    new = parse_entry(room_entry(ts=NOW), key=key, now_ms=NOW)
    gone = parse_entry(room_entry(ts=NOW + 5, present=False), key=key, now_ms=NOW)
    other = parse_entry(room_entry(KEYS[1]), key=key, now_ms=NOW)
    assert merge([old, new, other], now_ms=NOW) == sorted([new, other], key=lambda e: e.identity)
    merged = merge([new, gone, other], now_ms=NOW)
    assert [e.server_name for e in records.present(merged)] == [KEYS[1].server_name]
    assert gone in merged  # kept so that it beats the old entry wherever they meet


def test_merge_drops_expired_entries_and_respects_the_caps() -> None:
    key = DIRECTORY_KEY
    entries = [
        parse_entry(
            make_entry(
                KEYS[0],
                kind=KIND_PUBLIC_ROOM,
                room_id=f"!r{i}:{KEYS[0].server_name}",
                addrs=[],
                now_ms=NOW + i,
                ttl_ms=TTL,
                summary=SUMMARY,
            ),
            key=key,
            now_ms=NOW,
        )
        for i in range(records.MAX_ENTRIES_PER_SERVER + 5)
    ]
    merged = merge(entries, now_ms=NOW)
    assert len(merged) == records.MAX_ENTRIES_PER_SERVER
    assert min(e.ts for e in merged) == NOW + 5  # the newest are kept
    assert merge(entries, now_ms=NOW + TTL + 100) == []


_POOL = [
    parse_entry(room_entry(k, ts=NOW + t, present=p), key=room_key(ROOM), now_ms=NOW)
    for k in KEYS
    for t in (0, 7)
    for p in (True, False)
]


@settings(max_examples=60)
@given(st.lists(st.sampled_from(_POOL), max_size=8), st.lists(st.sampled_from(_POOL), max_size=8))
def test_merge_is_commutative_associative_and_idempotent(a: list, b: list) -> None:
    ab = merge(a + b, now_ms=NOW)
    assert ab == merge(b + a, now_ms=NOW)
    assert ab == merge(merge(a, now_ms=NOW) + merge(b, now_ms=NOW), now_ms=NOW)
    assert ab == merge(ab + ab, now_ms=NOW)
    # and it survives a round trip through the wire format
    assert decode_value(room_key(ROOM), encode_value(ab), now_ms=NOW) == ab


def test_advertised_addresses_skip_wildcards_and_prefer_non_loopback() -> None:
    both = ["/ip4/127.0.0.1/tcp/1", "/ip4/0.0.0.0/tcp/1", "/ip4/10.1.2.3/tcp/1"]
    assert records.advertised_addresses(both) == ["/ip4/10.1.2.3/tcp/1"]
    assert records.advertised_addresses(both[:2]) == ["/ip4/127.0.0.1/tcp/1"]


def test_entries_are_not_mutated_by_parsing() -> None:
    entry = room_entry()
    before = copy.deepcopy(entry)
    parse_entry(entry, key=room_key(ROOM), now_ms=NOW)
    assert entry == before
