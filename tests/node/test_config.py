import pytest

from p2pserver.node.config import ConfigError, is_loopback_host, load_config, parse_host_port


def test_defaults_need_no_file(tmp_path):
    config = load_config(tmp_path)
    assert config.client_listen == "127.0.0.1:8008"
    assert config.mdns and config.p2p_port is None and config.bootstrap == ()


def test_file_then_flags(tmp_path):
    (tmp_path / "config.toml").write_text('p2p_port = 4100\nbootstrap = ["/ip4/127.0.0.1/tcp/1"]\nmdns = false\n')
    config = load_config(tmp_path, p2p_port=4200, bootstrap=None)
    assert config.p2p_port == 4200  # flag wins
    assert config.bootstrap == ("/ip4/127.0.0.1/tcp/1",)
    assert config.mdns is False


@pytest.mark.parametrize(
    "text",
    ['p2p_port = "x"', "p2p_port = 70000", "nonsense = 1", 'client_listen = "nope"', "bootstrap = [1]", "p2p_port = true", "= broken"],
)
def test_bad_config_is_a_clear_error(tmp_path, text):
    (tmp_path / "config.toml").write_text(text + "\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_explicit_missing_file(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path, config_file=tmp_path / "missing.toml")


def test_host_port():
    assert parse_host_port("127.0.0.1:8008") == ("127.0.0.1", 8008)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("192.168.1.1")
