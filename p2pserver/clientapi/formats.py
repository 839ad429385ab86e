"""How events look to clients (spec: Client-Server API, "Room Event Format").

Pure functions from an :class:`~p2pserver.rooms.events.Event` to the JSON a
client receives:

- :func:`client_event`: a ``ClientEvent``: ``content``, ``event_id``,
  ``origin_server_ts``, ``room_id`` (left out inside /sync, where the room
  is the key: ``ClientEventWithoutRoomID``), ``sender``, ``state_key`` for
  state events, ``type`` and ``unsigned`` (``age`` plus what the caller
  knows: ``transaction_id`` for the sending device, ``prev_content`` for
  state, ``redacted_because``). Redactions also carry their target as a
  top-level ``redacts`` in every room version, as the spec asks servers to
  do for older clients (v11 moved it into ``content``).
- :func:`stripped_state`: a ``StrippedStateEvent`` (invites, knocks).
- :func:`federation_event`: ``event_format: federation`` (the PDU as stored,
  with its event ID).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pserver.rooms.events import Event

__all__ = ["client_event", "federation_event", "stripped_state"]


def client_event(
    event: Event,
    *,
    now_ms: int,
    with_room_id: bool = True,
    unsigned: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "content": event.content,
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "sender": event.sender,
        "type": event.type,
    }
    if with_room_id:
        out["room_id"] = event.room_id
    if event.state_key is not None:
        out["state_key"] = event.state_key
    redacts = event.redacts
    if redacts is not None:
        out["redacts"] = redacts
    extra: dict[str, Any] = {"age": max(0, now_ms - event.origin_server_ts)}
    if unsigned:
        extra.update(unsigned)
    out["unsigned"] = extra
    return out


def stripped_state(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(event, Event):  # already stripped (another server's invite_room_state)
        return dict(event)
    return {
        "type": event.type,
        "state_key": event.state_key if event.state_key is not None else "",
        "content": event.content,
        "sender": event.sender,
    }


def federation_event(event: Event) -> dict[str, Any]:
    pdu = event.get_pdu_json()
    pdu["event_id"] = event.event_id
    return pdu
