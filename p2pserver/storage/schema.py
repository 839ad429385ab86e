"""The database schema, as an ordered list of migrations.

``MIGRATIONS[i]`` takes a database at schema version ``i`` to ``i + 1``;
:class:`p2pserver.storage.database.Database` runs the missing steps in
order, each in one transaction with its version bump. Never edit a released
step: append a new one.

Theory of the tables (version 1):
- ``events``: every PDU we hold, immutable, as canonical JSON, plus what we
  decided about it: ``status`` (accepted, soft_failed, rejected, outlier),
  the rejection reason, whether the stored PDU is the redacted form (content
  hash mismatch), its ``stream_ordering`` (position in the timeline stream;
  NULL for outliers and rejected events) and the state groups of the state
  before and after it (NULL for outliers, whose state we do not know).
  ``event_nid`` is the insertion order: an event is only stored after its
  auth events, so it is a topological order of the auth DAG.
- ``event_edges`` (prev_events, by ID since a prev event may be missing) and
  ``event_auth`` (auth events, by nid, only for non-rejected events, whose
  auth events are all stored) are the DAG.
- ``forward_extremities``: per room, the accepted events without a known
  child; local events point at them.
- State groups: the state at an event is a group. A group is either a
  snapshot (``prev_group`` NULL, one row per state key) or a delta on
  ``prev_group`` (rows only for keys that changed; ``event_nid`` NULL means
  the key was removed). ``hops`` and ``chain_rows`` count the deltas and
  their rows back to the snapshot; a new snapshot is taken only when the
  chain has grown as large as the state itself (or too many hops), so a
  5,000-member room costs about two rows per state event, not 5,000, and
  loading any group reads at most about twice its size.
  ``state_keys`` interns ``(type, state_key)`` pairs so a row is three
  integers.
- ``rooms`` points at the group of the current state; ``current_state``
  materialises it for queries and ``joined_servers`` counts the joined
  members per server (who receives our events).
- ``redactions``: accepted m.room.redaction events by target.
- ``outbound_queue``: per destination, PDUs (by nid) and EDUs to send, in
  order; rows are deleted once the destination acknowledged them.

Later steps: 2 and 3 are the client API's tables
(:mod:`p2pserver.storage.accounts`, :mod:`p2pserver.storage.e2ee`); 4 indexes
the events held redacted (``events_stripped``), which are fetched again
whole once we may see them; 5 adds ``event_gaps``: per room, the prev events
we lack of events accepted on state taken from a peer (a gap in our DAG),
with how often filling each was tried; 6 keeps the inviting server's
stripped state of each invite (:mod:`p2pserver.storage.invites`); 7 marks
which gaps are filled by themselves (``auto``: events missed while joined)
and which are history from before our join, fetched only when a client
pages back to it (backward extremities); 8
records events held whole after clients saw them stripped (client API); 9
keeps our users' knocks on rooms whose DAG we do not hold
(:mod:`p2pserver.storage.knocks`).
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

from p2pserver.storage.accounts import accounts_v1, accounts_v2
from p2pserver.storage.e2ee import e2ee_v1
from p2pserver.storage.invites import invites_v1
from p2pserver.storage.knocks import knocks_v1

Migration = Callable[[apsw.Connection], None]

_V1 = """
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    create_event_id TEXT NOT NULL,
    current_state_group INTEGER REFERENCES state_groups(group_nid) DEFERRABLE INITIALLY DEFERRED
) WITHOUT ROWID;

CREATE TABLE events (
    event_nid INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('accepted', 'soft_failed', 'rejected', 'outlier')),
    rejected_reason TEXT,
    redacted INTEGER NOT NULL DEFAULT 0,
    stream_ordering INTEGER UNIQUE,
    state_before INTEGER REFERENCES state_groups(group_nid) DEFERRABLE INITIALLY DEFERRED,
    state_after INTEGER REFERENCES state_groups(group_nid) DEFERRABLE INITIALLY DEFERRED,
    pdu BLOB NOT NULL,
    CHECK ((status = 'rejected') = (rejected_reason IS NOT NULL))
);
CREATE INDEX events_room_state_key ON events(room_id, type, state_key)
    WHERE state_key IS NOT NULL;
CREATE INDEX events_room_depth ON events(room_id, depth);

CREATE TABLE event_edges (
    event_nid INTEGER NOT NULL REFERENCES events(event_nid),
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, prev_event_id)
) WITHOUT ROWID;
CREATE INDEX event_edges_prev ON event_edges(prev_event_id);

CREATE TABLE event_auth (
    event_nid INTEGER NOT NULL REFERENCES events(event_nid),
    auth_nid INTEGER NOT NULL REFERENCES events(event_nid),
    PRIMARY KEY (event_nid, auth_nid)
) WITHOUT ROWID;

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_nid INTEGER NOT NULL REFERENCES events(event_nid),
    PRIMARY KEY (room_id, event_nid)
) WITHOUT ROWID;

CREATE TABLE state_keys (
    key_nid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    UNIQUE (type, state_key)
);

CREATE TABLE state_groups (
    group_nid INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group INTEGER REFERENCES state_groups(group_nid),
    hops INTEGER NOT NULL CHECK (hops >= 0),
    chain_rows INTEGER NOT NULL CHECK (chain_rows >= 0),
    CHECK ((prev_group IS NULL) = (hops = 0))
);

CREATE TABLE state_group_entries (
    group_nid INTEGER NOT NULL REFERENCES state_groups(group_nid),
    key_nid INTEGER NOT NULL REFERENCES state_keys(key_nid),
    event_nid INTEGER REFERENCES events(event_nid) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (group_nid, key_nid)
) WITHOUT ROWID;

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_nid INTEGER NOT NULL REFERENCES events(event_nid),
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
) WITHOUT ROWID;

CREATE TABLE joined_servers (
    room_id TEXT NOT NULL,
    server_name TEXT NOT NULL,
    joined_members INTEGER NOT NULL CHECK (joined_members > 0),
    PRIMARY KEY (room_id, server_name)
) WITHOUT ROWID;

CREATE TABLE redactions (
    redaction_nid INTEGER PRIMARY KEY REFERENCES events(event_nid),
    redacts TEXT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions(redacts);

CREATE TABLE outbound_queue (
    queue_nid INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    event_nid INTEGER REFERENCES events(event_nid),
    edu BLOB,
    CHECK ((event_nid IS NULL) != (edu IS NULL))
);
CREATE INDEX outbound_queue_destination ON outbound_queue(destination, queue_nid);
"""


def _v1(conn: apsw.Connection) -> None:
    conn.execute(_V1)


def _stripped_index(conn: apsw.Connection) -> None:
    """Step 4: the events held only redacted, per room, found without a scan."""
    conn.execute("CREATE INDEX events_stripped ON events(room_id, depth) WHERE redacted = 1")


def _gaps(conn: apsw.Connection) -> None:
    """Step 5: the prev events we lack of events accepted after a gap."""
    conn.execute(
        """CREATE TABLE event_gaps (
               room_id TEXT NOT NULL,
               event_id TEXT NOT NULL,
               attempts INTEGER NOT NULL DEFAULT 0,
               PRIMARY KEY (room_id, event_id)
           ) WITHOUT ROWID"""
    )


def _history_points(conn: apsw.Connection) -> None:
    """Step 7: a gap is filled by itself (auto) or is history before our join.

    Rooms joined before this step recorded no history points: every prev
    event of our DAG that we lack (or hold only as an outlier) becomes one,
    except those already recorded as gaps to fill.
    """
    conn.execute("ALTER TABLE event_gaps ADD COLUMN auto INTEGER NOT NULL DEFAULT 1")
    conn.execute(
        """INSERT OR IGNORE INTO event_gaps (room_id, event_id, auto)
           SELECT DISTINCT e.room_id, g.prev_event_id, 0
           FROM event_edges g JOIN events e ON e.event_nid = g.event_nid
           LEFT JOIN events p ON p.event_id = g.prev_event_id
           WHERE e.status IN ('accepted', 'soft_failed')
             AND (p.event_id IS NULL OR p.status = 'outlier')"""
    )


MIGRATIONS: tuple[Migration, ...] = (
    _v1,
    accounts_v1,
    e2ee_v1,
    _stripped_index,
    _gaps,
    invites_v1,
    _history_points,
    accounts_v2,
    knocks_v1,
)
