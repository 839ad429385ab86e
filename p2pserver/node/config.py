"""Node configuration: embedded defaults, an optional TOML file, then flags.

Precedence, lowest first: the defaults below, `<data_dir>/config.toml` (or
`--config FILE`), then command-line options. A node needs no configuration
at all: every setting has a default that works on a device by itself.

File format (every key optional)::

    p2p_port = 4001
    listen = ["/ip4/192.168.1.5/tcp/4001"]
    bootstrap = ["/ip4/127.0.0.1/tcp/4002/p2p/12D3KooW..."]
    client_listen = "127.0.0.1:8008"
    allow_remote_clients = false
    mdns = true
    registration_open = true
    fanout = 4             # servers a node pushes each event to (federation)
    sync_interval = 60.0   # seconds between periodic pulls (federation)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from p2pserver.storage.database import DATABASE_FILE_NAME

CONFIG_FILE_NAME = "config.toml"


class ConfigError(ValueError):
    """The configuration file or an option is invalid."""


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    # None: a stable port chosen on first start and remembered in the data dir.
    p2p_port: int | None = None
    # Empty: the concrete IPs of all interfaces on the p2p port.
    listen: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    client_listen: str = "127.0.0.1:8008"
    # Binding the client API to a non-loopback address must be asked for.
    allow_remote_clients: bool = False
    mdns: bool = True
    registration_open: bool = True
    # Federation: at most this many servers are pushed each event by a node.
    fanout: int = 4
    # Federation: seconds between periodic forward-extremity exchanges.
    sync_interval: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def database_path(self) -> Path:
        return self.data_dir / DATABASE_FILE_NAME


_LIST_KEYS = {"listen", "bootstrap"}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "p2p_port": int,
    "listen": list,
    "bootstrap": list,
    "client_listen": str,
    "allow_remote_clients": bool,
    "mdns": bool,
    "registration_open": bool,
    "fanout": int,
    "sync_interval": (int, float),
}


def load_config(data_dir: Path, config_file: Path | None = None, **overrides: Any) -> NodeConfig:
    """Build the effective configuration. ``overrides`` that are None are ignored."""
    config = NodeConfig(data_dir=data_dir)
    path = config_file if config_file is not None else data_dir / CONFIG_FILE_NAME
    if config_file is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.exists():
        config = _apply(config, _read(path), source=str(path))
    given = {k: v for k, v in overrides.items() if v is not None and v != [] and v != ()}
    return _apply(config, given, source="command line")


def _read(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a file: ~0.5 MiB (with datetime) a node without one keeps

    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _apply(config: NodeConfig, values: dict[str, Any], *, source: str) -> NodeConfig:
    known = {f.name for f in fields(NodeConfig)} - {"data_dir", "extra"}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        expected = _TYPES[key]
        if isinstance(value, tuple):
            value = list(value)
        numeric = expected is int or expected == (int, float)
        if not isinstance(value, expected) or (numeric and isinstance(value, bool)):
            name = "a number" if isinstance(expected, tuple) else expected.__name__
            raise ConfigError(f"{source}: {key} must be {name}")
        if key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{source}: {key} must be a list of strings")
            value = tuple(value)
        if key == "p2p_port" and not 0 < value < 65536:
            raise ConfigError(f"{source}: p2p_port must be 1-65535")
        if key == "fanout" and not 1 <= value <= 64:
            raise ConfigError(f"{source}: fanout must be 1-64")
        if key == "sync_interval" and not 0 < value <= 86400:
            raise ConfigError(f"{source}: sync_interval must be a number of seconds, 0-86400")
        if key == "client_listen":
            parse_host_port(value)
        changes[key] = value
    return replace(config, **changes)


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
