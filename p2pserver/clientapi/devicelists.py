"""Device lists: who has which devices, told to the servers and clients that need to know.

Spec: Client-Server API, "Tracking the device list for a user" (/sync
``device_lists``, ``/keys/changes``); Server-Server API, "Device Management"
(``m.device_list_update``, ``m.signing_key_update``, ``/user/devices``).

Local users (outgoing):
- A change of a device with identity keys (keys uploaded or changed, a new
  self-signing signature, a new display name, deletion) takes the next
  position of the account stream; that position is the ``stream_id`` of the
  ``m.device_list_update`` EDU announcing it, and ``prev_id`` names the
  user's previous one. The EDU is queued, in the caller's transaction, for
  every other server with a member joined to a room the user is joined to
  (:func:`destinations`), so it survives restarts like room events do.
- A new master or self-signing key does the same with
  ``m.signing_key_update`` (no stream IDs). The user-signing key, and a
  user's signatures of other users' keys, never leave the node; they are
  only a change for the user's own clients.

Remote users (incoming). We cache a remote user's device list once a local
client asks for their keys while they share a room with one of our users
(a snapshot from ``user_devices``, with its ``stream_id``):
- An ``m.device_list_update`` whose ``stream_id`` is at or below the cached
  one is a repeat: ignored. One whose ``prev_id`` names the cached
  ``stream_id`` is applied. Any other means an update was lost: the cache
  is marked stale and a snapshot fetched at once (:func:`refresh`), and at
  the next key query again if that fails.
- ``m.signing_key_update`` replaces the cached master and self-signing keys.
- A ``stream_id`` (of an EDU or a snapshot) that is not a JSON integer
  (within ±(2**53-1); the wire carries up to 64 bits, SQLite only 63) is
  malformed: the EDU or snapshot is ignored.
- While we share no room with a user nobody tells us of their changes, so
  a remote user's membership change, or a local user's join, marks the
  caches of the users concerned stale (:func:`on_room_update`).
- Every update about a user who shares a room with one of ours is a
  device-list change for our clients, cached or not, so they query again.

For clients, between two tokens (:func:`changes_between`, for incremental
/sync and ``/keys/changes``):
- ``changed``: users sharing a joined room with the user (the user
  included) whose device list changed, and users who now share an
  encrypted room with the user and did not at the first token;
- ``left``: users who shared an encrypted room with the user at the first
  token and share none now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

import trio

from p2pserver.clientapi.views import RoomViews
from p2pserver.engine.notifier import RoomUpdate
from p2pserver.rooms.canonical_json import MAX_SAFE_INTEGER, MIN_SAFE_INTEGER
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.events import sender_server
from p2pserver.storage.state_groups import StateMap

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

__all__ = [
    "REFRESH_TIMEOUT",
    "changes_between",
    "destinations",
    "devices_changed",
    "on_room_update",
    "receive_device_list_update",
    "receive_signing_key_update",
    "refresh",
    "shares_room",
    "signing_keys_changed",
]

MEMBER = "m.room.member"
ENCRYPTION = ("m.room.encryption", "")
# Seconds a snapshot fetch may take when an update revealed a gap.
REFRESH_TIMEOUT = 10.0


# -- who shares rooms with whom ----------------------------------------------------------


def destinations(api: ClientAPI, user_id: str) -> set[str]:
    """Other servers with a member joined to a room ``user_id`` is joined to."""
    servers: set[str] = set()
    for member in api.reads.memberships(user_id):
        if member.membership == "join":
            servers |= api.store.joined_servers(member.room_id)
    servers.discard(api.server_name)
    return servers


def shares_room(api: ClientAPI, user_id: str) -> bool:
    """Whether ``user_id`` is joined to a room one of our users is joined to."""
    return any(
        member.membership == "join" and api.server_name in api.store.joined_servers(member.room_id)
        for member in api.reads.memberships(user_id)
    )


def _joined(api: ClientAPI, room_id: str) -> set[str]:
    return {u for u, m in api.reads.members(room_id) if m == "join"}


def _joined_in(api: ClientAPI, state: StateMap) -> set[str]:
    ids = [event_id for (event_type, _), event_id in state.items() if event_type == MEMBER]
    return {
        e.state_key
        for e in api.store.load_events(ids).values()
        if e.state_key is not None and e.membership == "join"
    }


# -- local changes -----------------------------------------------------------------------


def devices_changed(
    api: ClientAPI, user_id: str, device_ids: Iterable[str], *, deleted: bool = False
) -> None:
    """Announce a change of each of the user's ``device_ids`` (their current keys and name).

    Call inside the transaction that made the change, so the change and its
    EDUs commit together.
    """
    servers = destinations(api, user_id)
    with api.e2ee.atomic():
        for device_id in device_ids:
            previous = api.e2ee.device_list_stream_id(user_id)
            stream_id = api.e2ee.record_device_list_change(user_id, announced=True)
            content: dict[str, Any] = {
                "user_id": user_id,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": [previous] if previous else [],
                "deleted": deleted,
            }
            if not deleted:
                keys = api.e2ee.device_keys(user_id, [device_id]).get(device_id)
                if keys is not None:
                    content["keys"] = keys
                device = api.accounts.device(user_id, device_id)
                if device is not None and device.display_name is not None:
                    content["device_display_name"] = device.display_name
            for server in sorted(servers):
                api.store.outbound.enqueue_edu(
                    server, {"edu_type": "m.device_list_update", "content": content}
                )
    api.e2ee_changed(edus=bool(servers))


def signing_keys_changed(api: ClientAPI, user_id: str, *, public: bool) -> None:
    """The user's cross-signing keys or signatures changed.

    ``public``: the master or self-signing key changed, which other servers
    hear of by ``m.signing_key_update``; otherwise only the user's own
    clients need to know (user-signing key, signatures of others' keys).
    """
    servers = destinations(api, user_id) if public else set()
    with api.e2ee.atomic():
        api.e2ee.record_device_list_change(user_id)
        keys = api.e2ee.cross_signing_keys(user_id)
        content: dict[str, Any] = {"user_id": user_id}
        for key_type in ("master", "self_signing"):
            if key_type in keys:
                content[f"{key_type}_key"] = keys[key_type]
        for server in sorted(servers):
            api.store.outbound.enqueue_edu(
                server, {"edu_type": "m.signing_key_update", "content": content}
            )
    api.e2ee_changed(edus=bool(servers))


# -- remote changes ----------------------------------------------------------------------


def _is_remote_user_of(api: ClientAPI, origin: str, user_id: Any) -> bool:
    return (
        isinstance(user_id, str)
        and user_id.startswith("@")
        and sender_server(user_id) == origin
        and origin != api.server_name
    )


def _is_stream_id(value: Any) -> TypeGuard[int]:
    return type(value) is int and MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def device_keys_of(user_id: str, device_id: str, keys: Any) -> dict[str, Any] | None:
    """``keys`` if they are device keys of that very device, else None."""
    if (
        isinstance(keys, dict)
        and keys.get("user_id") == user_id
        and keys.get("device_id") == device_id
        and isinstance(keys.get("keys"), dict)
    ):
        return keys
    return None


def cross_signing_key_of(user_id: str, key: Any, usage: str) -> dict[str, Any] | None:
    if (
        isinstance(key, dict)
        and key.get("user_id") == user_id
        and isinstance(key.get("usage"), list)
        and usage in key["usage"]
        and isinstance(key.get("keys"), dict)
    ):
        return key
    return None


async def receive_device_list_update(
    api: ClientAPI, origin: str, content: Mapping[str, Any]
) -> None:
    """An ``m.device_list_update`` EDU from ``origin`` (see the module docstring)."""
    user_id, device_id = content.get("user_id"), content.get("device_id")
    stream_id, prev_ids = content.get("stream_id"), content.get("prev_id", [])
    if (
        not _is_remote_user_of(api, origin, user_id)
        or not isinstance(device_id, str)
        or not _is_stream_id(stream_id)
        or not isinstance(prev_ids, list)
    ):
        return
    assert isinstance(user_id, str)
    if not shares_room(api, user_id):
        return  # nobody here cares; a later query fetches a snapshot
    cached = api.e2ee.remote_device_list(user_id)
    if cached is not None and not cached.stale:
        if stream_id <= cached.stream_id:
            return  # a repeat
        if cached.stream_id in prev_ids:
            name = content.get("device_display_name")
            with api.e2ee.atomic():
                api.e2ee.update_remote_device(
                    user_id,
                    stream_id,
                    device_id,
                    display_name=name if isinstance(name, str) else None,
                    keys=device_keys_of(user_id, device_id, content.get("keys")),
                    deleted=content.get("deleted") is True,
                )
                api.e2ee.record_device_list_change(user_id)
            api.e2ee_changed()
            return
    if cached is not None:
        api.e2ee.mark_remote_stale([user_id])  # we missed an update
        with trio.move_on_after(REFRESH_TIMEOUT):
            await refresh(api, user_id)
    api.e2ee.record_device_list_change(user_id)
    api.e2ee_changed()


async def receive_signing_key_update(
    api: ClientAPI, origin: str, content: Mapping[str, Any]
) -> None:
    """An ``m.signing_key_update`` EDU from ``origin``."""
    user_id = content.get("user_id")
    if not _is_remote_user_of(api, origin, user_id):
        return
    assert isinstance(user_id, str)
    if not shares_room(api, user_id):
        return
    with api.e2ee.atomic():
        if api.e2ee.remote_device_list(user_id) is not None:
            for key_type in ("master", "self_signing"):
                key = cross_signing_key_of(user_id, content.get(f"{key_type}_key"), key_type)
                if key is not None:
                    api.e2ee.set_cross_signing_key(user_id, key_type, key)
        api.e2ee.record_device_list_change(user_id)
    api.e2ee_changed()


async def refresh(api: ClientAPI, user_id: str) -> bool:
    """Fetch a snapshot of a remote user's devices (``user_devices``) into the cache.

    True if it came; the caller bounds the time.
    """
    if api.e2ee_remote is None:
        return False
    server = sender_server(user_id)
    try:
        answer = await api.e2ee_remote.user_devices(server, user_id)
    except MatrixError:
        return False
    stream_id = answer.get("stream_id") if isinstance(answer, dict) else None
    listed = answer.get("devices") if isinstance(answer, dict) else None
    if not _is_stream_id(stream_id) or not isinstance(listed, list):
        return False
    devices: list[tuple[str, str | None, dict[str, Any] | None]] = []
    for item in listed:
        device_id = item.get("device_id") if isinstance(item, dict) else None
        if not isinstance(device_id, str):
            continue
        assert isinstance(item, dict)
        name = item.get("device_display_name")
        keys = device_keys_of(user_id, device_id, item.get("keys"))
        devices.append((device_id, name if isinstance(name, str) else None, keys))
    cross_signing = {
        key_type: key
        for key_type in ("master", "self_signing")
        if (key := cross_signing_key_of(user_id, answer.get(f"{key_type}_key"), key_type))
    }
    api.e2ee.replace_remote_device_list(user_id, stream_id, devices, cross_signing)
    return True


def on_room_update(api: ClientAPI, update: RoomUpdate) -> None:
    """Engine listener: membership changes make cached device lists stale."""
    stale: set[str] = set()
    for event_type, state_key in update.state_delta:
        if event_type != MEMBER or not state_key.startswith("@"):
            continue
        if sender_server(state_key) != api.server_name:
            stale.add(state_key)
        elif api.store.current_membership(update.room_id, state_key) == "join":
            # A local user joined: the room's remote members may have changed
            # devices while nobody here shared a room with them.
            stale |= {
                u for u in _joined(api, update.room_id) if sender_server(u) != api.server_name
            }
    if stale:
        api.e2ee.mark_remote_stale(sorted(stale))


# -- what clients are told ---------------------------------------------------------------


def changes_between(
    api: ClientAPI,
    user_id: str,
    *,
    since_events: int,
    since_account: int,
    upto_events: int,
    upto_account: int,
) -> tuple[list[str], list[str]]:
    """``(changed, left)`` for ``user_id`` between two tokens (see the module docstring)."""
    views = RoomViews(api)
    joined_rooms = {m.room_id for m in api.reads.memberships(user_id) if m.membership == "join"}
    sharing: set[str] = {user_id}
    sharing_encrypted: set[str] = set()
    encrypted_now: dict[str, set[str]] = {}
    for room_id in joined_rooms:
        members = _joined(api, room_id)
        sharing |= members
        if ENCRYPTION in api.store.current_state(room_id):
            sharing_encrypted |= members
            encrypted_now[room_id] = members
    changed = api.e2ee.device_list_changes(since_account, upto_account) & sharing
    left: set[str] = set()
    for room_id in api.e2ee.rooms_with_membership_changes(since_events, upto_events):
        state = views.state_at_stream(room_id, since_events)
        then = _joined_in(api, state) if state is not None and ENCRYPTION in state else set()
        if user_id not in then:
            then = set()
        now = encrypted_now.get(room_id, set())
        changed |= now - then - {user_id}
        left |= then - now
    left -= sharing_encrypted | {user_id}
    return sorted(changed - left), sorted(left)
