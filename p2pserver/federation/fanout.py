"""Which servers a node pushes an event to: a per-event tree with bounded fan-out.

The spec makes the origin of a PDU send it to every server in the room.
With N servers that is N-1 pushes from one device, through N-1
connections, and it fails for every server the origin cannot reach. Here
PDUs are self-authenticating (signed by the sender's server, whose key is
its name), so any member may pass them on, and each node pushes an event to
at most ``fanout`` servers:

1. Order the room's servers for the event (:class:`EventTree`): the
   event's origin first, then the M others -- taken in name order, index
   ``j`` -- at the positions of an affine permutation ``j = (a * p + b) mod
   M`` of the positions ``p = 0 .. M-1`` after the origin, with ``a``
   (coprime to M) and ``b`` drawn from SHA-256 of the event ID. Every node
   computes the same order from its own view of the joined servers, and
   it differs per event: ``b`` is uniform, so each server is equally
   likely at each position over many events, and load and failures spread
   over different servers for each event. (Not a uniformly random
   permutation -- children of one parent are an arithmetic progression in
   name order -- which is all a spread of load needs.)
2. Read the order as a complete ``fanout``-ary tree: the server at index
   ``i`` has children at ``i * fanout + 1 ... i * fanout + fanout``.
3. A node pushes an event it created, or first accepted by push, to its
   children in the event's tree. The origin's children are reached in one
   hop; everyone else in about log_fanout(N) hops, with N - 1 pushes in all
   and at most ``fanout`` sent by any node per event.
4. Two additions keep handshakes whole: a membership event is also pushed
   to its target's server by the origin and the servers that got it from
   the origin (an invite must reach a server not yet in the room, perhaps
   through another member), and a server that takes an event from its origin by a handshake
   (``send_join``, ``send_leave``) pushes it to the origin's children too,
   as the origin only sent it to that one server. So a node sends an event
   to at most ``2 * fanout + 1`` servers, and ``fanout + 1`` except in a
   handshake.
5. The sender of a push, the origin and the node itself are never targets.

Cost. Every node asks for its children once per event it relays, and the
origin once per joined server, so the answer must not cost O(N): a node's
position is the permutation's inverse, ``p = a^-1 * (j - b) mod M``, and
its children are ``fanout`` evaluations of the permutation -- one SHA-256
and O(fanout) arithmetic per event. Only the name order of a member set
costs O(N log N); it is memoised per member set (:func:`_order_of`,
bounded), and the engine hands out one frozenset per state group, so it
is computed once per membership change, not per event. (The memo is pure
and process-wide; in a simulation the nodes' equal sets share one entry.)

Rooms with at most ``fanout + 1`` servers get direct pushes from the origin
to everyone, as the spec has it. A server that a push misses (a dead or
unreachable parent in the tree, or views of the room that differ) is
repaired by pulling (:mod:`p2pserver.federation.sync`). Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Collection

from p2pserver.rooms.events import Event, sender_server

DEFAULT_FANOUT = 4
# Member sets whose name order is remembered (by value, shared by equal
# sets), and member set objects mapped to it (by identity: no O(N) hashing
# or comparing). A node is in few rooms whose membership changes between
# events in flight; a simulation holds a thousand nodes' sets.
MEMBER_ORDERS_CACHED = 256
MEMBER_SETS_CACHED = 4096

_Order = tuple[tuple[str, ...], dict[str, int]]
_by_identity: dict[int, tuple[frozenset[str], _Order]] = {}


@functools.lru_cache(maxsize=MEMBER_ORDERS_CACHED)
def _member_order(servers: frozenset[str]) -> _Order:
    """The servers in name order, and each one's index in it (pure, memoised)."""
    names = tuple(sorted(servers))
    return names, {s: i for i, s in enumerate(names)}


def _order_of(servers: Collection[str]) -> _Order:
    """:func:`_member_order` of ``servers``, found by identity for a frozenset seen before.

    The entry holds the set itself, so its ``id`` cannot be reused while
    it is cached; the engine hands out one frozenset per state group.
    """
    hit = _by_identity.get(id(servers))
    if hit is not None and hit[0] is servers:
        return hit[1]
    if not isinstance(servers, frozenset):
        return _member_order(frozenset(servers))
    order = _member_order(servers)
    if len(_by_identity) >= MEMBER_SETS_CACHED:
        _by_identity.clear()  # bounded; recomputing is correct
    _by_identity[id(servers)] = (servers, order)
    return order


class EventTree:
    """One event's dissemination order over a member set (see the module docstring).

    Position 0 is the origin; positions ``1 .. M`` hold the other servers.
    Construction and every query are O(1) (after the member set's name
    order, memoised); :meth:`order` lists the whole tree in O(N).
    """

    __slots__ = ("origin", "_names", "_index", "_skip", "_m", "_a", "_a_inv", "_b")

    def __init__(self, event_id: str, origin: str, servers: Collection[str]) -> None:
        self.origin = origin
        self._names, self._index = _order_of(servers)
        # The others are the names without the origin (if it is a member):
        # index j among them is name index j, or j + 1 from the origin's on.
        skip = self._index.get(origin)
        self._skip = len(self._names) if skip is None else skip
        m = self._m = len(self._names) - (skip is not None)
        digest = hashlib.sha256(event_id.encode()).digest()
        a = int.from_bytes(digest[:16], "big") % m if m else 0
        while m > 1 and math.gcd(a, m) != 1:
            a = (a + 1) % m
        self._a = a
        self._a_inv = pow(a, -1, m) if m > 1 else 0
        self._b = int.from_bytes(digest[16:], "big") % m if m else 0

    def __len__(self) -> int:
        return self._m + 1

    def at(self, position: int) -> str:
        """The server at ``position`` (0: the origin)."""
        if position == 0:
            return self.origin
        if not 0 < position <= self._m:
            raise IndexError(position)
        j = (self._a * (position - 1) + self._b) % self._m
        return self._names[j + (j >= self._skip)]

    def position(self, server: str) -> int | None:
        """``server``'s position, or None if it is not in the tree."""
        if server == self.origin:
            return 0
        i = self._index.get(server)
        if i is None:
            return None
        j = i - (i > self._skip)
        return (self._a_inv * (j - self._b)) % self._m + 1

    def children(self, server: str, fanout: int) -> list[str]:
        """``server``'s children in the tree (none if it is not in it)."""
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        index = self.position(server)
        if index is None:
            return []
        first = index * fanout + 1
        return [self.at(p) for p in range(first, min(first + fanout, self._m + 1))]

    def order(self) -> list[str]:
        """The whole tree in breadth-first order (O(N): for tests and inspection)."""
        return [self.at(p) for p in range(self._m + 1)]


def dissemination_order(event_id: str, origin: str, servers: Collection[str]) -> list[str]:
    """The event's tree in breadth-first order: ``origin``, then the rest permuted."""
    return EventTree(event_id, origin, servers).order()


def push_targets(
    event: Event,
    me: str,
    room_servers: Collection[str],
    fanout: int,
    *,
    received_from: str | None = None,
    for_origin: bool = False,
) -> list[str]:
    """The servers ``me`` pushes ``event`` to (see the module docstring).

    ``room_servers``: the servers joined in the state before the event, in
    ``me``'s view (not the current ones: those joined when it was sent are owed it).
    ``received_from``: who pushed it to us (None for our own events).
    ``for_origin``: we took it from its origin by a handshake.
    """
    origin = event.origin
    # Not adding ``me``: a node outside the room (in its own view) has no
    # place in the tree, and must not shift everyone else's.
    tree = EventTree(event.event_id, origin, room_servers)
    targets = tree.children(me, fanout)
    if for_origin:
        targets += tree.children(origin, fanout)
    first_hop = me == origin or received_from == origin or for_origin
    if event.type == "m.room.member" and event.state_key and first_hop:
        targets.append(sender_server(event.state_key))
    excluded = {me, origin, received_from}
    return list(dict.fromkeys(t for t in targets if t and t not in excluded))
