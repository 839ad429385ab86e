"""Queries (profile, devices, end-to-end keys) and EDUs: hooks other code fills in.

The client API and end-to-end encryption come later; the federation layer
defines the methods, checks their request shapes and routes them here.

- :class:`QueryHandler` is the hook for ``query_profile``, ``user_devices``,
  ``keys_query``, ``keys_claim`` and ``query_directory``. Bodies and answers
  are the spec's (Server-Server API "Querying for information", "End-to-End
  Encryption"). Requests for users or aliases of other servers never reach
  it: the server answers M_NOT_FOUND (profile, devices, aliases) or leaves
  them out (keys).
- :class:`DefaultQueries` answers from what exists now: a profile is the
  display name and avatar of the user's most recent membership event in
  any room we hold; no user has devices or keys yet, and there are no aliases.
- EDU handlers (``Federation.on_edu(edu_type, handler)``) get
  ``(origin, content)`` for each EDU of their type, after the server has
  refused any that speaks for a user of another server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from p2pserver.engine.engine import NotFound
from p2pserver.storage.store import EventStatus, Store

EduHandler = Callable[[str, Mapping[str, Any]], Awaitable[None]]
"""``async def handler(origin, content)`` for one EDU type."""


class QueryHandler(Protocol):
    async def query_profile(self, origin: str, user_id: str, field: str | None) -> dict[str, Any]:
        """``{"displayname": ..., "avatar_url": ...}`` (only ``field`` if given)."""
        ...

    async def user_devices(self, origin: str, user_id: str) -> dict[str, Any]:
        """``{"user_id", "stream_id", "devices": [...]}`` (master/self-signing keys optional)."""
        ...

    async def keys_query(self, origin: str, device_keys: Mapping[str, list[str]]) -> dict[str, Any]:
        """``{"device_keys": {user_id: {device_id: keys}}}`` for the local users asked."""
        ...

    async def keys_claim(
        self, origin: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        """``{"one_time_keys": {user_id: {device_id: {key_id: key}}}}``."""
        ...

    async def query_directory(self, origin: str, alias: str) -> dict[str, Any]:
        """``{"room_id", "servers"}`` for a local room alias (M_NOT_FOUND if none)."""
        ...


class DefaultQueries:
    """Answers from the room store alone (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def query_profile(self, origin: str, user_id: str, field: str | None) -> dict[str, Any]:
        latest = None
        for room_id in self.store.room_ids():
            for meta in self.store.membership_events(room_id, user_id):
                if meta.status == EventStatus.ACCEPTED and (
                    latest is None or (meta.stream_ordering or 0) > (latest.stream_ordering or 0)
                ):
                    latest = meta
        event = self.store.load_event(latest.event_id) if latest is not None else None
        if event is None:
            raise NotFound(f"no profile for {user_id}")
        profile = {
            k: event.content[k]
            for k in ("displayname", "avatar_url")
            if isinstance(event.content.get(k), str)
        }
        if field is not None:
            if field not in profile:
                raise NotFound(f"{user_id} has no {field}")
            return {field: profile[field]}
        return profile

    async def user_devices(self, origin: str, user_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "stream_id": 0, "devices": []}

    async def keys_query(self, origin: str, device_keys: Mapping[str, list[str]]) -> dict[str, Any]:
        return {"device_keys": {user_id: {} for user_id in device_keys}}

    async def keys_claim(
        self, origin: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        return {"one_time_keys": {}}

    async def query_directory(self, origin: str, alias: str) -> dict[str, Any]:
        raise NotFound(f"room alias {alias} not found")
