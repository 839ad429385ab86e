"""Unpadded Base64, as the Matrix specification uses it.

Matrix writes standard Base64 without padding (hashes, signatures, keys) and
URL-safe Base64 without padding (event IDs, v12 room IDs). Decoding accepts
padded input too, as the spec asks, and refuses anything else.
"""

from __future__ import annotations

import base64
import binascii


def encode_base64(data: bytes, *, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe Base64, padded or not. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError("base64 data must be a string")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("invalid base64 length")
    padded = stripped + "=" * (-len(stripped) % 4)
    urlsafe = "-" in padded or "_" in padded
    if urlsafe and ("+" in padded or "/" in padded):
        raise ValueError("base64 data mixes the standard and URL-safe alphabets")
    altchars = b"-_" if urlsafe else None
    try:
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64 data") from None
