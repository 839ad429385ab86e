"""Client-side keys for the tests: ed25519 signers and the key objects clients upload."""

from __future__ import annotations

from typing import Any

import nacl.signing

from p2pserver.rooms.base64 import encode_base64
from p2pserver.rooms.canonical_json import encode_canonical_json


class Signer:
    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.public = encode_base64(bytes(self.key.verify_key))

    def sign(self, obj: dict[str, Any], user_id: str, key_id: str | None = None) -> dict[str, Any]:
        """Add this key's signature (as ``user_id``, under ``key_id``) to ``obj``; return it."""
        signed = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
        signature = encode_base64(self.key.sign(encode_canonical_json(signed)).signature)
        obj.setdefault("signatures", {}).setdefault(user_id, {})[
            key_id or f"ed25519:{self.public}"
        ] = signature
        return obj


def device_keys(user_id: str, device_id: str, signer: Signer) -> dict[str, Any]:
    keys = {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{device_id}": f"curve-{device_id}",
            f"ed25519:{device_id}": signer.public,
        },
    }
    return signer.sign(keys, user_id, f"ed25519:{device_id}")


def cross_signing_key(
    user_id: str, usage: str, signer: Signer, master: Signer | None = None
) -> dict[str, Any]:
    key: dict[str, Any] = {
        "user_id": user_id,
        "usage": [usage],
        "keys": {f"ed25519:{signer.public}": signer.public},
    }
    if master is not None:
        master.sign(key, user_id)
    return key
