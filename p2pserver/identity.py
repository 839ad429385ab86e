"""The node's identity on disk: its data directory and ed25519 signing key.

The key file holds one line in the Matrix signing-key format
(``ed25519 <key_id> <unpadded base64 seed>``), mode 0600, created on first
use. The secret is never printed. From the key follow the server name
(lowercase hex of the public key) and the libp2p PeerID, so a libp2p
connection proves which server is speaking.
"""

from __future__ import annotations

import os
from pathlib import Path

from p2pserver.rooms.signing import SigningKey

KEY_FILE_NAME = "signing.key"
DATA_DIR_ENV = "P2PSERVER_DATA_DIR"

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def default_data_dir() -> Path:
    """``$P2PSERVER_DATA_DIR``, else ``$XDG_DATA_HOME/p2pserver``, else ``~/.local/share/p2pserver``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "p2pserver"


def resolve_data_dir(explicit: str | os.PathLike[str] | None) -> Path:
    return Path(explicit) if explicit else default_data_dir()


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE_NAME


def write_key_file(path: Path, key: SigningKey, *, overwrite: bool = False) -> None:
    """Write ``key`` with mode 0600, atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.serialize().encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_key_file(path: Path) -> SigningKey:
    return SigningKey.parse(path.read_text(encoding="ascii"))


def load_or_create_signing_key(data_dir: Path) -> tuple[SigningKey, bool]:
    """Return the node key, generating it on first use. The bool is "created"."""
    path = key_path(data_dir)
    if path.exists():
        return read_key_file(path), False
    key = SigningKey.generate()
    write_key_file(path, key)
    return key, True


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p PeerID (base58btc) of an ed25519 public key.

    PeerID = identity-multihash(protobuf PublicKey{Type: Ed25519, Data: key}),
    the rule libp2p uses for keys of 42 bytes or fewer once encoded.
    """
    protobuf = b"\x08\x01\x12" + bytes([len(public_key)]) + public_key
    multihash = b"\x00" + bytes([len(protobuf)]) + protobuf
    return _base58(multihash)


def public_key_from_peer_id(peer_id: str) -> bytes | None:
    """The ed25519 public key inside a PeerID (the inverse of :func:`peer_id_from_public_key`).

    None for anything else: another key type, a hashed (non-identity)
    multihash, or text that is not base58btc.
    """
    try:
        raw = _unbase58(peer_id)
    except ValueError:
        return None
    if len(raw) != 38 or raw[:6] != b"\x00\x24\x08\x01\x12\x20":
        return None
    return raw[6:]


def _unbase58(text: str) -> bytes:
    number = 0
    for char in text:
        digit = _B58_ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"not base58: {char!r}")
        number = number * 58 + digit
    leading_zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * leading_zeros + body


def _base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(out))
