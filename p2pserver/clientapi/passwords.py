"""Password hashing for local accounts: scrypt from the standard library.

Rules:
- A stored hash is ``scrypt$<log2 N>$<r>$<p>$<salt>$<key>`` (salt and key in
  unpadded base64), so the cost can be raised later without losing old
  hashes: :func:`check_password` reads the parameters from the string.
- N = 2**14, r = 8, p = 1 (16 MiB, the interactive-login setting of the
  scrypt paper) with a 16-byte random salt and a 32-byte key.
- Comparison is constant-time. A password longer than
  :data:`MAX_PASSWORD_BYTES` is refused before hashing, so a client cannot
  make the node hash megabytes.
- Hashing takes ~0.1 s of CPU: callers run it in a worker thread
  (``trio.to_thread.run_sync``) so the event loop keeps serving.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from p2pserver.rooms.base64 import decode_base64, encode_base64

MAX_PASSWORD_BYTES = 512
_LOG_N, _R, _P = 14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32


def _scrypt(password: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=2**log_n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * 1024 * 1024
    )


def hash_password(password: str) -> str:
    data = password.encode("utf-8")
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError("password too long")
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(data, salt, _LOG_N, _R, _P)
    return f"scrypt${_LOG_N}${_R}${_P}${encode_base64(salt)}${encode_base64(key)}"


def check_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password`."""
    data = password.encode("utf-8")
    if stored is None or len(data) > MAX_PASSWORD_BYTES:
        return False
    try:
        scheme, log_n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = decode_base64(key)
        actual = _scrypt(data, decode_base64(salt), int(log_n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)
