"""Fuzzing the federation request handlers with bad input (exhaustive tables, no randomness).

The rule under test: whatever a peer sends, the answer is a result or a
:class:`~p2pserver.rooms.errors.MatrixError` with a specific errcode (never
M_UNKNOWN, which is what the transport makes of any other exception), it
comes in bounded time, the database stays whole, and the room keeps
working. Requests go to :meth:`FederationServer.handle` directly (as the
transport calls it after CBOR framing), so a failure shows its traceback;
every value sent is one the framing lets through (JSON-shaped, integers
within 64 bits, nesting under :data:`~p2pserver.transport.framing.MAX_DEPTH`).
The node under test has its client API wired in (:func:`connect`), so the
real query and EDU handlers answer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from p2pserver.clientapi.http import Request
from p2pserver.clientapi.server import ClientAPI
from p2pserver.e2ee.federation import connect
from p2pserver.federation import protocol as p
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.hashing import add_content_hash, compute_event_id
from p2pserver.rooms.signing import SigningKey, sign_event
from p2pserver.rooms.validation import MAX_NESTING
from p2pserver.transport import framing
from p2pserver.transport.framing import Response, check_value, encode_response
from tests.nesting import nested

from .conftest import (
    CONFIG,
    Node,
    cluster,
    forged_event,
    run,
    set_power,
    shared_room,
    start_all,
    txn,
    wait_until,
)

# How long (trio time, MockClock) one request may take before it counts as a hang.
REQUEST_DEADLINE = 120.0


# Wrong values of every JSON type, and the edges the framing still lets through.
JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    2**53,
    2**63,
    2**64 - 1,
    -(2**63) - 1,
    1.5,
    "",
    "x",
    "$" + "A" * 43,
    "!nowhere:example.org",
    "@nobody:example.org",
    "x" * 70_000,
    [],
    [None],
    [1, "x", {}],
    ["$" + "B" * 43] * 200,
    {},
    {"a": None},
    {"": []},
    nested(100),
]


class Fuzz:
    """Sends requests to ``node`` and collects every answer that breaks the rule."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.failures: list[str] = []

    async def send(self, origin: str, method: str, body: dict[str, Any]) -> Any:
        """The answer (a dict), an errcode (str), or None after recording a failure."""
        label = f"{method} from {origin[:8]}: {_short(body)}"
        try:
            with trio.fail_after(REQUEST_DEADLINE):
                answer = await self.node.fed.server.handle(origin, method, copy.deepcopy(body))
        except MatrixError as exc:
            if exc.errcode == "M_UNKNOWN":
                self.failures.append(f"{label}: M_UNKNOWN {exc.message}")
                return None
            return exc.errcode
        except trio.TooSlowError:
            self.failures.append(f"{label}: no answer in {REQUEST_DEADLINE}s")
            return None
        except Exception as exc:
            logging.getLogger(__name__).exception("%s", label)
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}"[:400])
            return None
        try:
            check_value(answer)
            encode_response(Response(1, ok=answer), limit=2**40)
        except Exception as exc:
            self.failures.append(f"{label}: unencodable answer: {exc}"[:400])
            return None
        return answer


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:160] + "..."


def variants(base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``base`` without each key, with each key set to each junk value, and empty."""
    yield {}
    yield {**base, "unexpected": JUNK[-1]}
    for key in base:
        yield {k: v for k, v in base.items() if k != key}
        for junk in JUNK:
            yield {**base, key: junk}


def resign(node: Node, pdu: dict[str, Any], room_id: str) -> dict[str, Any] | None:
    """``pdu`` with a fresh content hash and ``node``'s signature only (None: not
    canonical JSON, so it cannot be signed)."""
    version = node.store.room_version(room_id)
    assert version is not None
    pdu = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures")}
    try:
        add_content_hash(pdu)
        return sign_event(pdu, node.server_name, node.key, version)
    except MatrixError:
        return None


def event_of(
    node: Node,
    view: Node,
    room_id: str,
    event_type: str,
    content: dict[str, Any],
    state_key: str | None = None,
    sender: str | None = None,
) -> dict[str, Any] | None:
    """An event of ``node``'s user u1 (or ``sender``) on ``view``'s heads, signed by
    ``node`` (None: ``content`` is not canonical JSON, so it cannot be signed)."""
    heads = view.store.forward_extremities(room_id)
    sender = sender or node.user("u1")
    try:
        return forged_event(
            node, room_id, heads, event_type, content, state_key, sender=sender, view=view
        )
    except MatrixError:
        return None


class Viewer:
    """a's user u0 through a's client API: what a client sees must survive what peers sent."""

    def __init__(self, api: ClientAPI, user_id: str, room_id: str) -> None:
        self.api = api
        self.room_id = room_id
        api.accounts.create_user(user_id, None, 0)
        api.accounts.set_room_visibility(room_id, "public")
        self.token = api.login_device(user_id, "VIEWER", None, "127.0.0.1")["access_token"]
        self.since: str | None = None

    async def get(self, method: str, path: str, body: Any = None, **query: str) -> dict[str, Any]:
        request = Request(
            method,
            "/_matrix/client/v3" + path,
            {k: [v] for k, v in query.items()},
            {"authorization": f"Bearer {self.token}"},
            b"" if body is None else json.dumps(body).encode(),
        )
        response = await self.api.handle(request)
        assert response.status < 500, (method, path, response.body[:300])
        return json.loads(response.body)

    async def look(self, everything: bool = False) -> None:
        """An incremental sync and the room directory; with ``everything``, every room view."""
        answer = await self.get("GET", "/sync", **({"since": self.since} if self.since else {}))
        self.since = answer.get("next_batch", self.since)
        await self.get("POST", "/publicRooms", {"limit": 10})
        if not everything:
            return
        room = self.room_id
        full = await self.get("GET", "/sync", full_state="true")
        assert room in full["rooms"]["join"], full
        for path in ("/state", "/members", "/joined_members", "/aliases", "/state/m.room.name"):
            await self.get("GET", f"/rooms/{room}{path}")
        await self.get("GET", f"/rooms/{room}/messages", dir="b", limit="200")
        listed = await self.get("GET", "/publicRooms")
        assert room in [r["room_id"] for r in listed["chunk"]], listed
        await self.get("POST", "/user_directory/search", {"search_term": "u"})


@asynccontextmanager
async def setup(**config: Any):
    """a and b share a room (b's u1 has power 100); a has its client API wired in."""
    hub, (a, b) = cluster(2, config=dataclasses.replace(CONFIG, **config))
    api = ClientAPI(a.engine)
    a.api = api  # type: ignore[attr-defined]
    connect(api, a.fed)
    async with trio.open_nursery() as nursery:
        await start_all(nursery, [a, b])
        room_id = await shared_room([a, b])
        await set_power(a, room_id, {b.user("u1"): 100})
        await wait_until(
            lambda: a.store.forward_extremities(room_id) == b.store.forward_extremities(room_id)
        )
        yield a, b, room_id
        nursery.cancel_scope.cancel()


async def still_works(a: Node, b: Node, room_id: str, body: str) -> None:
    """The database is whole and the room carries messages both ways."""
    assert a.store.db.integrity_check() == []
    there = await a.engine.send_message(room_id, a.user("u0"), {"msgtype": "m.text", "body": body})
    back = await b.engine.send_message(room_id, b.user("u1"), {"msgtype": "m.text", "body": body})
    await wait_until(lambda: b.has(there) and a.has(back), timeout=60)


def test_request_bodies_with_wrong_types_missing_keys_and_junk(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR)

    async def main():
        async with setup() as (a, b, room_id):
            fuzz = Fuzz(a)
            head = a.store.forward_extremities(room_id)[0]
            me, stranger = b.server_name, SigningKey.generate().server_name
            version = a.store.room_version(room_id)
            assert version is not None
            name = {
                "type": "m.room.name",
                "state_key": "",
                "content": {"name": "n"},
                "sender": b.user("u1"),
            }
            invite = event_of(
                b, a, room_id, "m.room.member", {"membership": "invite"}, a.user("newbie")
            )
            leave = event_of(b, a, room_id, "m.room.member", {"membership": "leave"}, b.user("u1"))
            knock = event_of(
                b, a, room_id, "m.room.member", {"membership": "knock"}, b.user("k"), b.user("k")
            )
            join = event_of(
                b, a, room_id, "m.room.member", {"membership": "join"}, b.user("j"), b.user("j")
            )

            assert invite and leave and knock and join

            def handshake(pdu: dict[str, Any]) -> dict[str, Any]:
                return {
                    "room_id": room_id,
                    "event_id": compute_event_id(pdu, version),
                    "event": pdu,
                }

            bases: dict[str, dict[str, Any]] = {
                p.SEND_TRANSACTION: txn(me, [], [{"edu_type": "m.typing", "content": {}}]),
                p.GET_MISSING_EVENTS: {
                    "room_id": room_id,
                    "earliest_events": [],
                    "latest_events": [head],
                    "limit": 5,
                    "min_depth": 0,
                },
                p.BACKFILL: {"room_id": room_id, "v": [head], "limit": 5},
                p.EVENT: {"event_id": head},
                p.STATE_IDS: {"room_id": room_id, "event_id": head},
                p.STATE: {"room_id": room_id, "event_id": head},
                p.EVENT_AUTH: {"room_id": room_id, "event_id": head},
                p.MAKE_JOIN: {"room_id": room_id, "user_id": b.user("new"), "ver": ["12"]},
                p.MAKE_LEAVE: {"room_id": room_id, "user_id": b.user("u1")},
                p.MAKE_KNOCK: {"room_id": room_id, "user_id": b.user("new"), "ver": ["12"]},
                p.SEND_JOIN: handshake(join),
                p.SEND_LEAVE: handshake(leave),
                p.SEND_KNOCK: handshake(knock),
                p.INVITE: {
                    **handshake(invite),
                    "room_version": version.identifier,
                    "invite_room_state": [name],
                },
                p.QUERY_PROFILE: {"user_id": a.user("u0"), "field": "displayname"},
                p.USER_DEVICES: {"user_id": a.user("u0")},
                p.KEYS_QUERY: {"device_keys": {a.user("u0"): []}},
                p.KEYS_CLAIM: {"one_time_keys": {a.user("u0"): {"DEV": "signed_curve25519"}}},
                p.QUERY_DIRECTORY: {"room_alias": f"#x:{a.server_name}"},
                p.ROOM_HEADS: {"rooms": {room_id: [head]}},
            }
            for method, base in bases.items():
                for n, body in enumerate(variants(base)):
                    if method == p.SEND_TRANSACTION:
                        body = {**body, "txn_id": f"t{n}"} if "txn_id" in body else body
                    for origin in (me, stranger):
                        await fuzz.send(origin, method, body)
            # Junk one level down: the values of the maps a request carries.
            for junk in JUNK:
                nested = [
                    (p.KEYS_QUERY, {"device_keys": {a.user("u0"): junk}}),
                    (p.KEYS_QUERY, {"device_keys": {"not a user": [], a.user("u0"): [junk]}}),
                    (p.KEYS_CLAIM, {"one_time_keys": {a.user("u0"): junk}}),
                    (p.KEYS_CLAIM, {"one_time_keys": {a.user("u0"): {"DEV": junk}}}),
                    (p.KEYS_CLAIM, {"one_time_keys": {"nobody": {"DEV": "x"}}}),
                    (p.ROOM_HEADS, {"rooms": {room_id: junk}}),
                    (p.ROOM_HEADS, {"rooms": {"not a room": [head], room_id: [junk]}}),
                    (p.MAKE_JOIN, {**bases[p.MAKE_JOIN], "ver": [junk]}),
                    (
                        p.GET_MISSING_EVENTS,
                        {**bases[p.GET_MISSING_EVENTS], "latest_events": [junk]},
                    ),
                    (
                        p.INVITE,
                        {**bases[p.INVITE], "invite_room_state": [{**name, "content": junk}]},
                    ),
                    (p.INVITE, {**bases[p.INVITE], "invite_room_state": [junk]}),
                ]
                for method, body in nested:
                    await fuzz.send(me, method, body)
            assert fuzz.failures == [], "\n".join(fuzz.failures)
            await still_works(a, b, room_id, "after the request fuzz")

    run(main)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


# Content fields the auth rules, state resolution and the client API read,
# per event type (state_key "" unless given).
STATE_FIELDS: dict[str, list[str]] = {
    "m.room.power_levels": [
        "users",
        "users_default",
        "events",
        "events_default",
        "state_default",
        "ban",
        "kick",
        "redact",
        "invite",
        "notifications",
    ],
    "m.room.join_rules": ["join_rule", "allow"],
    "m.room.history_visibility": ["history_visibility"],
    "m.room.name": ["name"],
    "m.room.topic": ["topic"],
    "m.room.avatar": ["url"],
    "m.room.canonical_alias": ["alias", "alt_aliases"],
    "m.room.encryption": ["algorithm", "rotation_period_ms"],
    "m.room.server_acl": ["allow", "deny", "allow_ip_literals"],
    "m.room.guest_access": ["guest_access"],
    "m.room.third_party_invite": ["display_name", "public_key", "public_keys"],
    "m.room.create": ["room_version", "creator", "m.federate", "additional_creators"],
    "m.room.tombstone": ["body", "replacement_room"],
    "m.room.pinned_events": ["pinned"],
}
MEMBER_FIELDS = [
    "membership",
    "displayname",
    "avatar_url",
    "reason",
    "is_direct",
    "join_authorised_via_users_server",
    "third_party_invite",
]


# What each content field gets: junk, and junk one level down.
SOME_JUNK = [None, True, -1, "", "x", "@nobody:x", [], {}]
FIELD_VALUES = [
    *JUNK,
    {"@nobody:x": "100"},
    *({"k": junk} for junk in SOME_JUNK),
    *([junk] for junk in SOME_JUNK),
]


def pdu_variants(pdu: dict[str, Any]) -> Iterator[Any]:
    """``pdu`` with each key removed or set to junk, and its hashes and signatures mangled."""
    yield from JUNK
    for key in pdu:
        yield {k: v for k, v in pdu.items() if k != key}
        for junk in JUNK:
            yield {**pdu, key: junk}
    for junk in JUNK:
        yield {**pdu, "content": {**pdu["content"], "body": junk}}
        yield {**pdu, "hashes": {"sha256": junk}}
        yield {**pdu, "signatures": {next(iter(pdu["signatures"])): junk}}
        yield {**pdu, "signatures": {next(iter(pdu["signatures"])): {"ed25519:x": junk}}}
        yield {**pdu, "unsigned": {"age": junk}}
    yield {**pdu, "signatures": {}}
    yield {**pdu, "hashes": {"sha256": "!!not base64!!"}}
    yield {**pdu, "state_key": ""}  # a message as a state event
    yield {**pdu, "room_id": "!" + "C" * 43}  # a room nobody has
    yield {**pdu, "type": "m.room.create", "state_key": "", "content": {"room_version": "99"}}
    for junk in JUNK:
        yield {**pdu, "type": "m.room.create", "state_key": "", "content": {"room_version": junk}}


def test_pdus_with_wrong_field_types_unsigned_and_resigned(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR)

    async def main():
        # No periodic pull nor announcements: b would fetch every event a accepted in its name,
        # which costs time and tests nothing here.
        async with setup(sync_interval=10**6, announce_delay=10**6) as (a, b, room_id):
            fuzz = Fuzz(a)
            me = b.server_name
            other_room = await a.engine.create_room(a.user("u0"), {"preset": "public_chat"})
            viewer = Viewer(a.api, a.user("u0"), room_id)
            base = event_of(b, a, room_id, "m.room.message", {"msgtype": "m.text", "body": "b"})
            n = 0
            outcomes: list[dict[str, str]] = []

            async def send(pdu: Any) -> None:
                if pdu is None:
                    return  # could not be signed
                nonlocal n
                n += 1
                answer = await fuzz.send(me, p.SEND_TRANSACTION, txn(me, [pdu], txn_id=f"p{n}"))
                if isinstance(answer, dict):
                    assert set(answer) == {"pdus"}
                    outcomes.extend(answer["pdus"].values())

            for pdu in pdu_variants(base):
                await send(pdu)
                if isinstance(pdu, dict) and isinstance(pdu.get("content"), dict):
                    # Signed and hashed anew: it passes receipt's steps 2-3 and
                    # reaches the format, auth and state checks. On the current
                    # heads, unless those keys are what is mangled, so that the
                    # accepted ones do not pile up as forks.
                    if pdu.get("prev_events") == base["prev_events"]:
                        heads = a.store.forward_extremities(room_id)
                        pdu = {**pdu, "prev_events": heads}
                        if pdu.get("depth") == base["depth"]:
                            depths = [a.store.event_meta(h).depth for h in heads]  # type: ignore[union-attr]
                            pdu["depth"] = 1 + max(depths)
                    await send(resign(b, pdu, room_id))
            await send(event_of(b, a, other_room, "m.room.message", {"body": "not a member"}))
            await send(resign(b, {**base, "room_id": other_room}, room_id))
            # Signed state events with junk in each field that is read.
            power_key = ("m.room.power_levels", "")
            power = a.store.load_event(a.store.current_state(room_id)[power_key])
            assert power is not None
            for event_type, fields in STATE_FIELDS.items():
                state = a.store.current_state(room_id)
                current = (
                    a.store.load_event(state[(event_type, "")])
                    if (event_type, "") in state
                    else None
                )
                content = dict(current.content) if current is not None else {}
                for field in fields:
                    for value in FIELD_VALUES:
                        await send(
                            event_of(b, a, room_id, event_type, {**content, field: value}, "")
                        )
                        await viewer.look()
                        if a.store.current_state(room_id)[power_key] != power.event_id:
                            # b's user may have lost its power: a's creator restores it.
                            restored = await a.engine.send_event(
                                room_id, a.user("u0"), power.type, power.content, state_key=""
                            )
                            power = a.store.load_event(restored)
                            assert power is not None
            for field in MEMBER_FIELDS:
                for junk in JUNK:
                    for membership in ("join", "invite", "leave", "ban", "knock"):
                        content = {"membership": membership, field: junk}
                        # b's user joins again or changes its profile; the others
                        # are about another user (leave: a kick).
                        target = b.user("u1") if membership == "join" else b.user("t")
                        await send(event_of(b, a, room_id, "m.room.member", content, target))
            for junk in JUNK:
                await send(event_of(b, a, room_id, "m.room.redaction", {"redacts": junk}))
                await send(event_of(b, a, room_id, "m.room.message", {"m.relates_to": junk}))
                await send(
                    event_of(
                        b,
                        a,
                        room_id,
                        "m.room.message",
                        {"m.relates_to": {"event_id": junk, "rel_type": junk}},
                    )
                )
            assert fuzz.failures == [], "\n".join(fuzz.failures)
            # The membership handshakes, with signed junk in each member field.
            version = a.store.room_version(room_id)
            for field in MEMBER_FIELDS:
                for junk in SOME_JUNK:
                    joiner = b.user("j")
                    for method, membership, target, sender in (
                        (p.SEND_JOIN, "join", joiner, joiner),
                        (p.SEND_LEAVE, "leave", joiner, joiner),
                        (p.INVITE, "invite", a.user("newbie"), None),
                    ):
                        content = {"membership": membership, field: junk}
                        pdu = event_of(b, a, room_id, "m.room.member", content, target, sender)
                        if pdu is None:
                            continue
                        body = {
                            "room_id": room_id,
                            "event_id": compute_event_id(pdu, version),
                            "event": pdu,
                        }
                        if method == p.INVITE:
                            body.update(room_version=version.identifier, invite_room_state=[])
                        await fuzz.send(me, method, body)
            # The fuzz reached the auth rules, and some of it got in.
            accepted = sum(outcome == {} for outcome in outcomes)
            refused = sum("auth events" in outcome.get("error", "") for outcome in outcomes)
            assert accepted > 500 and refused > 500, (accepted, refused)
            await viewer.look(everything=True)
            await still_works(a, b, room_id, "after the PDU fuzz")

    run(main)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def mutations(value: Any) -> Iterator[Any]:
    """``value`` with one part (at any depth) removed or replaced by each junk value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield {k: v for k, v in value.items() if k != key}
            for other in (*JUNK, *(m for m in mutations(item))):
                yield {**value, key: other}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for other in (*JUNK, *(m for m in mutations(item))):
                yield [*value[:i], other, *value[i + 1 :]]


def test_edus_with_junk_at_every_depth(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR)

    async def main():
        async with setup() as (a, b, room_id):
            from p2pserver.clientapi import devicelists

            fuzz = Fuzz(a)
            me, user = b.server_name, b.user("u1")
            viewer = Viewer(a.api, a.user("u0"), room_id)
            head = a.store.forward_extremities(room_id)[0]
            device_keys = {
                "user_id": user,
                "device_id": "D",
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {"curve25519:D": "k", "ed25519:D": "k"},
                "signatures": {user: {"ed25519:D": "s"}},
            }
            master = {"user_id": user, "usage": ["master"], "keys": {"ed25519:M": "M"}}
            bases = {
                "m.typing": {"room_id": room_id, "user_id": user, "typing": True},
                "m.receipt": {
                    room_id: {"m.read": {user: {"event_ids": [head], "data": {"ts": 1}}}}
                },
                "m.presence": {
                    "push": [
                        {
                            "user_id": user,
                            "presence": "online",
                            "status_msg": "hi",
                            "last_active_ago": 1,
                            "currently_active": True,
                        }
                    ]
                },
                "m.direct_to_device": {
                    "sender": user,
                    "type": "m.x",
                    "message_id": "m",
                    "messages": {a.user("u0"): {"VIEWER": {"body": "hi"}}},
                },
                "m.device_list_update": {
                    "user_id": user,
                    "device_id": "D",
                    "stream_id": 1,
                    "prev_id": [0],
                    "deleted": False,
                    "device_display_name": "d",
                    "keys": device_keys,
                },
                "m.signing_key_update": {
                    "user_id": user,
                    "master_key": master,
                    "self_signing_key": {**master, "usage": ["self_signing"]},
                },
            }
            n = 0
            for edu_type, base in bases.items():
                for content in [base, *mutations(base)]:
                    n += 1
                    if edu_type == "m.direct_to_device" and isinstance(
                        content.get("message_id"), str
                    ):
                        content = {**content, "message_id": f"m{n}"}  # not a repeat
                    if edu_type == "m.device_list_update":
                        # b's devices are cached at stream 0: the EDU is the next update.
                        assert await devicelists.refresh(a.api, user)
                    edu = {"edu_type": edu_type, "content": content}
                    await fuzz.send(me, p.SEND_TRANSACTION, txn(me, edus=[edu], txn_id=f"e{n}"))
                    await viewer.look()
            for junk in JUNK:
                n += 1
                edus = [
                    junk,
                    {"edu_type": junk, "content": {}},
                    {"edu_type": "m.typing", "content": junk},
                ]
                await fuzz.send(me, p.SEND_TRANSACTION, txn(me, edus=edus, txn_id=f"e{n}"))
            assert fuzz.failures == [], "\n".join(fuzz.failures)
            await viewer.look(everything=True)
            await still_works(a, b, room_id, "after the EDU fuzz")

    run(main)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


class JunkQueries:
    """b's query handler, answering whatever the test sets."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}

    async def query_profile(self, origin: str, user_id: str, field: str | None) -> Any:
        return self.answers["query_profile"]

    async def user_devices(self, origin: str, user_id: str) -> Any:
        return self.answers["user_devices"]

    async def keys_query(self, origin: str, device_keys: Any) -> Any:
        return self.answers["keys_query"]

    async def keys_claim(self, origin: str, one_time_keys: Any) -> Any:
        return self.answers["keys_claim"]

    async def query_directory(self, origin: str, alias: str) -> Any:
        return self.answers["query_directory"]


def test_junk_answers_to_key_queries_never_fail_a_client(caplog: pytest.LogCaptureFixture):
    """The other direction: a peer's answers are bad input too (device lists, keys)."""
    caplog.set_level(logging.ERROR)

    async def main():
        async with setup() as (a, b, room_id):
            queries = JunkQueries()
            b.fed.server.queries = queries
            user, stranger = b.user("u1"), b.user("stranger")
            viewer = Viewer(a.api, a.user("u0"), room_id)
            keys = {
                "user_id": user,
                "device_id": "D",
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {"curve25519:D": "k", "ed25519:D": "k"},
                "signatures": {user: {"ed25519:D": "s"}},
            }
            master = {"user_id": user, "usage": ["master"], "keys": {"ed25519:M": "M"}}
            bases = {
                "user_devices": {
                    "user_id": user,
                    "stream_id": 5,
                    "devices": [{"device_id": "D", "keys": keys, "device_display_name": "d"}],
                    "master_key": master,
                    "self_signing_key": {**master, "usage": ["self_signing"]},
                },
                "keys_query": {
                    "device_keys": {stranger: {"D": {**keys, "user_id": stranger}}},
                    "master_keys": {stranger: {**master, "user_id": stranger}},
                },
                "keys_claim": {
                    "one_time_keys": {user: {"D": {"signed_curve25519:A": {"key": "k"}}}}
                },
            }
            for method, base in bases.items():
                for answer in [base, *mutations(base)]:
                    queries.answers = {**bases, method: answer}
                    a.api.e2ee.mark_remote_stale([user])  # so keys/query fetches the list
                    await viewer.get(
                        "POST", "/keys/query", {"device_keys": {user: [], stranger: []}}
                    )
                    await viewer.get(
                        "POST", "/keys/claim", {"one_time_keys": {user: {"D": "signed_curve25519"}}}
                    )
                    await viewer.get("GET", "/keys/changes", **{"from": "0", "to": "0"})
                    await viewer.look()
            await viewer.look(everything=True)

    run(main)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def _dicts(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_content_nested_deeper_than_the_wire_carries_is_refused_when_made():
    """A client's event nested deeper than a frame carries (128 levels, three
    of them the transaction's) could never be sent: it was made anyway, and the
    room's next events no longer reached the other server."""
    assert MAX_NESTING == framing.MAX_DEPTH - 3  # envelope, body, list of PDUs

    async def main():
        async with setup() as (a, b, room_id):
            # PDU (1), content (2), then the nested objects: 125 levels in all.
            deepest = await a.engine.send_message(
                room_id, a.user("u0"), {"body": "deepest", "x": _dicts(123)}
            )
            with pytest.raises(MatrixError) as refused:
                await a.engine.send_message(
                    room_id, a.user("u0"), {"body": "deeper", "x": _dicts(124)}
                )
            assert refused.value.errcode == "M_BAD_JSON"
            await wait_until(lambda: b.has(deepest), timeout=60)
            await still_works(a, b, room_id, "after the deep ones")

    run(main)
