"""Which servers a node pushes an event to: a per-event tree with bounded fan-out.

The spec makes the origin of a PDU send it to every server in the room.
With N servers that is N-1 pushes from one device, through N-1
connections, and it fails for every server the origin cannot reach. Here
PDUs are self-authenticating (signed by the sender's server, whose key is
its name), so any member may pass them on, and each node pushes an event to
at most ``fanout`` servers:

1. Order the room's servers for the event: the event's origin first, then
   the others sorted by SHA-256 of ``event_id | server_name``. The order is
   a pseudo-random permutation that every node computes alike (from its
   own view of the joined servers), and it differs per event, so load and
   failures spread over different servers for each event.
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

Rooms with at most ``fanout + 1`` servers get direct pushes from the origin
to everyone, as the spec has it. A server that a push misses (a dead or
unreachable parent in the tree, or views of the room that differ) is
repaired by pulling (:mod:`p2pserver.federation.sync`). Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable

from p2pserver.rooms.events import Event, sender_server

DEFAULT_FANOUT = 4


def dissemination_order(event_id: str, origin: str, servers: Iterable[str]) -> list[str]:
    """The event's tree in breadth-first order: ``origin``, then the rest by hash."""

    def rank(server: str) -> bytes:
        return hashlib.sha256(f"{event_id}|{server}".encode()).digest()

    others = sorted({s for s in servers if s != origin}, key=lambda s: (rank(s), s))
    return [origin, *others]


def tree_children(order: list[str], server: str, fanout: int) -> list[str]:
    """``server``'s children in the tree ``order`` (none if it is not in it)."""
    if fanout < 1:
        raise ValueError("fanout must be at least 1")
    try:
        index = order.index(server)
    except ValueError:
        return []
    first = index * fanout + 1
    return order[first : first + fanout]


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
    order = dissemination_order(event.event_id, origin, room_servers)
    targets = tree_children(order, me, fanout)
    if for_origin:
        targets += tree_children(order, origin, fanout)
    first_hop = me == origin or received_from == origin or for_origin
    if event.type == "m.room.member" and event.state_key and first_hop:
        targets.append(sender_server(event.state_key))
    excluded = {me, origin, received_from}
    return list(dict.fromkeys(t for t in targets if t and t not in excluded))
