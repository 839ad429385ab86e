"""Auth chains and the auth chain difference, over the stored auth DAG.

Definitions (server-server spec, state resolution v2): the *auth chain* of
an event is its auth events, their auth events, and so on. State resolution
needs the *auth chain difference* of some state sets: the events that are
in the auth chain of some, but not all, of the sets.

Like Synapse and the other homeservers, a state set's chain here includes
the set's own events. This changes nothing in the result that matters: an
event in only some sets is a conflicted state event anyway, and an event in
every set is in every chain either way.

Theory of operation: events are stored only after their auth events, so
the insertion order (``event_nid``) is a topological order of the auth DAG
(auth events first). Walking from the highest nid down, every event is visited after all the events (among those walked)
that cite it, so when it is popped its set of "reached by" sets (a bitmask)
is final. The walk starts from the union of the state sets and stops as
soon as every event still queued is reached by all sets: everything below
them is then reached by all sets too, so it cannot be in the difference.
Events shared by all sets therefore cost little, and resolution never loads
a whole room's history. Auth edges are cached by nid (they never change).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from p2pserver.storage.cache import LruCache
from p2pserver.storage.database import Database, chunks, placeholders


class AuthChains:
    def __init__(self, db: Database, *, cache_size: int = 200_000) -> None:
        self.db = db
        self._edges: LruCache[int, tuple[int, ...]] = LruCache(cache_size)

    def clear_caches(self) -> None:
        self._edges.clear()

    def auth_edges(self, nids: Iterable[int]) -> dict[int, tuple[int, ...]]:
        """The auth events (as nids) of each of ``nids``."""
        out: dict[int, tuple[int, ...]] = {}
        missing: list[int] = []
        for nid in nids:
            edges = self._edges.get(nid)
            if edges is None:
                missing.append(nid)
            else:
                out[nid] = edges
        for batch in chunks(missing):
            found: dict[int, list[int]] = {nid: [] for nid in batch}
            for nid, auth_nid in self.db.query(
                f"SELECT event_nid, auth_nid FROM event_auth WHERE event_nid IN ({placeholders(len(batch))})",
                batch,
            ):
                found[nid].append(auth_nid)
            for nid, auth in found.items():
                edges = tuple(auth)
                self._edges.set(nid, edges)
                out[nid] = edges
        return out

    def auth_chain(self, nids: Iterable[int]) -> set[int]:
        """The auth chain of the given events (not including them, unless reached)."""
        result: set[int] = set()
        frontier = list(dict.fromkeys(nids))
        while frontier:
            edges = self.auth_edges(frontier)
            frontier = []
            for auth in edges.values():
                for nid in auth:
                    if nid not in result:
                        result.add(nid)
                        frontier.append(nid)
        return result

    def difference(self, state_sets: Sequence[Iterable[int]]) -> set[int]:
        """Events in the auth chain of some but not all of ``state_sets``."""
        sets = [set(s) for s in state_sets]
        if len(sets) < 2:
            return set()
        full = (1 << len(sets)) - 1
        reached: dict[int, int] = {}
        for index, nids in enumerate(sets):
            bit = 1 << index
            for nid in nids:
                reached[nid] = reached.get(nid, 0) | bit
        heap = [-nid for nid in reached]
        heapq.heapify(heap)
        self.auth_edges(reached)  # one batched query to warm the cache
        # How many queued events are not yet reached by every set.
        partial = sum(1 for mask in reached.values() if mask != full)
        while heap and partial:
            nid = -heapq.heappop(heap)
            mask = reached[nid]
            if mask != full:
                partial -= 1
            for auth_nid in self.auth_edges([nid])[nid]:
                if auth_nid >= nid:
                    raise RuntimeError(f"auth edge {nid} -> {auth_nid} breaks the nid order")
                old = reached.get(auth_nid)
                if old is None:
                    reached[auth_nid] = mask
                    heapq.heappush(heap, -auth_nid)
                    if mask != full:
                        partial += 1
                elif old | mask != old:
                    reached[auth_nid] = old | mask
                    if old | mask == full:
                        partial -= 1  # it is queued: it was not popped yet
        return {nid for nid, mask in reached.items() if mask != full}
