"""Durable storage for a node: one SQLite database (apsw, WAL) per node.

- :mod:`.database`: connection, transactions, schema migrations.
- :mod:`.schema`: the tables, as migrations.
- :mod:`.state_groups`: compact state at every event (deltas).
- :mod:`.auth_chains`: auth chains and auth chain difference over the DAG.
- :mod:`.outbound`: per-destination outbound queue.
- :mod:`.store`: :class:`Store`, the facade the room engine uses.

Storage is synchronous and holds no protocol logic: the room engine
(:mod:`p2pserver.engine`) decides, storage records and answers.
"""

from p2pserver.storage.database import Database, SchemaTooNew, StorageError
from p2pserver.storage.store import EventMeta, EventStatus, RoomRecord, Store

__all__ = [
    "Database",
    "EventMeta",
    "EventStatus",
    "RoomRecord",
    "SchemaTooNew",
    "StorageError",
    "Store",
]
