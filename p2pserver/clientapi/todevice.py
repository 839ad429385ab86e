"""Send-to-device messaging, between local devices and across nodes, exactly once.

Spec: Client-Server API, "Send-to-Device messaging" (``PUT
/sendToDevice/{eventType}/{txnId}``, /sync ``to_device``); Server-Server
API, "Send-to-device messaging" (the ``m.direct_to_device`` EDU).

Rules:
- Sending: ``messages`` maps user IDs to device IDs (or ``*``: all of the
  user's devices) to contents. Messages for local devices go to their
  inboxes; messages for each other server go, as ``m.direct_to_device``
  EDUs with a fresh ``message_id`` each, onto that server's durable
  outbound queue. Both happen in one transaction together with the
  transaction ID, so a repeated ``txnId`` sends nothing again and a crash
  sends either all of a request or none of it. An EDU holds at most about
  :data:`MAX_EDU_BYTES` of messages (larger requests become several EDUs),
  so a full transaction stays well inside a frame. A message nested deeper
  than a frame can carry it (:func:`~p2pserver.transport.framing.check_value`)
  is refused with M_BAD_JSON, as events are: it could never be sent.
- Receiving an EDU: ``sender`` must be a user of ``origin``; each
  ``(origin, message_id)`` is taken once
  (:meth:`~p2pserver.storage.e2ee.E2eeStore.first_receipt`, in the same
  transaction as the inbox writes), so a transaction retried after a
  crash of either node delivers nothing twice. Messages for unknown
  devices are dropped.
- /sync: a device gets its inbox after the ``since`` token's account
  position, oldest first, at most :data:`MAX_PER_SYNC` at a time (then
  ``next_batch`` stops at the last one given, so the rest follow); the
  messages at or before ``since`` were delivered by the response that
  issued it, and are deleted as the client, by presenting it,
  acknowledges them. A ``since`` from the future (another node, a reset
  database) acknowledges nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.routing import Ctx, Router
from p2pserver.rooms.events import sender_server
from p2pserver.rooms.validation import is_valid_user_id
from p2pserver.transport.framing import FrameError, check_value

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

__all__ = ["MAX_EDU_BYTES", "MAX_PER_SYNC", "receive_direct_to_device", "sync_to_device"]

MAX_PER_SYNC = 100
MAX_EDU_BYTES = 16 * 1024
# Containers above a message's content in a transaction frame: the envelope,
# its body, the list of EDUs, the EDU, its content, messages, user, device.
FRAME_LEVELS_ABOVE_MESSAGE = 8
ALL_DEVICES = "*"


def add_routes(router: Router) -> None:
    router.add("PUT", "/sendToDevice/{eventType}/{txnId}", send_to_device)


def _local_targets(api: ClientAPI, user_id: str, device_id: str) -> list[str]:
    if device_id == ALL_DEVICES:
        return [d.device_id for d in api.accounts.devices(user_id)]
    return [device_id] if api.accounts.device(user_id, device_id) is not None else []


def _chunks(messages: Mapping[str, Mapping[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """Split ``{user: {device: content}}`` into parts of about MAX_EDU_BYTES each."""
    parts: list[dict[str, dict[str, Any]]] = []
    current: dict[str, dict[str, Any]] = {}
    size = 0
    for user_id, devices in messages.items():
        for device_id, content in devices.items():
            item = len(json.dumps(content)) + len(user_id) + len(device_id)
            if current and size + item > MAX_EDU_BYTES:
                parts.append(current)
                current, size = {}, 0
            current.setdefault(user_id, {})[device_id] = content
            size += item
    if current:
        parts.append(current)
    return parts


async def send_to_device(ctx: Ctx) -> dict[str, Any]:
    api, sender, device_id = ctx.api, ctx.user_id, ctx.requester.device_id
    event_type, txn_id = ctx.params["eventType"], ctx.params["txnId"]
    body = ctx.json()
    messages = body.get("messages")
    if messages is None:
        raise ApiError.of("M_MISSING_PARAM", "missing messages")
    if not isinstance(messages, dict):
        raise ApiError.of("M_BAD_JSON", "messages must be an object")
    for user_id, devices in messages.items():
        if not is_valid_user_id(user_id):
            raise ApiError.of("M_INVALID_PARAM", f"{user_id!r} is not a user ID")
        if not isinstance(devices, dict) or not all(isinstance(c, dict) for c in devices.values()):
            raise ApiError.of("M_BAD_JSON", "messages maps user IDs to {device ID: content}")
        for content in devices.values():
            try:
                check_value(content, base_depth=FRAME_LEVELS_ABOVE_MESSAGE)
            except FrameError as exc:
                raise ApiError.of("M_BAD_JSON", f"a message cannot be sent: {exc}") from None
    local: list[tuple[str, str, dict[str, Any]]] = []
    remote: dict[str, dict[str, dict[str, Any]]] = {}
    for user_id, devices in messages.items():
        if api.is_local_user(user_id):
            for target, content in devices.items():
                message = {"sender": sender, "type": event_type, "content": content}
                local.extend((user_id, d, message) for d in _local_targets(api, user_id, target))
        else:
            remote.setdefault(sender_server(user_id), {})[user_id] = devices
    with api.e2ee.atomic():
        if not api.e2ee.record_to_device_txn(sender, device_id, txn_id, api.now_ms()):
            return {}  # a retry: sent the first time
        api.e2ee.put_to_device(local)
        for server, by_user in sorted(remote.items()):
            for part in _chunks(by_user):
                content = {
                    "sender": sender,
                    "type": event_type,
                    "message_id": secrets.token_urlsafe(12),
                    "messages": part,
                }
                api.store.outbound.enqueue_edu(
                    server, {"edu_type": "m.direct_to_device", "content": content}
                )
    api.e2ee_changed(edus=bool(remote))
    return {}


async def receive_direct_to_device(api: ClientAPI, origin: str, content: Mapping[str, Any]) -> None:
    """An ``m.direct_to_device`` EDU from ``origin`` (see the module docstring)."""
    sender, event_type = content.get("sender"), content.get("type")
    message_id, messages = content.get("message_id"), content.get("messages")
    if (
        not isinstance(sender, str)
        or not sender.startswith("@")
        or sender_server(sender) != origin
        or not isinstance(event_type, str)
        or not isinstance(message_id, str)
        or not message_id
        or not isinstance(messages, dict)
    ):
        return
    local: list[tuple[str, str, dict[str, Any]]] = []
    for user_id, devices in messages.items():
        if not isinstance(devices, dict) or not api.is_local_user(user_id):
            continue
        for target, message_content in devices.items():
            if isinstance(message_content, dict):
                message = {"sender": sender, "type": event_type, "content": message_content}
                local.extend((user_id, d, message) for d in _local_targets(api, user_id, target))
    with api.e2ee.atomic():
        if not api.e2ee.first_receipt(origin, message_id, api.now_ms()):
            return  # delivered before: a retried transaction
        api.e2ee.put_to_device(local)
    if local:
        api.e2ee_changed()


def sync_to_device(
    api: ClientAPI, user_id: str, device_id: str, *, since: int, upto: int
) -> tuple[list[dict[str, Any]], int]:
    """Acknowledge up to ``since``; the messages in ``(since, upto]`` and where they end.

    Returns the messages (at most MAX_PER_SYNC) and the account position the
    response's ``next_batch`` may claim: ``upto``, or the last message given
    when more are waiting.
    """
    if since > upto:
        since = 0  # not a token of ours
    elif since:
        api.e2ee.ack_to_device(user_id, device_id, since)
    rows = api.e2ee.to_device_messages(
        user_id, device_id, after=since, upto=upto, limit=MAX_PER_SYNC
    )
    if len(rows) == MAX_PER_SYNC:
        upto = rows[-1][0]
    return [message for _, message in rows], upto
