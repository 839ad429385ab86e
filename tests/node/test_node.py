"""Node settings and local tools, without starting a node."""

from __future__ import annotations

import json

import pytest
import trio

from p2pserver.cli import main
from p2pserver.identity import peer_id_from_public_key
from p2pserver.node.config import ConfigError, NodeConfig, load_config
from p2pserver.node.control import ControlCommands, _answer
from p2pserver.node.node import listen_params, parse_bootstrap
from p2pserver.node.status import process_alive, read_status, write_status
from p2pserver.rooms.signing import SigningKey


def test_bootstrap_addresses_name_their_server():
    key = SigningKey.generate()
    peer_id = peer_id_from_public_key(bytes(key.verify_key))
    address = f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}"
    assert parse_bootstrap(address) == (key.server_name, address)
    for bad in (
        "/ip4/127.0.0.1/tcp/4001",  # no PeerID
        "/ip4/127.0.0.1/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # not ed25519
        "nonsense",
    ):
        with pytest.raises(ConfigError):
            parse_bootstrap(bad)


def test_listen_addresses_give_ips_and_one_port(tmp_path):
    config = NodeConfig(tmp_path, listen=("/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.2/tcp/4001"))
    assert listen_params(config) == (["127.0.0.1", "10.0.0.2"], 4001)
    assert listen_params(NodeConfig(tmp_path)) == (None, None)
    assert listen_params(NodeConfig(tmp_path, p2p_port=5000, listen=("/ip4/127.0.0.1/tcp/0",))) == (
        ["127.0.0.1"],
        5000,
    )
    for listen in (("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.2/tcp/2"), ("/ip6/::1/tcp/1",), ("x",)):
        with pytest.raises(ConfigError):
            listen_params(NodeConfig(tmp_path, listen=listen))


@pytest.mark.parametrize(
    "text",
    ["fanout = 0", "fanout = 65", "fanout = true", "sync_interval = 0", 'sync_interval = "1"'],
)
def test_delivery_settings_are_checked(tmp_path, text):
    (tmp_path / "config.toml").write_text(text + "\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_delivery_settings_load(tmp_path):
    (tmp_path / "config.toml").write_text("fanout = 3\nsync_interval = 2.5\n")
    config = load_config(tmp_path)
    assert (config.fanout, config.sync_interval) == (3, 2.5)
    assert config.database_path.name == "rooms.db"


def test_control_refuses_bad_lines_with_errcodes():
    commands = ControlCommands(node=None)  # type: ignore[arg-type]

    async def answers():
        return [
            await _answer(commands, b"{not json"),
            await _answer(commands, b"[1, 2]"),
            await _answer(commands, b'{"op": "launch"}'),
            await _answer(commands, b'{"op": "invite", "room_id": 5}'),
        ]

    codes = [a["error"]["errcode"] for a in trio.run(answers)]
    assert codes == ["M_NOT_JSON", "M_BAD_JSON", "M_UNRECOGNIZED", "M_BAD_JSON"]


def test_status_snapshot_round_trip(tmp_path):
    assert read_status(tmp_path) is None
    write_status(tmp_path, {"pid": 1, "server_name": "x"})
    assert read_status(tmp_path) == {"pid": 1, "server_name": "x"}
    (tmp_path / "peers.json").write_text("[broken")
    assert read_status(tmp_path) is None
    assert not process_alive(0) and not process_alive("1")


def test_peers_command_without_a_snapshot(tmp_path, capsys):
    assert main(["peers", "--data-dir", str(tmp_path)]) == 1
    assert "p2pserver run" in capsys.readouterr().err
    write_status(
        tmp_path,
        {"pid": 2**22 + 12345, "server_name": "ab" * 32, "connected": [], "known": ["cd" * 32]},
    )
    assert main(["peers", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert main(["peers", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NOT RUNNING" in out and "cd" * 32 in out
