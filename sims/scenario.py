"""Scenarios: what to simulate, as a TOML file or the same tables built in Python.

A scenario is a TOML document (read with ``tomllib``) of these tables; every
key has a default except ``nodes.count``. Times are virtual seconds from
the start of the run. The built-in scenarios (``sims/scenarios/*.toml``)
are complete examples.

``[scenario]``
    ``name``, ``description``, ``kind`` ("timeline", or "fuzzer" for the
    converge fuzzer), ``seed`` (the default seed), ``duration`` (when a
    timeline run ends).
``[nodes]``
    ``count``; ``storage`` "memory" (SQLite in memory, kept across a crash)
    or "disk" (a database file per node under the run's directory);
    ``start_spread`` (nodes start at uniformly drawn times in
    ``[0, start_spread]``); ``cache_events`` (smaller store caches, for
    thousands of nodes).
``[groups]``
    Named node selections, e.g. ``left = "0-24"``. A *selection* anywhere
    is a node index, ``"a-b"`` (inclusive), ``"all"``, a group name, or a
    list of these.
``[network]``
    The default (internet) link: ``latency`` (a distribution, see
    :mod:`sims.distributions`), ``bandwidth`` (bits/s), ``loss``;
    ``partition_mode`` ("refuse" or "blackhole", see :mod:`sims.network`);
    ``discovery``: any of "static" (every node is configured with every
    other's address), "mdns" (within LAN segments) and "dht"; also
    ``dial_round_trips``, ``max_retransmits``, ``min_rto``,
    ``keepalive_timeout``, ``connect_timeout``, ``track_links``.
    ``[[network.links]]`` give the links between two selections ``a`` and
    ``b`` their own ``latency``/``bandwidth``/``loss``.
``[[segments]]``
    LAN segments: ``name``, ``nodes``, the link keys above, ``mdns``
    (default true) and ``mdns_interval``.
``[federation]``
    :class:`~p2pserver.federation.FederationConfig` fields (``fanout``,
    ``sync_interval``, ``announce_delay``, ``backoff_initial``,
    ``backoff_max``, ``max_catchup_events``).
``[room]``
    One room: created at ``at`` by node ``creator``'s user with ``preset``;
    ``members`` are invited and join; ``power`` maps selections to power
    levels (e.g. ``{ "1-4" = 75 }``) so they can change state. ``setup``:
    "protocol" (invites and joins through federation, measured like
    everything else) or "prefab" (the room's first events are built once on
    the creator and every member starts from a copy of its database, as if
    they had propagated: for large rooms; needs ``storage = "disk"``).
``[[traffic]]``
    Chat: ``senders`` (a selection), ``start``, ``end``, and either
    ``rate`` (messages per second in all, Poisson) or ``count`` (that many
    at uniformly drawn times); ``body_bytes``. A sender that is down or
    not joined at its turn skips it (counted).
``[[events]]``
    The timeline, each with ``at`` and ``action``:
    ``partition`` (``groups``: selections), ``heal`` (every link; or,
    with ``a`` and ``b``, only those between them), ``cut`` (``a``,
    ``b``), ``set_link`` (``a``, ``b``, link keys), ``crash``/``restart``
    (``nodes``), ``churn`` (``nodes``, ``until``, ``mean_up``,
    ``mean_down``: exponential session and downtime lengths), ``state``
    (``nodes`` each send ``type``/``state_key``/``content``; ``{node}`` in
    a string of the content becomes the sender's index), ``power``
    (``nodes`` each change ``users``, a table of selection = level, in
    the power levels they see), ``message``
    (``nodes``, ``count``), ``leave``/``join`` (``nodes``; a join is
    preceded by an invite from the creator).
``[metrics]``
    ``sample_interval`` (state agreement samples), ``deliveries`` (write
    one row per message and server), ``convergence_poll``, ``settle``
    (after a heal, how long to wait for convergence).
``[fuzzer]``
    For ``kind = "fuzzer"``: see :mod:`sims.converge`.

Python API: :func:`load_scenario` (a path or a built-in name, plus dotted
``overrides`` such as ``{"nodes.count": 6}``) or :func:`parse_scenario`
on a dict. Malformed scenarios raise :class:`ScenarioError` naming the
key at fault.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from p2pserver.federation import FederationConfig
from sims.distributions import DistributionError, parse_distribution
from sims.network import PARTITION_MODES, LinkProfile


class ScenarioError(ValueError):
    """A scenario is malformed; the message names the key."""


DISCOVERY = ("static", "mdns", "dht")
STORAGE = ("memory", "disk")
ACTIONS = (
    "partition",
    "heal",
    "cut",
    "set_link",
    "crash",
    "restart",
    "churn",
    "state",
    "power",
    "message",
    "leave",
    "join",
)
_ACTION_KEYS: dict[str, tuple[set[str], set[str]]] = {  # required, optional
    "partition": ({"groups"}, set()),
    "heal": (set(), {"a", "b"}),
    "cut": ({"a", "b"}, set()),
    "set_link": ({"a", "b"}, {"latency", "bandwidth", "loss"}),
    "crash": ({"nodes"}, set()),
    "restart": ({"nodes"}, set()),
    "churn": ({"nodes", "until", "mean_up", "mean_down"}, set()),
    "state": ({"nodes", "type"}, {"state_key", "content"}),
    "power": ({"nodes", "users"}, set()),
    "message": ({"nodes"}, {"count"}),
    "leave": ({"nodes"}, set()),
    "join": ({"nodes"}, set()),
}


@dataclass(frozen=True)
class LinkOverride:
    a: tuple[int, ...]
    b: tuple[int, ...]
    profile: LinkProfile


@dataclass(frozen=True)
class NetworkSpec:
    default: LinkProfile = field(default_factory=LinkProfile)
    partition_mode: str = "refuse"
    discovery: tuple[str, ...] = ("static",)
    dial_round_trips: int = 2
    max_retransmits: int = 6
    min_rto: float = 0.2
    keepalive_timeout: float = 30.0
    connect_timeout: float = 30.0
    track_links: bool = False
    links: tuple[LinkOverride, ...] = ()


@dataclass(frozen=True)
class SegmentSpec:
    name: str
    nodes: tuple[int, ...]
    profile: LinkProfile
    mdns: bool = True
    mdns_interval: float = 60.0


@dataclass(frozen=True)
class NodesSpec:
    count: int
    storage: str = "memory"
    start_spread: float = 0.0
    cache_events: int | None = None


@dataclass(frozen=True)
class RoomSpec:
    at: float = 0.0
    creator: int = 0
    members: tuple[int, ...] = ()
    preset: str = "public_chat"
    power: tuple[tuple[int, int], ...] = ()
    setup: str = "protocol"


@dataclass(frozen=True)
class TrafficSpec:
    senders: tuple[int, ...]
    start: float
    end: float
    rate: float | None = None
    count: int | None = None
    body_bytes: int = 64


@dataclass(frozen=True)
class Action:
    at: float
    action: str
    params: Mapping[str, Any]
    index: int  # position in the file: ties at one time keep file order


@dataclass(frozen=True)
class MetricsSpec:
    sample_interval: float = 10.0
    deliveries: bool = True
    convergence_poll: float = 0.5
    settle: float = 900.0


@dataclass(frozen=True)
class FuzzerSpec:
    episodes: int = 20
    members: int | None = None  # joined at the start (the rest join later); None: all
    ops_per_episode: tuple[int, int] = (4, 10)
    episode_length: float = 60.0
    max_crashed: float = 0.25  # at most this share of nodes down at once
    settle_timeout: float = 1800.0
    admins: int = 3  # users 1..admins get power 100 (the creator is above every level)
    partitions: bool = True  # off: no cuts (the anti-vacuity check must then fail)
    conflicts: bool = True  # off: no forced same-key writes on both sides of a cut
    weights: Mapping[str, int] = field(default_factory=dict)  # op -> weight, over the defaults


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: NodesSpec
    description: str = ""
    kind: str = "timeline"
    seed: int = 0
    duration: float = 600.0
    groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    segments: tuple[SegmentSpec, ...] = ()
    federation: FederationConfig = field(default_factory=FederationConfig)
    room: RoomSpec | None = None
    traffic: tuple[TrafficSpec, ...] = ()
    events: tuple[Action, ...] = ()
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    fuzzer: FuzzerSpec | None = None
    source: str = "<dict>"
    document: Mapping[str, Any] = field(default_factory=dict)  # as parsed, for the record
    # The dotted overrides the source was loaded with (``--set``), in order.
    overrides: tuple[tuple[str, Any], ...] = ()

    def replay_command(self, seed: int) -> str:
        """The command line that runs this scenario again with ``seed``, overrides included."""
        words = [
            "p2pserver",
            "sim",
            "run",
            self.source.removeprefix("builtin:"),
            "--seed",
            str(seed),
        ]
        for key, value in self.overrides:
            words += ["--set", f"{key}={toml_value(value)}"]
        return shlex.join(words)


# --- loading ------------------------------------------------------------------------------


def builtin_scenarios() -> list[str]:
    """Names of the built-in scenarios (``sims/scenarios/<name>.toml``)."""
    folder = resources.files("sims") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """A scenario from a TOML file, or a built-in one by name, with dotted overrides."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"cannot read {path}: {exc}") from None
        source = str(path)
    else:
        name = str(name_or_path)
        if name not in builtin_scenarios():
            raise ScenarioError(
                f"no scenario file {name!r} and no built-in scenario of that name "
                f"(built-in: {', '.join(builtin_scenarios())})"
            )
        text = (resources.files("sims") / "scenarios" / f"{name}.toml").read_text("utf-8")
        source = f"builtin:{name}"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    scenario = parse_scenario(apply_overrides(document, overrides or {}), source=source)
    return dataclasses.replace(scenario, overrides=tuple((overrides or {}).items()))


def toml_value(value: Any) -> str:
    """``value`` as a TOML value, as ``--set`` reads it (:func:`parse_override`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise ScenarioError(f"cannot write {value!r} as a TOML value")


def parse_override(text: str) -> tuple[str, Any]:
    """``"nodes.count=6"`` -> ``("nodes.count", 6)``; values are TOML, else strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"override {text!r}: expected KEY=VALUE")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def apply_overrides(document: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The document with each dotted key set; a number indexes an array (``traffic.0.count``)."""
    out = copy.deepcopy(dict(document))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        target: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(target, list):
                if not part.isdigit() or int(part) >= len(target):
                    raise ScenarioError(f"override {dotted}: no item {part} in that array")
                if last:
                    target[int(part)] = value
                else:
                    target = target[int(part)]
            elif isinstance(target, dict):
                if last:
                    target[part] = value
                else:
                    target = target.setdefault(part, {})
            else:
                raise ScenarioError(f"override {dotted}: {parts[depth - 1]} is not a table")
    return out


# --- parsing ------------------------------------------------------------------------------


class _Table:
    """Typed reads from one TOML table, with errors that name the key."""

    def __init__(self, data: object, where: str, allowed: set[str]) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{where}: expected a table")
        unknown = set(data) - allowed
        if unknown:
            raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        self.data = data
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < minimum
        ):
            raise ScenarioError(f"{self.name(key)}: expected a number >= {minimum}")
        return float(value)

    def integer(self, key: str, default: int | None, *, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ScenarioError(f"{self.name(key)}: expected an integer >= {minimum}")
        return value

    def string(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise ScenarioError(f"{self.name(key)}: expected a string")
        if choices is not None and value not in choices:
            raise ScenarioError(f"{self.name(key)}: expected one of {', '.join(choices)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.name(key)}: expected true or false")
        return value


def select(
    spec: object, count: int, groups: Mapping[str, tuple[int, ...]], where: str
) -> tuple[int, ...]:
    """The node indexes a selection names, in order, without repeats."""
    out: dict[int, None] = {}

    def add(item: object) -> None:
        if isinstance(item, bool):
            raise ScenarioError(f"{where}: a selection cannot be a boolean")
        if isinstance(item, int):
            if not 0 <= item < count:
                raise ScenarioError(f"{where}: node {item} out of range 0-{count - 1}")
            out[item] = None
        elif isinstance(item, str):
            for part in item.split(","):
                part = part.strip()
                if part == "all":
                    out.update(dict.fromkeys(range(count)))
                elif part in groups:
                    out.update(dict.fromkeys(groups[part]))
                elif part.isdigit():
                    add(int(part))
                elif "-" in part and all(p.strip().isdigit() for p in part.split("-", 1)):
                    lo, hi = (int(p) for p in part.split("-", 1))
                    if lo > hi:
                        raise ScenarioError(f"{where}: empty range {part}")
                    if hi >= count:
                        raise ScenarioError(f"{where}: node {hi} out of range 0-{count - 1}")
                    out.update(dict.fromkeys(range(lo, hi + 1)))
                else:
                    raise ScenarioError(f"{where}: {part!r} is not a node, range, 'all' or group")
        elif isinstance(item, list):
            for sub in item:
                add(sub)
        else:
            raise ScenarioError(f"{where}: expected a node selection")

    add(spec)
    return tuple(out)


FUZZ_OPS = ("message", "state", "power", "crash", "restart", "leave", "join", "kick")


def _weights(raw: object) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise ScenarioError("fuzzer.weights: expected a table of operation = weight")
    out = {}
    for op, weight in raw.items():
        if op not in FUZZ_OPS:
            raise ScenarioError(f"fuzzer.weights.{op}: operations are {', '.join(FUZZ_OPS)}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ScenarioError(f"fuzzer.weights.{op}: expected an integer >= 0")
        out[op] = weight
    return out


def _profile(table: _Table, base: LinkProfile | None = None) -> LinkProfile:
    base = base or LinkProfile()
    try:
        latency = (
            parse_distribution(table.get("latency"), where=table.name("latency"))
            if "latency" in table.data
            else base.latency
        )
    except DistributionError as exc:
        raise ScenarioError(str(exc)) from None
    bandwidth = base.bandwidth
    if "bandwidth" in table.data:
        bandwidth = table.number("bandwidth", 0.0, minimum=1.0)
    loss = base.loss
    if "loss" in table.data:
        loss = table.number("loss", 0.0)
        if loss >= 1.0:
            raise ScenarioError(f"{table.name('loss')}: must be below 1")
    return LinkProfile(latency, bandwidth, loss)


_LINK_KEYS = {"latency", "bandwidth", "loss"}


def parse_scenario(document: Mapping[str, Any], *, source: str = "<dict>") -> Scenario:
    """Validate a scenario document (the TOML tables as a dict)."""
    top = _Table(
        document,
        "",
        {
            "scenario",
            "nodes",
            "groups",
            "network",
            "segments",
            "federation",
            "room",
            "traffic",
            "events",
            "metrics",
            "fuzzer",
        },
    )
    head = _Table(
        top.get("scenario", {}), "scenario", {"name", "description", "kind", "seed", "duration"}
    )
    name = head.string("name", Path(source).stem if source != "<dict>" else "scenario")
    kind = head.string("kind", "timeline", ("timeline", "fuzzer"))
    seed = head.integer("seed", 0)
    duration = head.number("duration", 600.0)

    if "nodes" not in document:
        raise ScenarioError("nodes: the table is required (at least nodes.count)")
    nt = _Table(top.get("nodes"), "nodes", {"count", "storage", "start_spread", "cache_events"})
    count = nt.integer("count", None, minimum=1)
    cache = nt.get("cache_events")
    nodes = NodesSpec(
        count=count,
        storage=nt.string("storage", "memory", STORAGE),
        start_spread=nt.number("start_spread", 0.0),
        cache_events=None if cache is None else nt.integer("cache_events", None, minimum=16),
    )

    groups: dict[str, tuple[int, ...]] = {}
    gt = top.get("groups", {})
    if not isinstance(gt, Mapping):
        raise ScenarioError("groups: expected a table")
    for gname, spec in gt.items():
        if gname in ("all",) or gname.replace("-", "").isdigit():
            raise ScenarioError(f"groups.{gname}: reserved name")
        groups[gname] = select(spec, count, groups, f"groups.{gname}")

    def sel(value: object, where: str) -> tuple[int, ...]:
        return select(value, count, groups, where)

    net = _Table(
        top.get("network", {}),
        "network",
        _LINK_KEYS
        | {
            "partition_mode",
            "discovery",
            "dial_round_trips",
            "max_retransmits",
            "min_rto",
            "keepalive_timeout",
            "connect_timeout",
            "track_links",
            "links",
        },
    )
    discovery = net.get("discovery", ["static"])
    if isinstance(discovery, str):
        discovery = [discovery]
    if not isinstance(discovery, list) or not all(d in DISCOVERY for d in discovery):
        raise ScenarioError(f"network.discovery: expected a list of {', '.join(DISCOVERY)}")
    links = []
    raw_links = net.get("links", [])
    if not isinstance(raw_links, list):
        raise ScenarioError("network.links: expected an array of tables")
    for i, raw in enumerate(raw_links):
        lt = _Table(raw, f"network.links[{i}]", _LINK_KEYS | {"a", "b"})
        if "a" not in lt.data or "b" not in lt.data:
            raise ScenarioError(f"network.links[{i}]: a and b are required")
        links.append(
            LinkOverride(
                sel(lt.get("a"), lt.name("a")), sel(lt.get("b"), lt.name("b")), _profile(lt)
            )
        )
    network = NetworkSpec(
        default=_profile(net),
        partition_mode=net.string("partition_mode", "refuse", PARTITION_MODES),
        discovery=tuple(dict.fromkeys(discovery)),
        dial_round_trips=net.integer("dial_round_trips", 2),
        max_retransmits=net.integer("max_retransmits", 6),
        min_rto=net.number("min_rto", 0.2),
        keepalive_timeout=net.number("keepalive_timeout", 30.0),
        connect_timeout=net.number("connect_timeout", 30.0, minimum=1.0),
        track_links=net.boolean("track_links", False),
        links=tuple(links),
    )

    segments = []
    raw_segments = top.get("segments", [])
    if not isinstance(raw_segments, list):
        raise ScenarioError("segments: expected an array of tables ([[segments]])")
    seen_nodes: dict[int, str] = {}
    for i, raw in enumerate(raw_segments):
        st = _Table(raw, f"segments[{i}]", _LINK_KEYS | {"name", "nodes", "mdns", "mdns_interval"})
        sname = st.string("name", f"segment{i}")
        members = sel(st.get("nodes", "all"), st.name("nodes"))
        for m in members:
            if m in seen_nodes:
                raise ScenarioError(f"{st.name('nodes')}: node {m} is already on {seen_nodes[m]}")
            seen_nodes[m] = sname
        segments.append(
            SegmentSpec(
                sname,
                members,
                _profile(st),
                st.boolean("mdns", True),
                st.number("mdns_interval", 60.0, minimum=1.0),
            )
        )
    if "mdns" in network.discovery and not segments:
        raise ScenarioError("network.discovery: mdns needs at least one [[segments]]")

    ft = _Table(
        top.get("federation", {}),
        "federation",
        {
            "fanout",
            "sync_interval",
            "announce_delay",
            "backoff_initial",
            "backoff_max",
            "max_catchup_events",
        },
    )
    defaults = FederationConfig()
    federation = FederationConfig(
        fanout=ft.integer("fanout", defaults.fanout, minimum=1),
        sync_interval=ft.number("sync_interval", defaults.sync_interval, minimum=0.1),
        announce_delay=ft.number("announce_delay", defaults.announce_delay),
        backoff_initial=ft.number("backoff_initial", defaults.backoff_initial, minimum=0.01),
        backoff_max=ft.number("backoff_max", defaults.backoff_max, minimum=0.01),
        max_catchup_events=ft.integer("max_catchup_events", defaults.max_catchup_events, minimum=1),
    )

    room = None
    if "room" in document:
        rt = _Table(
            top.get("room"), "room", {"at", "creator", "members", "preset", "power", "setup"}
        )
        creator = rt.integer("creator", 0)
        if creator >= count:
            raise ScenarioError(f"room.creator: node {creator} out of range")
        members = tuple(m for m in sel(rt.get("members", "all"), "room.members") if m != creator)
        power_raw = rt.get("power", {})
        if not isinstance(power_raw, Mapping):
            raise ScenarioError("room.power: expected a table of selection = level")
        power: dict[int, int] = {}
        for spec, level in power_raw.items():
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
                raise ScenarioError(f"room.power.{spec}: expected a level 0-100")
            for node in sel(spec, f"room.power.{spec}"):
                if node != creator:  # v12 creators are above every level
                    power[node] = level
        setup = rt.string("setup", "protocol", ("protocol", "prefab"))
        if setup == "prefab" and nodes.storage != "disk":
            raise ScenarioError('room.setup: prefab needs nodes.storage = "disk"')
        room = RoomSpec(
            at=rt.number("at", 0.0),
            creator=creator,
            members=members,
            preset=rt.string("preset", "public_chat", ("public_chat", "private_chat")),
            power=tuple(sorted(power.items())),
            setup=setup,
        )

    traffic = []
    raw_traffic = top.get("traffic", [])
    if not isinstance(raw_traffic, list):
        raise ScenarioError("traffic: expected an array of tables ([[traffic]])")
    for i, raw in enumerate(raw_traffic):
        tt = _Table(
            raw, f"traffic[{i}]", {"senders", "start", "end", "rate", "count", "body_bytes"}
        )
        if room is None:
            raise ScenarioError(f"traffic[{i}]: traffic needs a [room]")
        start = tt.number("start", 0.0)
        end = tt.number("end", duration)
        if end < start:
            raise ScenarioError(f"traffic[{i}].end: before start")
        if ("rate" in tt.data) == ("count" in tt.data):
            raise ScenarioError(f"traffic[{i}]: give exactly one of rate and count")
        traffic.append(
            TrafficSpec(
                senders=sel(tt.get("senders", "all"), tt.name("senders")),
                start=start,
                end=end,
                rate=tt.number("rate", 0.0) if "rate" in tt.data else None,
                count=tt.integer("count", 0) if "count" in tt.data else None,
                body_bytes=tt.integer("body_bytes", 64, minimum=1),
            )
        )

    events = []
    raw_events = top.get("events", [])
    if not isinstance(raw_events, list):
        raise ScenarioError("events: expected an array of tables ([[events]])")
    for i, raw in enumerate(raw_events):
        where = f"events[{i}]"
        if not isinstance(raw, Mapping):
            raise ScenarioError(f"{where}: expected a table")
        action = raw.get("action")
        if action not in _ACTION_KEYS:
            raise ScenarioError(f"{where}.action: expected one of {', '.join(ACTIONS)}")
        required, optional = _ACTION_KEYS[action]
        et = _Table(raw, where, {"at", "action"} | required | optional)
        missing = required - set(raw)
        if missing:
            raise ScenarioError(f"{where}: {action} needs {', '.join(sorted(missing))}")
        params: dict[str, Any] = {}
        for key in ("nodes", "a", "b"):
            if key in raw:
                params[key] = sel(raw[key], et.name(key))
        if action == "partition":
            parts = raw["groups"]
            if not isinstance(parts, list) or len(parts) < 2:
                raise ScenarioError(f"{where}.groups: expected at least two selections")
            params["groups"] = [sel(g, f"{where}.groups[{j}]") for j, g in enumerate(parts)]
        if action == "heal" and ("a" in raw) != ("b" in raw):
            raise ScenarioError(f"{where}: a partial heal needs both a and b")
        if action == "set_link":
            params["profile"] = _profile(et, network.default)
        if action == "churn":
            params["until"] = et.number("until", 0.0)
            params["mean_up"] = et.number("mean_up", 0.0, minimum=0.001)
            params["mean_down"] = et.number("mean_down", 0.0, minimum=0.001)
        if action == "state":
            params["type"] = et.string("type", "")
            params["state_key"] = et.string("state_key", "")
            content = raw.get("content", {})
            if not isinstance(content, Mapping):
                raise ScenarioError(f"{where}.content: expected a table")
            params["content"] = dict(content)
        if action == "power":
            users = raw["users"]
            if not isinstance(users, Mapping):
                raise ScenarioError(f"{where}.users: expected a table of selection = level")
            levels: dict[int, int] = {}
            for spec, level in users.items():
                if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
                    raise ScenarioError(f"{where}.users.{spec}: expected a level 0-100")
                levels.update(dict.fromkeys(sel(spec, f"{where}.users.{spec}"), level))
            params["users"] = levels
        if action == "message":
            params["count"] = et.integer("count", 1, minimum=1)
        if action in ("state", "power", "message", "leave", "join") and room is None:
            raise ScenarioError(f"{where}: {action} needs a [room]")
        events.append(Action(et.number("at", 0.0), action, params, i))
    events.sort(key=lambda a: (a.at, a.index))

    mt = _Table(
        top.get("metrics", {}),
        "metrics",
        {"sample_interval", "deliveries", "convergence_poll", "settle"},
    )
    metrics = MetricsSpec(
        sample_interval=mt.number("sample_interval", 10.0, minimum=0.01),
        deliveries=mt.boolean("deliveries", True),
        convergence_poll=mt.number("convergence_poll", 0.5, minimum=0.01),
        settle=mt.number("settle", 900.0),
    )

    fuzzer = None
    if kind == "fuzzer":
        zt = _Table(
            top.get("fuzzer", {}),
            "fuzzer",
            {
                "episodes",
                "members",
                "ops_per_episode",
                "episode_length",
                "max_crashed",
                "settle_timeout",
                "admins",
                "partitions",
                "conflicts",
                "weights",
            },
        )
        ops = zt.get("ops_per_episode", [4, 10])
        if (
            not isinstance(ops, list)
            or len(ops) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 1 for o in ops)
            or ops[0] > ops[1]
        ):
            raise ScenarioError(
                "fuzzer.ops_per_episode: expected [low, high] with 1 <= low <= high"
            )
        members_raw = zt.get("members")
        fuzz_members = None if members_raw is None else zt.integer("members", None, minimum=2)
        if fuzz_members is not None and fuzz_members > count:
            raise ScenarioError("fuzzer.members: more than nodes.count")
        if count < 3:
            raise ScenarioError("nodes.count: the fuzzer needs at least 3 nodes")
        fuzzer = FuzzerSpec(
            episodes=zt.integer("episodes", 20, minimum=1),
            members=fuzz_members,
            ops_per_episode=(ops[0], ops[1]),
            episode_length=zt.number("episode_length", 60.0, minimum=1.0),
            max_crashed=zt.number("max_crashed", 0.25),
            settle_timeout=zt.number("settle_timeout", 1800.0, minimum=1.0),
            admins=zt.integer("admins", 3),
            partitions=zt.boolean("partitions", True),
            conflicts=zt.boolean("conflicts", True),
            weights=_weights(zt.get("weights", {})),
        )
    elif "fuzzer" in document:
        raise ScenarioError('fuzzer: only for scenario.kind = "fuzzer"')

    return Scenario(
        name=name,
        description=head.string("description", ""),
        kind=kind,
        seed=seed,
        duration=duration,
        nodes=nodes,
        groups=groups,
        network=network,
        segments=tuple(segments),
        federation=federation,
        room=room,
        traffic=tuple(traffic),
        events=tuple(events),
        metrics=metrics,
        fuzzer=fuzzer,
        source=source,
        document=copy.deepcopy(dict(document)),
    )
