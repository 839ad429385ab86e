"""Signed DHT records: room records and public-room records (no I/O).

Two kinds of record live in the DHT, each under a key of its own namespace:

- A **room record**, key ``/p2pserver-room/<sha256 hex of the room ID>``,
  says which servers are in a room and where they listen. Each server in the
  room publishes its own *entry* while it is joined, and a tombstone
  (``present: false``) when it leaves.
- The **public-room directory**, one key ``/p2pserver-public/directory``,
  holds an entry per (room, server) for rooms published to the room
  directory, with the room's summary as the spec's ``PublicRoomsChunk``
  (what ``/publicRooms`` returns), minus ``room_id`` which the entry carries.

Rules:

- An entry is a JSON object signed by the server it names (``server_name``,
  64 hex digits: the ed25519 public key) with :func:`sign_json`, i.e.
  ed25519 over its canonical JSON. The key is read off the name, so no key
  server is needed, and a peer cannot write an entry for another server: a
  forged entry does not verify and is dropped, entry by entry, wherever it is
  read (storing nodes and readers alike).
- A stored value is canonical JSON ``{"entries": [...]}``. Values are merged,
  never replaced: the union of the entries, keeping per identity (room ID,
  server name) the entry with the greatest ``ts`` (last writer wins; ties go to
  the smaller canonical JSON so every node picks the same one), dropping
  expired entries, then keeping the newest ``MAX_ENTRIES`` (and at most
  ``MAX_ENTRIES_PER_SERVER`` of one server). Merging is commutative,
  associative and idempotent, so nodes converge whatever order values arrive
  in, and a republished entry simply replaces its older self.
- ``ts`` and ``expires_ts`` are the publisher's wall clock in milliseconds.
  An entry lives at most ``MAX_TTL_MS`` (plus ``CLOCK_SKEW_MS`` of tolerance);
  a publisher republishes well within its TTL while the fact holds, so an
  entry whose publisher went away expires by itself.
- Tombstones are kept until they expire so that they beat the older
  "present" entry wherever they meet; readers ignore them.

Everything here is pure code over data: callers pass ``now_ms``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pserver.rooms.canonical_json import encode_canonical_json, parse_json
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.receipt import hex_server_keys
from p2pserver.rooms.room_versions import ROOM_V11, ROOM_V12
from p2pserver.rooms.signing import SigningKey, server_name_verify_key, sign_json, verify_json
from p2pserver.rooms.validation import is_valid_room_id

ROOM_NAMESPACE = "p2pserver-room"
PUBLIC_NAMESPACE = "p2pserver-public"
DIRECTORY_KEY = f"/{PUBLIC_NAMESPACE}/directory"

KIND_ROOM = "room"
KIND_PUBLIC_ROOM = "public_room"

MAX_TTL_MS = 6 * 3600 * 1000
CLOCK_SKEW_MS = 3600 * 1000
MAX_ENTRIES = 256
MAX_ENTRIES_PER_SERVER = 32
MAX_ADDRS = 8
MAX_ADDR_LENGTH = 200
MAX_VALUE_BYTES = 512 * 1024
MAX_TEXT = 1000  # name, topic and similar summary strings, in characters

_ENTRY_KEYS = {"kind", "room_id", "server_name", "addrs", "ts", "expires_ts", "present"}
_OPTIONAL_KEYS = {"summary", "signatures"}
# PublicRoomsChunk (client-server API, GET /publicRooms), without room_id.
_SUMMARY_TYPES: dict[str, type] = {
    "avatar_url": str,
    "canonical_alias": str,
    "guest_can_join": bool,
    "join_rule": str,
    "name": str,
    "num_joined_members": int,
    "room_type": str,
    "topic": str,
    "world_readable": bool,
}
_SUMMARY_REQUIRED = {"guest_can_join", "num_joined_members", "world_readable"}


class RecordError(MatrixError):
    """A DHT value or entry is malformed, forged or expired."""

    errcode = "M_BAD_JSON"


@dataclass(frozen=True)
class Entry:
    """A verified entry. ``raw`` is the signed JSON object as published."""

    kind: str
    room_id: str
    server_name: str
    addrs: tuple[str, ...]
    ts: int
    expires_ts: int
    present: bool
    summary: Mapping[str, Any] | None
    raw: Mapping[str, Any]

    @property
    def identity(self) -> tuple[str, str]:
        return (self.room_id, self.server_name)


# --- keys ------------------------------------------------------------------------------


def room_key(room_id: str) -> str:
    """The DHT key of ``room_id``'s room record."""
    return f"/{ROOM_NAMESPACE}/{hashlib.sha256(room_id.encode('utf-8')).hexdigest()}"


def kind_of_key(key: str) -> str:
    """Which kind of entry ``key`` holds; RecordError for keys outside our namespaces."""
    if key == DIRECTORY_KEY:
        return KIND_PUBLIC_ROOM
    prefix = f"/{ROOM_NAMESPACE}/"
    suffix = key[len(prefix) :]
    if key.startswith(prefix) and len(suffix) == 64 and suffix == suffix.lower():
        try:
            bytes.fromhex(suffix)
        except ValueError:
            pass
        else:
            return KIND_ROOM
    raise RecordError(f"not a p2pserver DHT key: {key[:100]!r}")


def is_room_id(value: object) -> bool:
    """Room IDs of every version we support (v11 and earlier, or v12's hash form)."""
    return is_valid_room_id(value, ROOM_V11) or is_valid_room_id(value, ROOM_V12)


def advertised_addresses(addrs: Iterable[str]) -> list[str]:
    """The addresses worth telling others: no wildcards, loopback only when
    there is nothing else (two nodes on one machine), at most MAX_ADDRS."""
    usable = [a for a in dict.fromkeys(addrs) if not _is_wildcard(a)]
    remote = [a for a in usable if not _is_loopback(a)]
    return (remote or usable)[:MAX_ADDRS]


def _is_wildcard(addr: str) -> bool:
    return addr.startswith(("/ip4/0.0.0.0/", "/ip6/::/"))


def _is_loopback(addr: str) -> bool:
    return addr.startswith(("/ip4/127.", "/ip6/::1/"))


# --- making entries ----------------------------------------------------------------------


def make_entry(
    signing_key: SigningKey,
    *,
    kind: str,
    room_id: str,
    addrs: Sequence[str],
    now_ms: int,
    ttl_ms: int,
    present: bool = True,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A new entry signed by ``signing_key``'s server. ValueError on bad arguments."""
    if not 0 < ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"ttl_ms must be in (0, {MAX_TTL_MS}]")
    entry: dict[str, Any] = {
        "kind": kind,
        "room_id": room_id,
        "server_name": signing_key.server_name,
        "addrs": list(addrs)[:MAX_ADDRS],
        "ts": now_ms,
        "expires_ts": now_ms + ttl_ms,
        "present": present,
    }
    if kind == KIND_PUBLIC_ROOM and present:
        entry["summary"] = dict(summary or {})
    try:
        _check_shape(entry, kind)
    except RecordError as e:
        raise ValueError(str(e)) from None
    return sign_json(entry, signing_key.server_name, signing_key)


# --- checking entries ----------------------------------------------------------------


def parse_entry(obj: object, *, key: str, now_ms: int) -> Entry:
    """Check one entry read from under ``key``: shape, key, lifetime, then signature.

    The signature is checked last because it is the expensive step.
    Raises RecordError.
    """
    kind = kind_of_key(key)
    if not isinstance(obj, dict):
        raise RecordError("entry is not an object")
    _check_shape(obj, kind)
    if kind == KIND_ROOM and room_key(obj["room_id"]) != key:
        raise RecordError("entry is for another room than its key")
    if obj["expires_ts"] <= now_ms:
        raise RecordError("entry has expired")
    if obj["expires_ts"] - obj["ts"] > MAX_TTL_MS or obj["ts"] > now_ms + CLOCK_SKEW_MS:
        raise RecordError("entry lives too long or comes from the future")
    server_name = obj["server_name"]
    try:
        verify_json(obj, server_name, hex_server_keys(server_name))
    except MatrixError as e:
        raise RecordError(f"entry signature: {e.message}") from None
    return Entry(
        kind=kind,
        room_id=obj["room_id"],
        server_name=server_name,
        addrs=tuple(obj["addrs"]),
        ts=obj["ts"],
        expires_ts=obj["expires_ts"],
        present=obj["present"],
        summary=obj.get("summary"),
        raw=obj,
    )


def _check_shape(obj: Mapping[str, Any], kind: str) -> None:
    keys = set(obj)
    if not keys >= _ENTRY_KEYS or not keys <= _ENTRY_KEYS | _OPTIONAL_KEYS:
        raise RecordError(f"entry fields must be {sorted(_ENTRY_KEYS)} (+ summary)")
    if obj["kind"] != kind:
        raise RecordError(f"entry kind must be {kind!r}")
    if not is_room_id(obj["room_id"]):
        raise RecordError("room_id is not a room ID")
    server_name = obj["server_name"]
    if not isinstance(server_name, str) or server_name_verify_key(server_name) is None:
        raise RecordError("server_name is not 64 lowercase hex digits")
    addrs = obj["addrs"]
    if (
        not isinstance(addrs, list)
        or len(addrs) > MAX_ADDRS
        or not all(isinstance(a, str) and 0 < len(a) <= MAX_ADDR_LENGTH for a in addrs)
    ):
        raise RecordError(f"addrs must be at most {MAX_ADDRS} strings")
    for name in ("ts", "expires_ts"):
        value = obj[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RecordError(f"{name} must be a non-negative integer")
    if obj["expires_ts"] <= obj["ts"]:
        raise RecordError("expires_ts must be after ts")
    if not isinstance(obj["present"], bool):
        raise RecordError("present must be a boolean")
    summary = obj.get("summary")
    if kind == KIND_ROOM or not obj["present"]:
        if summary is not None:
            raise RecordError("only a present public-room entry has a summary")
    else:
        _check_summary(summary)


def _check_summary(summary: object) -> None:
    if not isinstance(summary, dict):
        raise RecordError("summary must be an object")
    missing = _SUMMARY_REQUIRED - set(summary)
    if missing:
        raise RecordError(f"summary lacks {sorted(missing)}")
    for name, value in summary.items():
        expected = _SUMMARY_TYPES.get(name)
        if expected is None:
            raise RecordError(f"summary field {name!r} is not part of PublicRoomsChunk")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise RecordError(f"summary field {name} must be {expected.__name__}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise RecordError(f"summary field {name} is too long")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise RecordError(f"summary field {name} must not be negative")


# --- values: sets of entries ------------------------------------------------------------


def decode_value(key: str, value: bytes, *, now_ms: int) -> list[Entry]:
    """The valid entries of a stored value. Forged, malformed or expired
    entries are dropped one by one; a value that is not ``{"entries": [...]}``
    canonical JSON (or too large) raises RecordError."""
    kind_of_key(key)
    if len(value) > MAX_VALUE_BYTES:
        raise RecordError("value too large")
    try:
        obj = parse_json(value)
    except (MatrixError, ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"value is not JSON: {e}") from None
    if not isinstance(obj, dict) or set(obj) != {"entries"} or not isinstance(obj["entries"], list):
        raise RecordError('value must be {"entries": [...]}')
    entries = []
    for item in obj["entries"][: 2 * MAX_ENTRIES]:
        try:
            entries.append(parse_entry(item, key=key, now_ms=now_ms))
        except RecordError:
            continue
    return entries


def encode_value(entries: Iterable[Entry]) -> bytes:
    """Canonical JSON of a set of entries, in a fixed order (by identity)."""
    ordered = sorted(entries, key=lambda e: e.identity)
    return encode_raw_entries(e.raw for e in ordered)


def encode_raw_entries(raw_entries: Iterable[Mapping[str, Any]]) -> bytes:
    """Canonical JSON of signed entry objects as a value, e.g. one new entry."""
    return encode_canonical_json({"entries": [dict(e) for e in raw_entries]})


def merge(entries: Iterable[Entry], *, now_ms: int) -> list[Entry]:
    """The merged set: newest entry per identity, unexpired, within the caps."""
    best: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        if entry.expires_ts <= now_ms:
            continue
        current = best.get(entry.identity)
        if current is None or _newer(entry, current):
            best[entry.identity] = entry
    newest_first = sorted(best.values(), key=lambda e: (-e.ts, e.identity))
    kept: list[Entry] = []
    per_server: dict[str, int] = {}
    for entry in newest_first:
        count = per_server.get(entry.server_name, 0)
        if count >= MAX_ENTRIES_PER_SERVER:
            continue
        per_server[entry.server_name] = count + 1
        kept.append(entry)
        if len(kept) == MAX_ENTRIES:
            break
    return sorted(kept, key=lambda e: e.identity)


def _newer(a: Entry, b: Entry) -> bool:
    if a.ts != b.ts:
        return a.ts > b.ts
    return encode_canonical_json(dict(a.raw)) < encode_canonical_json(dict(b.raw))


def merge_values(key: str, values: Iterable[bytes], *, now_ms: int) -> list[Entry]:
    """Merge raw values read from several nodes; undecodable values are skipped."""
    entries: list[Entry] = []
    for value in values:
        try:
            entries.extend(decode_value(key, value, now_ms=now_ms))
        except RecordError:
            continue
    return merge(entries, now_ms=now_ms)


def present(entries: Iterable[Entry]) -> list[Entry]:
    """The entries that assert a fact (not tombstones)."""
    return [e for e in entries if e.present]
