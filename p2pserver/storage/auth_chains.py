"""Auth chains, the auth difference and the conflicted state subgraph, from the stored DAG.

Definitions (as :mod:`p2pserver.state.source` states them, after the spec):
the *auth chain* of an event is its auth events, theirs, and so on, not the
event itself. The *full auth chain* of a state set is the union of its
events' auth chains (a set's own events are in it only if reached from
another of its events). The *auth difference* of state sets is the union of
their full auth chains minus the intersection. The *conflicted state
subgraph* of a set K is every event on an auth-events path from one event
of K to another, endpoints included (plus K's own events, which callers
union in anyway). Only *held* events take part: ``event_auth`` has edges
only between stored, non-rejected events, so walks never meet the others.

Theory of operation: an event is stored only after its auth events, so the
insertion order (``event_nid``) is a topological order of the auth DAG, auth
events first. That lets both questions be answered by a walk that visits
only the part of the DAG that matters, never a whole room:

- Difference: pop events from the highest nid down, starting from the
  state sets' events. When an event is popped, every walked event citing
  it has been popped before it, so the bitmask of state sets whose full
  chain holds it is final; it passes that mask, plus the sets holding it,
  to its auth events. The walk stops once every queued event passes on all
  sets and is reached by none or all of them: from then on every event
  below is reached by all sets (or by none), so none can be in the
  difference. Events shared by all sets therefore cost little.
- Subgraph: an event on a path between two events of K lies above the
  lowest of them in nid order, so the walk from K goes no lower than that,
  then decides, auth events first, which walked events lead to K.

Auth edges are cached by nid (they never change once committed).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from p2pserver.storage.cache import LruCache
from p2pserver.storage.database import Database, chunks, placeholders


class AuthChains:
    def __init__(self, db: Database, *, cache_size: int = 100_000) -> None:
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
                "SELECT event_nid, auth_nid FROM event_auth"
                f" WHERE event_nid IN ({placeholders(len(batch))})",
                batch,
            ):
                found[nid].append(auth_nid)
            for nid, auth in found.items():
                edges = tuple(auth)
                self._edges.set(nid, edges)
                out[nid] = edges
        return out

    def _edges_of(self, nid: int) -> tuple[int, ...]:
        edges = self._edges.get(nid)
        if edges is None:
            edges = self.auth_edges([nid])[nid]
        for auth_nid in edges:
            if auth_nid >= nid:
                raise RuntimeError(f"auth edge {nid} -> {auth_nid} breaks the nid order")
        return edges

    def auth_chain(self, nids: Iterable[int]) -> set[int]:
        """The union of the auth chains of the given events."""
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
        """The auth difference of ``state_sets`` (sets of nids)."""
        if not state_sets:
            return set()
        full = (1 << len(state_sets)) - 1
        own: dict[int, int] = {}
        for index, nids in enumerate(state_sets):
            bit = 1 << index
            for nid in nids:
                own[nid] = own.get(nid, 0) | bit
        reached: dict[int, int] = {}

        def undecided(nid: int) -> bool:
            # Still able to put something into the difference, itself or below.
            mask = reached.get(nid, 0)
            return (own.get(nid, 0) | mask) != full or mask not in (0, full)

        heap = [-nid for nid in own]
        heapq.heapify(heap)
        queued = set(own)
        self.auth_edges(own)  # one batched query to warm the cache
        pending = sum(1 for nid in queued if undecided(nid))
        while heap and pending:
            nid = -heapq.heappop(heap)
            queued.discard(nid)
            if undecided(nid):
                pending -= 1
            passed_on = own.get(nid, 0) | reached.get(nid, 0)
            for auth_nid in self._edges_of(nid):
                if auth_nid in queued:
                    before = undecided(auth_nid)
                    reached[auth_nid] = reached.get(auth_nid, 0) | passed_on
                    pending += undecided(auth_nid) - before
                else:  # first met: nothing below the popped events cites it yet
                    reached[auth_nid] = passed_on
                    queued.add(auth_nid)
                    heapq.heappush(heap, -auth_nid)
                    pending += undecided(auth_nid)
        return {nid for nid, mask in reached.items() if mask != full}

    def conflicted_subgraph(self, conflicted: Iterable[int]) -> set[int]:
        """The conflicted state subgraph of ``conflicted`` (nids), plus those events."""
        targets = set(conflicted)
        if not targets:
            return set()
        floor = min(targets)
        walked: dict[int, tuple[int, ...]] = {}
        frontier = list(targets)
        while frontier:
            edges = self.auth_edges(frontier)
            frontier = []
            for nid, auth in edges.items():
                kept = tuple(a for a in auth if a >= floor)
                walked[nid] = kept
                frontier.extend(a for a in kept if a not in walked)
            frontier = list(dict.fromkeys(frontier))
        leads: dict[int, bool] = {}
        for nid in sorted(walked):  # auth events first
            leads[nid] = nid in targets or any(leads[a] for a in walked[nid])
        return {nid for nid, on_path in leads.items() if on_path}
