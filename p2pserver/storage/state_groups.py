"""State groups: the state at every event, stored as deltas.

A *state group* names one state map ``(type, state_key) -> event_id``. Many
events share a group (every message after a state event has the same state)
and a new group is stored as the difference from a similar existing group,
so storage grows with the number of state *changes*, not with events times
room size.

Rules:
- A group is a snapshot (no ``prev_group``) or a delta over ``prev_group``.
  A delta row with a NULL event removes the key (state resolution may drop a
  key that only one branch had and that failed the auth rules).
- :meth:`StateGroups.create` picks, among candidate base groups, the one
  with the smallest difference; an empty difference returns the base itself,
  so equal states are never stored twice along a chain. A snapshot is taken
  instead of a delta when the chain back to the last snapshot would hold
  more rows than the state itself (or more than ``max_hops`` deltas): that
  bounds both the rows stored (about two per change) and the rows read to
  load a group (about twice its size).
- Groups never change once committed, so loaded maps are cached and shared;
  callers must not mutate the mappings they get.
- Only call the creating methods inside a database transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from p2pserver.rooms.events import StateKey
from p2pserver.storage.cache import LruCache
from p2pserver.storage.database import Database

StateMap = Mapping[StateKey, str]
# Changes to a state map: the new event ID, or None to remove the key.
StateDelta = Mapping[StateKey, str | None]

DEFAULT_MAX_HOPS = 5000
_MIN_SNAPSHOT_ROWS = 50

_LOAD_CHAIN_SQL = """
WITH RECURSIVE chain(group_nid, hop) AS (
    SELECT ?, 0
    UNION ALL
    SELECT g.prev_group, chain.hop + 1
    FROM state_groups g JOIN chain ON g.group_nid = chain.group_nid
    WHERE g.prev_group IS NOT NULL
)
SELECT k.type, k.state_key, e.event_id
FROM chain
JOIN state_group_entries s ON s.group_nid = chain.group_nid
JOIN state_keys k ON k.key_nid = s.key_nid
LEFT JOIN events e ON e.event_nid = s.event_nid
ORDER BY chain.hop DESC
"""

_LOAD_DELTA_SQL = """
SELECT k.type, k.state_key, e.event_id
FROM state_group_entries s
JOIN state_keys k ON k.key_nid = s.key_nid
LEFT JOIN events e ON e.event_nid = s.event_nid
WHERE s.group_nid = ?
"""


class StateGroupError(Exception):
    pass


class StateGroups:
    def __init__(
        self,
        db: Database,
        event_nids: Callable[[Iterable[str]], dict[str, int]],
        *,
        max_hops: int = DEFAULT_MAX_HOPS,
        cache_size: int = 64,
    ) -> None:
        """``event_nids`` maps event IDs to their stored nids (all must exist)."""
        self.db = db
        self._event_nids = event_nids
        self.max_hops = max_hops
        self._states: LruCache[int, dict[StateKey, str]] = LruCache(cache_size)
        # group -> (prev_group, hops, chain_rows); immutable once committed.
        self._info: LruCache[int, tuple[int | None, int, int]] = LruCache(100_000)
        self._key_nids: dict[StateKey, int] = {}

    def clear_caches(self) -> None:
        self._states.clear()
        self._info.clear()
        self._key_nids.clear()

    # -- reading --------------------------------------------------------------

    def _group_info(self, group: int) -> tuple[int | None, int, int]:
        info = self._info.get(group)
        if info is None:
            row = self.db.query_one(
                "SELECT prev_group, hops, chain_rows FROM state_groups WHERE group_nid = ?",
                (group,),
            )
            if row is None:
                raise StateGroupError(f"unknown state group {group}")
            info = (row[0], row[1], row[2])
            self._info.set(group, info)
        return info

    def load(self, group: int) -> StateMap:
        """The full state map of ``group`` (shared: do not mutate)."""
        state = self._states.get(group)
        if state is not None:
            return state
        prev_group, _, _ = self._group_info(group)
        parent = self._states.get(prev_group) if prev_group is not None else None
        if parent is not None:
            # Common case: the parent is hot, so read only this group's delta.
            state = dict(parent)
            rows = self.db.query(_LOAD_DELTA_SQL, (group,))
        else:
            state = {}
            rows = self.db.query(_LOAD_CHAIN_SQL, (group,))
        for type_, state_key, event_id in rows:
            if event_id is None:
                state.pop((type_, state_key), None)
            else:
                state[(type_, state_key)] = event_id
        self._states.set(group, state)
        return state

    def room_of(self, group: int) -> str:
        row = self.db.query_one("SELECT room_id FROM state_groups WHERE group_nid = ?", (group,))
        if row is None:
            raise StateGroupError(f"unknown state group {group}")
        return str(row[0])

    # -- writing --------------------------------------------------------------

    def create(self, room_id: str, state: StateMap, bases: Iterable[int] = ()) -> int:
        """Store ``state``, as a delta over the closest of ``bases`` if worthwhile.

        Returns an existing base when ``state`` equals it.
        """
        best: tuple[int, dict[StateKey, str | None]] | None = None
        for base in dict.fromkeys(bases):
            delta = diff_states(self.load(base), state)
            if best is None or len(delta) < len(best[1]):
                best = (base, delta)
        if best is None:
            return self._insert_snapshot(room_id, state)
        base, delta = best
        if not delta:
            return base
        return self._insert_delta(room_id, base, delta, state)

    def create_delta(self, room_id: str, base: int, delta: StateDelta) -> int:
        """Store the state of ``base`` changed by ``delta`` (the usual state event case)."""
        base_state = self._states.get(base)
        if base_state is not None:
            delta = {k: v for k, v in delta.items() if base_state.get(k) != v}
        if not delta:
            return base
        return self._insert_delta(room_id, base, delta, None)

    def _insert_delta(
        self, room_id: str, base: int, delta: StateDelta, full: StateMap | None
    ) -> int:
        _, hops, chain_rows = self._group_info(base)
        # One copy of the full map per new group: it becomes the cached state.
        state = dict(full) if full is not None else apply_delta(self.load(base), delta)
        if hops + 1 > self.max_hops or chain_rows + len(delta) > max(
            len(state), _MIN_SNAPSHOT_ROWS
        ):
            return self._insert_snapshot(room_id, state, owned=True)
        group = self._insert_group(room_id, base, hops + 1, chain_rows + len(delta))
        self._insert_entries(group, delta)
        self._states.set(group, state)
        return group

    def _insert_snapshot(self, room_id: str, state: StateMap, *, owned: bool = False) -> int:
        group = self._insert_group(room_id, None, 0, 0)
        self._insert_entries(group, state)
        self._states.set(group, state if owned and isinstance(state, dict) else dict(state))
        return group

    def _insert_group(
        self, room_id: str, prev_group: int | None, hops: int, chain_rows: int
    ) -> int:
        self.db.execute(
            "INSERT INTO state_groups (room_id, prev_group, hops, chain_rows) VALUES (?, ?, ?, ?)",
            (room_id, prev_group, hops, chain_rows),
        )
        group = int(self.db.conn.last_insert_rowid())
        self._info.set(group, (prev_group, hops, chain_rows))
        return group

    def _insert_entries(self, group: int, entries: StateDelta) -> None:
        keys = self.key_nids(entries.keys())
        nids = self._event_nids(v for v in entries.values() if v is not None)
        self.db.executemany(
            "INSERT INTO state_group_entries (group_nid, key_nid, event_nid) VALUES (?, ?, ?)",
            [(group, keys[k], nids[v] if v is not None else None) for k, v in entries.items()],
        )

    def key_nids(self, keys: Iterable[StateKey]) -> dict[StateKey, int]:
        """Intern ``(type, state_key)`` pairs (inserting new ones)."""
        out: dict[StateKey, int] = {}
        for key in keys:
            nid = self._key_nids.get(key)
            if nid is None:
                row = self.db.query_one(
                    "SELECT key_nid FROM state_keys WHERE type = ? AND state_key = ?", key
                )
                if row is None:
                    self.db.execute("INSERT INTO state_keys (type, state_key) VALUES (?, ?)", key)
                    nid = int(self.db.conn.last_insert_rowid())
                else:
                    nid = int(row[0])
                self._key_nids[key] = nid
            out[key] = nid
        return out


def diff_states(old: StateMap, new: StateMap) -> dict[StateKey, str | None]:
    """The delta that turns ``old`` into ``new``."""
    delta: dict[StateKey, str | None] = {k: v for k, v in new.items() if old.get(k) != v}
    for key in old.keys() - new.keys():
        delta[key] = None
    return delta


def apply_delta(state: StateMap, delta: StateDelta) -> dict[StateKey, str]:
    out = dict(state)
    for key, value in delta.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
