"""The inviting server's stripped state of the rooms our users are invited to.

A federation ``/invite`` carries ``invite_room_state``: the stripped state
events (type, state_key, content, sender) the inviting server shows with
the invite. Until one of our users joins, we hold the room's state events
only redacted (we may not see them), so the invitee's client gets this
list instead (:mod:`p2pserver.clientapi.syncing`).

Rules:
- Rows are keyed by the invite event's ID; one invite, one list.
- The list is untrusted and only ever shown, never used to authorise
  anything; :mod:`p2pserver.federation.protocol` checks its shape and size
  before it is stored here.

Schema step :func:`invites_v1` (appended to
:data:`p2pserver.storage.schema.MIGRATIONS`): ``invite_room_state``
(invite event ID -> room ID, the list as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import apsw

if TYPE_CHECKING:  # database.py imports schema.py, which imports this module
    from p2pserver.storage.database import Database

__all__ = ["InviteStates", "invites_v1"]


def invites_v1(conn: apsw.Connection) -> None:
    """Schema step: the inviting server's stripped state, per invite event."""
    conn.execute(
        """CREATE TABLE invite_room_state (
               event_id TEXT PRIMARY KEY,
               room_id TEXT NOT NULL,
               events TEXT NOT NULL
           ) WITHOUT ROWID"""
    )


class InviteStates:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, event_id: str, room_id: str, events: Sequence[Mapping[str, Any]]) -> None:
        sql = (
            "INSERT OR REPLACE INTO invite_room_state (event_id, room_id, events) VALUES (?, ?, ?)"
        )
        row = (event_id, room_id, json.dumps(list(events)))
        if self.db.in_transaction:
            self.db.execute(sql, row)
        else:
            with self.db.transaction():
                self.db.execute(sql, row)

    def get(self, event_id: str) -> list[dict[str, Any]] | None:
        """The stripped state stored with an invite, or None."""
        row = self.db.query_one(
            "SELECT events FROM invite_room_state WHERE event_id = ?", (event_id,)
        )
        return json.loads(row[0]) if row else None
