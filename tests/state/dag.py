"""Forked test rooms for state resolution: deterministic, signed event DAGs.

A :class:`Dag` is one room. ``dag.root()`` is a :class:`Branch` holding only
the create event; ``branch.send(...)`` builds a signed event on top of the
branch (prev_events = the branch head, auth_events = the auth events
selection against the branch's state), checks it like a receiving server
would (its own auth events, then the branch state) and applies it.
``branch.fork()`` starts a concurrent branch from the same point. The state
after a branch is ``branch.state`` (key -> event ID): the state sets that
state resolution merges.

Everything is deterministic: signing keys derive from server names, and
the clock advances by one millisecond per event unless told otherwise, so
:mod:`tests.fixtures.state.make_fixtures` reproduces its files exactly.
Users are ``@name:<hex key>``; by default each user has a server of their
own, ``server=`` puts several on one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from p2pserver.rooms.auth import (
    auth_types_for_event,
    check_auth_rules,
    create_event_id_for_room,
    select_auth_event_ids,
)
from p2pserver.rooms.builder import build_event
from p2pserver.rooms.events import Event, StateKey
from p2pserver.rooms.power_levels import CREATE_KEY
from p2pserver.rooms.room_versions import RoomVersion
from p2pserver.rooms.signing import SigningKey


def signing_key(server: str) -> SigningKey:
    return SigningKey.from_seed(
        hashlib.sha256(b"p2pserver state tests " + server.encode()).digest()
    )


class Dag:
    """One test room: its events (in creation order), names and users."""

    def __init__(
        self,
        version: RoomVersion,
        creator: str = "alice",
        *,
        start_ts: int = 1_000_000,
        room_name: str = "room",
    ) -> None:
        self.version = version
        self.events: dict[str, Event] = {}
        self.names: dict[str, str] = {}  # event ID -> name given to send()
        self.by_name: dict[str, Event] = {}
        self._keys: dict[str, SigningKey] = {}
        self._users: dict[str, tuple[str, str]] = {}  # name -> (user ID, server)
        self.clock = start_ts
        self.creator = self.user(creator)
        content: dict[str, Any] = {"room_version": version.identifier}
        if not version.use_room_create_sender:
            content["creator"] = self.creator
        room_id = None
        if not version.room_id_is_create_event_hash:
            room_id = f"!{room_name}:{self._server_of(creator)}"
        create = build_event(
            version,
            signing_key=self._key(self._server_of(creator)),
            sender=self.creator,
            type="m.room.create",
            content=content,
            room_id=room_id,
            state_key="",
            origin_server_ts=self._tick(None),
        )
        self.create = create
        self.room_id: str = create.room_id
        self._record("create", create)

    # -- users and keys -----------------------------------------------------------------

    def user(self, name: str, server: str | None = None) -> str:
        """The user ID for ``name`` (on its own server unless ``server`` given)."""
        known = self._users.get(name)
        if known is None:
            server = server or name
            known = (f"@{name}:{self._key(server).server_name}", server)
            self._users[name] = known
        return known[0]

    def _server_of(self, name: str) -> str:
        self.user(name)
        return self._users[name][1]

    def _key(self, server: str) -> SigningKey:
        key = self._keys.get(server)
        if key is None:
            key = self._keys[server] = signing_key(server)
        return key

    def name_of(self, user_id: str) -> str:
        for name, (known, _) in self._users.items():
            if known == user_id:
                return name
        raise KeyError(user_id)

    def _tick(self, ts: int | None) -> int:
        if ts is None:
            self.clock += 1
            return self.clock
        self.clock = max(self.clock, ts)
        return ts

    def _record(self, name: str | None, event: Event) -> None:
        self.events[event.event_id] = event
        if name is not None:
            if name in self.by_name:
                raise ValueError(f"event name {name!r} used twice")
            self.by_name[name] = event
            self.names[event.event_id] = name

    def __getitem__(self, name: str) -> Event:
        return self.by_name[name]

    # -- branches -------------------------------------------------------------------------

    def root(self) -> Branch:
        return Branch(self, {CREATE_KEY: self.create.event_id}, [self.create.event_id], 1)

    def power_levels(self, users: dict[str, int], **extra: Any) -> dict[str, Any]:
        """Power-levels content for user names; v12 leaves creators out (rule 10.4)."""
        levels = {
            self.user(name): level
            for name, level in users.items()
            if not (self.version.privileged_creators and self.user(name) == self.creator)
        }
        return {"users": levels, **extra}

    def start(self, members: tuple[str, ...] = (), join_rule: str = "public") -> Branch:
        """create, the creator's join, power levels (creator 100), join rules,
        then each of ``members`` joins."""
        branch = self.root()
        creator = self.name_of(self.creator)
        branch.member("creator-join", creator, creator, "join")
        branch.send(
            "power-levels", creator, "m.room.power_levels", self.power_levels({creator: 100}), ""
        )
        branch.send("join-rules", creator, "m.room.join_rules", {"join_rule": join_rule}, "")
        for name in members:
            branch.member(f"{name}-join", name, name, "join")
        return branch


class Branch:
    """A line of events on top of a point of the DAG, with the state after it."""

    def __init__(self, dag: Dag, state: dict[StateKey, str], heads: list[str], depth: int) -> None:
        self.dag = dag
        self.state = state
        self.heads = heads
        self.depth = depth

    def fork(self) -> Branch:
        return Branch(self.dag, dict(self.state), list(self.heads), self.depth)

    def state_events(self) -> dict[StateKey, Event]:
        return {key: self.dag.events[event_id] for key, event_id in self.state.items()}

    def build(
        self,
        sender: str,
        type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        ts: int | None = None,
        auth_events: list[str] | None = None,
    ) -> Event:
        """A signed event on top of the branch (not checked or applied)."""
        dag = self.dag
        sender_id = dag.user(sender)
        if auth_events is None:
            auth_events = select_auth_event_ids(
                dag.version, type, sender_id, state_key, content, self.state
            )
        return build_event(
            dag.version,
            signing_key=dag._key(dag._server_of(sender)),
            sender=sender_id,
            type=type,
            content=content,
            room_id=dag.room_id,
            prev_events=self.heads,
            auth_events=auth_events,
            state_key=state_key,
            depth=self.depth + 1,
            origin_server_ts=dag._tick(ts),
        )

    def auth_map(self, event: Event, state: dict[StateKey, str]) -> dict[StateKey, Event]:
        """The auth map the rules need for ``event`` out of a key -> ID map."""
        dag = self.dag
        keys = auth_types_for_event(
            dag.version, event.type, event.sender, event.state_key, event.content
        )
        auth = {k: dag.events[state[k]] for k in keys if k in state}
        if dag.version.room_id_is_create_event_hash:  # named by the room ID
            auth[CREATE_KEY] = dag.events[create_event_id_for_room(dag.room_id)]
        return auth

    def check(self, event: Event) -> None:
        """Raise AuthError unless ``event`` passes against its auth events and the branch."""
        own = {}
        for auth_id in event.auth_event_ids:
            auth_event = self.dag.events[auth_id]
            assert auth_event.state_key is not None
            own[(auth_event.type, auth_event.state_key)] = auth_event.event_id
        check_auth_rules(event, self.auth_map(event, own))
        check_auth_rules(event, self.auth_map(event, self.state))

    def apply(self, name: str | None, event: Event) -> Event:
        self.dag._record(name, event)
        self.heads = [event.event_id]
        self.depth = event.depth
        if event.state_key is not None:
            self.state[(event.type, event.state_key)] = event.event_id
        return event

    def send(
        self,
        name: str | None,
        sender: str,
        type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        ts: int | None = None,
        check: bool = True,
    ) -> Event:
        """Build, check (unless told not to) and apply an event."""
        event = self.build(sender, type, content, state_key, ts=ts)
        if check:
            self.check(event)
        return self.apply(name, event)

    def member(
        self,
        name: str | None,
        sender: str,
        target: str,
        membership: str,
        *,
        ts: int | None = None,
        check: bool = True,
        **content: Any,
    ) -> Event:
        return self.send(
            name,
            sender,
            "m.room.member",
            {"membership": membership, **content},
            self.dag.user(target),
            ts=ts,
            check=check,
        )
