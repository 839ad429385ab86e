"""Typing, receipts and presence between servers: the EDUs the client API makes and takes.

Spec: server-server API, "Typing Notifications", "Receipts" and "Presence".

Outgoing: when a local user starts or stops typing, or sends a public
receipt (``m.read``; ``m.read.private`` never leaves the node), an EDU is
put on the node's outbound queue
(:meth:`p2pserver.storage.outbound.OutboundQueue.enqueue_edu`) for every
other server with a member joined to the room. The queue wakes the
federation sender once the EDU is committed (as it does for every queued
item), which delivers it with the next transaction.

Incoming: the federation layer hands each EDU of a transaction to
:func:`receive_edu`. Rules, so a server can only speak for its own users:
- ``m.typing``: the user must belong to ``origin`` and be joined to the
  room; typing lasts :data:`REMOTE_TYPING_MS` unless renewed.
- ``m.receipt``: each user must belong to ``origin`` and be joined; only
  ``m.read`` receipts for events this node holds in that room are kept.
- ``m.presence``: each ``push`` entry's user must belong to ``origin``.
Anything malformed is ignored (EDUs are best-effort), never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from p2pserver.clientapi.streams import PRESENCE_STATES
from p2pserver.rooms.canonical_json import MAX_SAFE_INTEGER
from p2pserver.rooms.events import sender_server

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

__all__ = ["REMOTE_TYPING_MS", "queue_receipt", "queue_typing", "receive_edu"]

# How long a remote user's typing lasts without a renewal (as Synapse).
REMOTE_TYPING_MS = 30_000


def _destinations(api: ClientAPI, room_id: str) -> list[str]:
    return sorted(api.store.joined_servers(room_id) - {api.server_name})


def queue_typing(api: ClientAPI, room_id: str, user_id: str, typing: bool) -> None:
    edu = {
        "edu_type": "m.typing",
        "content": {"room_id": room_id, "user_id": user_id, "typing": typing},
    }
    for destination in _destinations(api, room_id):
        api.store.outbound.enqueue_edu(destination, edu)


def queue_receipt(
    api: ClientAPI, room_id: str, user_id: str, event_id: str, ts: int, thread_id: str | None
) -> None:
    data: dict[str, Any] = {"ts": ts}
    if thread_id is not None:
        data["thread_id"] = thread_id
    edu = {
        "edu_type": "m.receipt",
        "content": {room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": data}}}},
    }
    for destination in _destinations(api, room_id):
        api.store.outbound.enqueue_edu(destination, edu)


def _joined_user_of(api: ClientAPI, origin: str, room_id: Any, user_id: Any) -> bool:
    return (
        isinstance(room_id, str)
        and isinstance(user_id, str)
        and sender_server(user_id) == origin
        and api.store.current_membership(room_id, user_id) == "join"
    )


def receive_edu(api: ClientAPI, origin: str, edu: Any) -> None:
    """Apply one EDU from ``origin`` (see the module docstring)."""
    if not isinstance(edu, Mapping) or not isinstance(edu.get("content"), Mapping):
        return
    content = edu["content"]
    edu_type = edu.get("edu_type")
    changed = False
    if edu_type == "m.typing":
        room_id, user_id, typing = (
            content.get("room_id"),
            content.get("user_id"),
            content.get("typing"),
        )
        if isinstance(typing, bool) and _joined_user_of(api, origin, room_id, user_id):
            changed = api.typing.set(room_id, user_id, typing, REMOTE_TYPING_MS)
    elif edu_type == "m.receipt":
        for room_id, by_type in content.items():
            reads = by_type.get("m.read") if isinstance(by_type, Mapping) else None
            for user_id, receipt in reads.items() if isinstance(reads, Mapping) else ():
                if not _joined_user_of(api, origin, room_id, user_id) or not isinstance(
                    receipt, Mapping
                ):
                    continue
                event_ids = receipt.get("event_ids")
                data = receipt.get("data")
                if not isinstance(data, Mapping):
                    data = {}
                ts, thread_id = data.get("ts"), data.get("thread_id")
                for event_id in event_ids if isinstance(event_ids, list) else ():
                    meta = api.store.event_meta(event_id) if isinstance(event_id, str) else None
                    if meta is None or meta.room_id != room_id:
                        continue
                    api.accounts.set_receipt(
                        room_id,
                        "m.read",
                        user_id,
                        thread_id if isinstance(thread_id, str) and thread_id else None,
                        event_id,
                        # A JSON integer (the wire carries up to 64 bits, SQLite 63).
                        ts if type(ts) is int and 0 <= ts <= MAX_SAFE_INTEGER else api.now_ms(),
                    )
                    changed = True
    elif edu_type == "m.presence":
        pushed = content.get("push")
        for entry in pushed if isinstance(pushed, list) else ():
            if not isinstance(entry, Mapping):
                continue
            user_id, presence = entry.get("user_id"), entry.get("presence")
            status_msg = entry.get("status_msg")
            if (
                isinstance(user_id, str)
                and sender_server(user_id) == origin
                and presence in PRESENCE_STATES
            ):
                msg = status_msg if isinstance(status_msg, str) else None
                changed = api.presence.set(user_id, presence, msg) or changed
    if changed:
        api.poke()
