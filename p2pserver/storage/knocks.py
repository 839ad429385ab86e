"""Knocks of our users on rooms whose DAG we do not hold.

A user knocks on a room that only other servers are in through
``make_knock`` / ``send_knock`` (:mod:`p2pserver.federation`). The knock
is an event of the room, but we are given no more of the room than its
stripped state (``knock_room_state``, kept by
:class:`~p2pserver.storage.invites.InviteStates` under the knock's event
ID), so the user's membership cannot come from a room's current state as
every other membership does. It is recorded here instead, for /sync's
``knock`` section, and so is its end when the user withdraws it (or the
room refuses the withdrawal: the knock is over), for the ``leave`` section.
A row stands for the user's membership until the room's own events here
catch up with it (we hold the row's event: an invite brought the room's
state), as :mod:`p2pserver.clientapi.syncing` decides.

Rules:
- One row per (user, room): a new knock, or its end, replaces the older row.
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
    from p2pserver.storage.store import Store

__all__ = ["RemoteKnock", "RemoteKnocks", "knocks_v1", "standing_knocks"]


def knocks_v1(conn: apsw.Connection) -> None:
    """Schema step: our users' knocks on rooms whose DAG we do not hold."""
    conn.execute(
        """CREATE TABLE remote_knocks (
               user_id TEXT NOT NULL,
               room_id TEXT NOT NULL,
               event_id TEXT NOT NULL,
               membership TEXT NOT NULL CHECK (membership IN ('knock', 'leave')),
               via TEXT NOT NULL,
               stream INTEGER NOT NULL,
               PRIMARY KEY (user_id, room_id)
           ) WITHOUT ROWID"""
    )


@dataclass(frozen=True)
class RemoteKnock:
    room_id: str
    event_id: str
    # knock, or leave once it was withdrawn
    membership: str
    via: str
    stream: int


class RemoteKnocks:
    """The ``remote_knocks`` table; writes happen inside the caller's transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, user_id: str, knock: RemoteKnock) -> None:
        self.db.execute(
            """INSERT OR REPLACE INTO remote_knocks
                   (user_id, room_id, event_id, membership, via, stream)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (user_id, knock.room_id, knock.event_id, knock.membership, knock.via, knock.stream),
        )

    def remove(self, user_id: str, room_id: str) -> None:
        self.db.execute(
            "DELETE FROM remote_knocks WHERE user_id = ? AND room_id = ?", (user_id, room_id)
        )

    def get(self, user_id: str, room_id: str) -> RemoteKnock | None:
        row = self.db.query_one(
            """SELECT room_id, event_id, membership, via, stream FROM remote_knocks
               WHERE user_id = ? AND room_id = ?""",
            (user_id, room_id),
        )
        return RemoteKnock(row[0], row[1], row[2], row[3], int(row[4])) if row else None

    def of_user(self, user_id: str) -> list[RemoteKnock]:
        return [
            RemoteKnock(r[0], r[1], r[2], r[3], int(r[4]))
            for r in self.db.query(
                """SELECT room_id, event_id, membership, via, stream FROM remote_knocks
                   WHERE user_id = ? ORDER BY room_id""",
                (user_id,),
            )
        ]


def standing_knocks(store: Store, user_id: str) -> dict[str, RemoteKnock]:
    """The user's rows that still stand for their membership, by room.

    Once we hold a row's event (an invite brought the room's state, which
    holds it), the room's own membership here is at least as new: it wins.
    """
    rows = RemoteKnocks(store.db).of_user(user_id)
    held = store.event_metas([r.event_id for r in rows])
    return {r.room_id: r for r in rows if r.event_id not in held}
