"""Verification on receipt: steps 2 and 3 of "Checks performed on receipt of a PDU".

Spec: server-server API "Checks performed on receipt of a PDU" and
"Validating hashes and signatures on received events"; appendix "Checking
for a signature". Step 1 (format) is :func:`p2pserver.rooms.validation.parse_pdu`;
steps 4-6 (auth rules) are :mod:`p2pserver.rooms.auth`.

:func:`verify_event` decides one of three outcomes:

- REJECT: a required signature is missing or bad. The spec says the event
  is *dropped*: not stored, not rejected-and-kept like an auth failure.
- REDACT: the signatures hold but the content hash does not match. The
  spec assumes we were sent a redacted copy and tells us to use our own
  redacted copy; :attr:`Outcome.event` is that copy (``redacted=True``),
  with the same event ID (the reference hash only covers the redacted form).
- ACCEPT: both hold; :attr:`Outcome.event` is the event itself.

Signatures cover the redacted event, so they verify whether we were sent
the full event or a redacted copy. The servers that must have signed
("signatures expected on an event"):

- the sender's server (room versions 3+);
- for a join carrying `join_authorised_via_users_server` (room versions 8+,
  so every version here), also that user's server, as Synapse and ruma
  check on receipt; the auth rules check it again (v12 rule 5.2.1).

Deviation, on purpose: the spec waives the sender's server signature for a
3rd-party invite, because in the classic flow another server may send it.
In p2pserver the sender's server always builds and signs its own events,
and the waiver would let any peer forge an invite in another user's name,
so we require it.

For each of those servers, signatures under unknown key IDs are skipped,
at least one known key must have signed, and every signature under a known
key must verify (:func:`p2pserver.rooms.signing.check_signatures`).

Keys: a p2pserver server name is the lowercase hex of its ed25519 public
key, so :func:`hex_server_keys` derives the verify key from the name alone,
for any key ID. :func:`with_known_keys` adds keys from elsewhere (the CLI's
``--keys FILE``), e.g. for the spec's test vectors whose server is
``domain``.

Speed: this is on the hot receive path. An Event from ``parse_pdu`` carries
the content hash and the reference-hash input (= the signed bytes), so
verification encodes nothing and only runs ed25519 and one comparison.
"""

from __future__ import annotations

import enum
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import cast

import nacl.signing

from p2pserver.rooms.base64 import decode_base64
from p2pserver.rooms.errors import BadJSON, MatrixError
from p2pserver.rooms.events import Event, sender_server
from p2pserver.rooms.hashing import compute_content_hash, reference_hash_input
from p2pserver.rooms.redaction import redact
from p2pserver.rooms.signing import KeyLookup, check_signatures, server_name_verify_key
from p2pserver.rooms.validation import ParsedEvent, is_valid_user_id

__all__ = [
    "ACCEPT",
    "REDACT",
    "REJECT",
    "KeyLookup",
    "Outcome",
    "Verdict",
    "hex_server_keys",
    "parse_verify_keys",
    "required_signers",
    "verify_event",
    "with_known_keys",
]


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REDACT = "redact"
    REJECT = "reject"


ACCEPT = Verdict.ACCEPT
REDACT = Verdict.REDACT
REJECT = Verdict.REJECT


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with a received event.

    ``event`` is the event to go on with: the event itself (ACCEPT), our
    redacted copy (REDACT), or the event as received (REJECT, for logging).
    ``reason`` says why for REDACT and REJECT.
    """

    verdict: Verdict
    event: Event
    reason: str | None = None


# -- keys ----------------------------------------------------------------------


class _KeyOfName(Mapping[str, nacl.signing.VerifyKey]):
    """Every ``ed25519:*`` key ID of a hex server name maps to the one key
    the name stands for (the key ID is only the signer's label for it).

    Iteration lists nothing: the set of key IDs is open-ended.
    """

    __slots__ = ("_key",)

    def __init__(self, key: nacl.signing.VerifyKey) -> None:
        self._key = key

    def __getitem__(self, key_id: str) -> nacl.signing.VerifyKey:
        if isinstance(key_id, str) and key_id.startswith("ed25519:"):
            return self._key
        raise KeyError(key_id)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_NO_KEYS: Mapping[str, nacl.signing.VerifyKey] = {}
_KeyMap = MutableMapping[str, nacl.signing.VerifyKey]


def hex_server_keys(server_name: str) -> Mapping[str, nacl.signing.VerifyKey]:
    """The default :data:`KeyLookup`: the key a 64-hex-digit server name stands
    for, under any ed25519 key ID; no keys for any other name."""
    key = server_name_verify_key(server_name)
    return _NO_KEYS if key is None else _KeyOfName(key)


def with_known_keys(
    known: Mapping[str, Mapping[str, nacl.signing.VerifyKey]],
    fallback: KeyLookup = hex_server_keys,
) -> KeyLookup:
    """A lookup answering from ``known`` (server -> key ID -> key) first and
    from ``fallback`` for key IDs it does not list."""

    def lookup(server_name: str) -> Mapping[str, nacl.signing.VerifyKey]:
        extra = known.get(server_name)
        if not extra:
            return fallback(server_name)
        # ChainMap only ever writes to its first map; the fallback is read-only.
        return ChainMap(dict(extra), cast(_KeyMap, fallback(server_name)))

    return lookup


def parse_verify_keys(obj: object) -> dict[str, dict[str, nacl.signing.VerifyKey]]:
    """Read ``{"server": {"ed25519:id": "<unpadded base64 public key>"}}``.

    Raises :class:`BadJSON` naming the entry at fault.
    """
    if not isinstance(obj, Mapping):
        raise BadJSON("keys must be a JSON object of server names")
    result: dict[str, dict[str, nacl.signing.VerifyKey]] = {}
    for server_name, keys in obj.items():
        if not isinstance(keys, Mapping):
            raise BadJSON(f"keys of {server_name!r} must be an object of key IDs")
        parsed: dict[str, nacl.signing.VerifyKey] = {}
        for key_id, key_b64 in keys.items():
            if not key_id.startswith("ed25519:"):
                raise BadJSON(f"key ID {key_id!r} of {server_name!r} is not ed25519:<id>")
            try:
                raw = decode_base64(key_b64)
            except ValueError:
                raise BadJSON(f"key {key_id} of {server_name!r} is not base64") from None
            if len(raw) != 32:
                raise BadJSON(f"key {key_id} of {server_name!r} is not 32 bytes")
            parsed[key_id] = nacl.signing.VerifyKey(raw)
        result[server_name] = parsed
    return result


# -- verification --------------------------------------------------------------


def required_signers(event: Event) -> list[str]:
    """The servers whose signatures ``event`` must carry, sender's first.

    Raises :class:`MatrixError` if a join names an authorising user that is
    not a user ID (then no server can vouch for it).
    """
    servers = [sender_server(event.sender)]
    content = event.content
    if event.membership == "join" and "join_authorised_via_users_server" in content:
        authoriser = content["join_authorised_via_users_server"]
        if not is_valid_user_id(authoriser):
            raise MatrixError(
                f"join_authorised_via_users_server {authoriser!r} is not a user ID",
                errcode="M_FORBIDDEN",
            )
        server = sender_server(authoriser)
        if server not in servers:
            servers.append(server)
    return servers


def verify_event(event: Event, keys: KeyLookup = hex_server_keys) -> Outcome:
    """Check ``event``'s signatures, then its content hash (receipt steps 2, 3)."""
    room_version = event.room_version
    pdu = event.pdu
    precomputed = None
    if isinstance(event, ParsedEvent):
        precomputed, event.precomputed = event.precomputed, None  # used once; don't keep the bytes
    try:
        if precomputed is not None:
            content_hash, message = precomputed
        else:
            content_hash, message = b"", reference_hash_input(pdu, room_version)
        # Step 2: signatures, over the redacted event.
        for server_name in required_signers(event):
            check_signatures(message, pdu.get("signatures"), server_name, keys(server_name))
        if precomputed is None:
            content_hash = compute_content_hash(pdu)
    except MatrixError as exc:  # SignatureError, or BadJSON from an unchecked Event
        return Outcome(REJECT, event, exc.message)

    # Step 3: the content hash; a mismatch means "use the redacted copy".
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    try:
        matches = isinstance(claimed, str) and decode_base64(claimed) == content_hash
    except ValueError:
        matches = False
    if matches:
        return Outcome(ACCEPT, event)
    redacted = Event(
        redact(pdu, room_version), room_version, event_id=event.event_id, redacted=True
    )
    return Outcome(REDACT, redacted, "content hash does not match; using the redacted event")
