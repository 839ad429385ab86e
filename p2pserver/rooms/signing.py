"""Ed25519 signing keys and JSON signatures (Matrix appendix: signing JSON).

A node's identity is one ed25519 key. Its server name is the lowercase hex
of the public key, so a peer's verify key can be read off its name and no
key server is needed. Keys are stored in the usual Matrix signing-key file
format, one line: ``ed25519 <key_id> <unpadded base64 seed>``.

Signing JSON: drop `signatures` and `unsigned`, sign the canonical JSON, and
add the signature under ``signatures[server_name]["ed25519:<key_id>"]``.
Events are signed over their redacted form (see :func:`sign_event`): the
bytes signed are exactly the reference-hash input (hashing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from p2pserver.rooms.base64 import decode_base64, encode_base64
from p2pserver.rooms.canonical_json import encode_canonical_json
from p2pserver.rooms.errors import SignatureError
from p2pserver.rooms.hashing import reference_hash_input
from p2pserver.rooms.room_versions import RoomVersion

DEFAULT_KEY_VERSION = "p2p"

# server name -> {"ed25519:<id>": VerifyKey}
KeyLookup = Callable[[str], Mapping[str, nacl.signing.VerifyKey]]


@dataclass(frozen=True)
class SigningKey:
    """A node's ed25519 signing key together with its key version."""

    key: nacl.signing.SigningKey
    version: str = DEFAULT_KEY_VERSION

    @classmethod
    def generate(cls, version: str = DEFAULT_KEY_VERSION) -> SigningKey:
        return cls(nacl.signing.SigningKey.generate(), version)

    @classmethod
    def from_seed(cls, seed: bytes, version: str = DEFAULT_KEY_VERSION) -> SigningKey:
        return cls(nacl.signing.SigningKey(seed), version)

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Parse ``ed25519 <key_id> <unpadded base64 seed>`` (first line)."""
        parts = text.strip().split()
        if len(parts) != 3 or parts[0] != "ed25519":
            raise ValueError("signing key must be 'ed25519 <key_id> <base64 seed>'")
        seed = decode_base64(parts[2])
        if len(seed) != 32:
            raise ValueError("ed25519 seed must be 32 bytes")
        return cls.from_seed(seed, parts[1])

    def serialize(self) -> str:
        return f"ed25519 {self.version} {encode_base64(bytes(self.key))}\n"

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.version}"

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self.key.verify_key

    @property
    def public_key_base64(self) -> str:
        return encode_base64(bytes(self.key.verify_key))

    @property
    def server_name(self) -> str:
        """The p2pserver server name: lowercase hex of the public key."""
        return bytes(self.key.verify_key).hex()


def server_name_verify_key(server_name: str) -> nacl.signing.VerifyKey | None:
    """The verify key a 64-hex-digit server name stands for, else None."""
    if len(server_name) != 64:
        return None
    try:
        raw = bytes.fromhex(server_name)
    except ValueError:
        return None
    if server_name != raw.hex():  # lowercase only: one name per key
        return None
    return nacl.signing.VerifyKey(raw)


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def sign_json(obj: dict[str, Any], server_name: str, key: SigningKey) -> dict[str, Any]:
    """Add ``server_name``'s signature to ``obj`` in place, and return it."""
    signature = key.key.sign(encode_canonical_json(_strip(obj))).signature
    obj.setdefault("signatures", {}).setdefault(server_name, {})[key.key_id] = encode_base64(
        signature
    )
    return obj


def verify_json(
    obj: Mapping[str, Any], server_name: str, verify_keys: Mapping[str, nacl.signing.VerifyKey]
) -> None:
    """Check that ``obj`` carries a valid signature by ``server_name``.

    ``verify_keys`` maps key IDs (``ed25519:<id>``) to keys. Raises
    SignatureError; see :func:`check_signatures` for the rules.
    """
    check_signatures(
        lambda: encode_canonical_json(_strip(obj)), obj.get("signatures"), server_name, verify_keys
    )


def check_signatures(
    message: bytes | Callable[[], bytes],
    signatures: object,
    server_name: str,
    verify_keys: Mapping[str, nacl.signing.VerifyKey],
) -> None:
    """Check ``server_name``'s signatures (the `signatures` value) over ``message``.

    The appendix's "Checking for a signature", with the receipt rule of the
    server-server API: signatures under algorithms other than ed25519 and
    under unknown key IDs are skipped; at least one must remain, and *every*
    remaining one must decode and verify. ``message`` is the signed bytes,
    or a function computing them (called only once a known key is found).
    Raises SignatureError.
    """
    if not isinstance(signatures, Mapping):
        raise SignatureError("no signatures")
    by_server = signatures.get(server_name)
    if not isinstance(by_server, Mapping) or not by_server:
        raise SignatureError(f"not signed by {server_name}")
    checked = False
    for key_id, signature_b64 in by_server.items():
        if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
            continue
        verify_key = verify_keys.get(key_id)
        if verify_key is None:
            continue
        try:
            signature = decode_base64(signature_b64)
        except ValueError:
            raise SignatureError(f"signature {key_id} of {server_name} is not base64") from None
        if not isinstance(message, bytes):
            message = message()
        try:
            verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise SignatureError(f"bad signature {key_id} from {server_name}") from None
        checked = True
    if not checked:
        raise SignatureError(f"no known ed25519 key of {server_name} signed this")


def sign_event(
    pdu: dict[str, Any], server_name: str, key: SigningKey, room_version: RoomVersion
) -> dict[str, Any]:
    """Sign a PDU (which must already carry its content hash) in place.

    The signature covers the redacted event, so it survives redaction.
    """
    signature = key.key.sign(reference_hash_input(pdu, room_version)).signature
    pdu.setdefault("signatures", {}).setdefault(server_name, {})[key.key_id] = encode_base64(
        signature
    )
    return pdu


def verify_event_signature(
    pdu: Mapping[str, Any],
    server_name: str,
    room_version: RoomVersion,
    verify_keys: Mapping[str, nacl.signing.VerifyKey],
) -> None:
    """Check ``server_name``'s signature over the redacted PDU. Raises SignatureError."""
    check_signatures(
        lambda: reference_hash_input(pdu, room_version),
        pdu.get("signatures"),
        server_name,
        verify_keys,
    )
