"""Knocks of our users on rooms whose DAG we do not hold.

A user knocks on a room that only other servers are in through
``make_knock`` / ``send_knock`` (:mod:`p2pserver.federation`). The knock
is an event of the room, but we are given no more of the room than its
stripped state (``knock_room_state``, kept by
:class:`~p2pserver.storage.invites.InviteStates` under the knock's event
ID), so the user's membership cannot come from a room's current state as
every other membership does. It is recorded here instead, for /sync's
``knock`` section, until the room answers: an invite (or a join) puts the
room's DAG here, whose membership then wins.

Rules:
- One row per (user, room): a new knock replaces an older one.
- ``stream`` is a position on the account stream
  (:meth:`~p2pserver.storage.accounts.AccountStore.next_stream`), so an
  incremental /sync sees a knock made since its token.
- ``via`` is the server the knock went through: the one to ask when the
  user withdraws it (``make_leave`` / ``send_leave``).

Schema step :func:`knocks_v1` (appended to
:data:`p2pserver.storage.schema.MIGRATIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

if TYPE_CHECKING:  # database.py imports schema.py, which imports this module
    from p2pserver.storage.database import Database

__all__ = ["RemoteKnock", "RemoteKnocks", "knocks_v1"]


def knocks_v1(conn: apsw.Connection) -> None:
    """Schema step: our users' knocks on rooms whose DAG we do not hold."""
    conn.execute(
        """CREATE TABLE remote_knocks (
               user_id TEXT NOT NULL,
               room_id TEXT NOT NULL,
               event_id TEXT NOT NULL,
               via TEXT NOT NULL,
               stream INTEGER NOT NULL,
               PRIMARY KEY (user_id, room_id)
           ) WITHOUT ROWID"""
    )


@dataclass(frozen=True)
class RemoteKnock:
    room_id: str
    event_id: str
    via: str
    stream: int


class RemoteKnocks:
    """The ``remote_knocks`` table; writes happen inside the caller's transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, user_id: str, knock: RemoteKnock) -> None:
        self.db.execute(
            """INSERT OR REPLACE INTO remote_knocks (user_id, room_id, event_id, via, stream)
               VALUES (?, ?, ?, ?, ?)""",
            (user_id, knock.room_id, knock.event_id, knock.via, knock.stream),
        )

    def remove(self, user_id: str, room_id: str) -> None:
        self.db.execute(
            "DELETE FROM remote_knocks WHERE user_id = ? AND room_id = ?", (user_id, room_id)
        )

    def get(self, user_id: str, room_id: str) -> RemoteKnock | None:
        row = self.db.query_one(
            """SELECT room_id, event_id, via, stream FROM remote_knocks
               WHERE user_id = ? AND room_id = ?""",
            (user_id, room_id),
        )
        return RemoteKnock(row[0], row[1], row[2], int(row[3])) if row else None

    def of_user(self, user_id: str) -> list[RemoteKnock]:
        return [
            RemoteKnock(r[0], r[1], r[2], int(r[3]))
            for r in self.db.query(
                """SELECT room_id, event_id, via, stream FROM remote_knocks
                   WHERE user_id = ? ORDER BY room_id""",
                (user_id,),
            )
        ]
