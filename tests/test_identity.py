import os
import stat

from p2pserver.cli import main
from p2pserver.identity import (
    key_path,
    load_or_create_signing_key,
    peer_id_from_public_key,
    read_key_file,
)
from p2pserver.rooms.signing import SigningKey


def test_key_created_once_with_mode_0600(tmp_path):
    key, created = load_or_create_signing_key(tmp_path)
    assert created
    mode = stat.S_IMODE(os.stat(key_path(tmp_path)).st_mode)
    assert mode == 0o600
    again, created_again = load_or_create_signing_key(tmp_path)
    assert not created_again
    assert bytes(again.key) == bytes(key.key)
    assert key.server_name == bytes(key.verify_key).hex()
    assert key.server_name == key.server_name.lower() and len(key.server_name) == 64


def test_key_file_format_round_trip(tmp_path):
    key = SigningKey.from_seed(b"\x01" * 32, "abc")
    text = key.serialize()
    assert text.startswith("ed25519 abc ") and "=" not in text
    assert bytes(SigningKey.parse(text).key) == bytes(key.key)


def test_keys_command_never_prints_secret(tmp_path, capsys):
    assert main(["keys", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    key = read_key_file(key_path(tmp_path))
    seed_b64 = key.serialize().split()[2]
    assert key.server_name in out
    assert seed_b64 not in out


def test_keys_import_export(tmp_path, capsys):
    src = tmp_path / "in.key"
    src.write_text(SigningKey.from_seed(b"\x02" * 32, "x").serialize())
    data = tmp_path / "data"
    assert main(["keys", "import", "--data-dir", str(data), str(src)]) == 0
    assert main(["keys", "import", "--data-dir", str(data), str(src)]) == 1  # no silent replace
    out = tmp_path / "out.key"
    assert main(["keys", "export", "--data-dir", str(data), str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.read_text() == src.read_text()


def test_data_dir_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("P2PSERVER_DATA_DIR", str(tmp_path / "env"))
    assert main(["keys"]) == 0
    assert (tmp_path / "env" / "signing.key").exists()


def test_peer_id_matches_libp2p():
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    key = SigningKey.from_seed(b"\x07" * 32)
    public = bytes(key.verify_key)
    expected = ID.from_pubkey(Ed25519PublicKey.from_bytes(public)).to_base58()
    assert peer_id_from_public_key(public) == expected
