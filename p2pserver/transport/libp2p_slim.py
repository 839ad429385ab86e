"""py-libp2p without its package initialisers: the parts the node uses, not the whole library.

Why. ``import libp2p.<anything>`` first runs ``libp2p/__init__.py``, and in
py-libp2p 0.8.1 that and the other package ``__init__`` files re-export
nearly everything: QUIC (aioquic, pyOpenSSL), WebSocket, TLS and AutoTLS
(requests), relay, pubsub, bitswap, RSA/secp256k1/ECC keys and more. The
full node paid ~1,180 modules and ~55 MiB of its idle RSS for that, while it
uses TCP + Noise + Yamux, the host and the Kademlia DHT.

Bare packages. :func:`install` puts an import finder in front of
``sys.meta_path`` that loads every *package* under ``libp2p`` without
executing its ``__init__.py`` (the package's directory is searched for
submodules as usual). Modules load from their own files, so what the node
runs is py-libp2p's code; only the aggregating ``__init__`` files are
skipped. A package's own names stay reachable: the first access to one that
is not a submodule (``from libp2p import new_host``,
``libp2p.rcmgr.ResourceManager``) runs the real ``__init__.py`` at that
moment, after which the package is what a normal import leaves. Dunder
lookups (``__warningregistry__``, ``__wrapped__``, ...) never do, so
introspection does not pull the library in.

Deferred names. Some modules the node needs import, by name, things only
optional features use: BasicHost imports mDNS (zeroconf), UPnP, bootstrap,
AutoTLS (requests, x509) support; the swarm imports private-network PSK
(pycryptodome, cffi); the swarm and TCP transport import a DNS resolver
(dnspython, and through it aioquic) for /dns addresses, which the node
never dials; metrics and the resource manager import prometheus_client;
key deserialisation imports RSA (pycryptodome) and secp256k1 (coincurve);
``custom_types`` imports QUIC (aioquic, pyOpenSSL) and pubsub for type
aliases; the Kademlia module imports provider-record CIDs and random walks
(our DHT uses neither); libp2p's service framework imports anyio for its
asyncio flavour (the swarm runs the trio one); the resource manager's
memory statistics import psutil, though nothing in py-libp2p 0.8.1 ever
reads them (its memory limits are configured but never checked), and so
does ``multiaddr.utils``, which the TCP transport uses to parse addresses,
for listing interfaces (which the node does with ifaddr); multihash imports
the BLAKE3 and MurmurHash3 libraries for hash functions peer IDs never use
(identity and SHA-256). :data:`DEFERRED` lists these names (its two
importers outside libp2p, ``multiaddr.utils`` and ``multihash.funcs``, are
only imported by libp2p modules). Such a module is compiled from its source
with those ``from X import name`` (or ``import X``) statements replaced by
``name = <stand-in for X.name>``, and X is imported when the stand-in is
called, or when an attribute of it is read after the module has loaded, so
a feature works the moment it is used. That is sound only where the module
does nothing else with the name (``isinstance``, ``except``, a base class,
passing it around would see the stand-in): tests/transport/test_libp2p_slim.py
checks each use in the installed source. If an expected import is missing
(another py-libp2p), the module loads unchanged. The compiled code is cached
beside the module's .pyc. Some calls are deferred too (:data:`LAZY_CALLS`):
the DNS resolver every swarm builds and never uses, the ``psutil.Process()``
every memory statistics cache builds at once and only reads when statistics
are asked for, and the BLAKE3 hasher multihash makes at import to test it.

Substitutes. A few deferred names are replaced by something cheaper that
does the same at run time (:data:`SUBSTITUTES`). Identify reads libp2p's
version at import, through ``importlib.metadata.version``, and
importlib.metadata (with email, zipfile, csv...) costs ~1 MiB for that one
answer; :func:`package_version` reads it from the distribution's METADATA
file, and falls back to importlib.metadata wherever that is not a plain
``.dist-info`` directory. trio_typing (which imports typing_extensions,
~0.5 MiB) only helps type checkers: at run time its
``takes_callable_and_args`` returns the function it decorates, and its
``TaskStatus`` is only subscripted in annotations and ``typing.cast``, where
``trio.TaskStatus`` does as well (the tests check both).

Nothing the node runs on (TCP, Noise, Yamux, identify, ping, the resource
manager, Kademlia) is deferred: those modules load as soon as libp2p_network
and dht.service are imported.

Rules: importing this module installs the finder, so import it before any
libp2p module (``libp2p_network``, ``dht.service`` and
``dht.memory_transport`` do, above an ``# isort: split``); if libp2p was
already imported normally, :func:`install` does nothing and everything
still works, only heavier. Hosts come from ``libp2p_network.new_host``
(``libp2p.new_host`` lives in the package initialiser skipped here).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import marshal
import os
import re
import sys
import threading
from collections.abc import Sequence
from contextlib import suppress
from types import ModuleType
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

logger = logging.getLogger(__name__)

_ROOT = "libp2p"

# importer -> {module -> names imported from it that only optional features use;
# "" for ``import module`` itself}
DEFERRED: dict[str, dict[str, tuple[str, ...]]] = {
    "libp2p.host.basic_host": {
        "cryptography": ("x509",),  # AutoTLS certificates
        "cryptography.x509.oid": ("ExtensionOID",),
        "libp2p.discovery.bootstrap.bootstrap": ("BootstrapDiscovery",),
        "libp2p.discovery.mdns.mdns": ("MDNSDiscovery", "create_mdns_discovery"),
        "libp2p.discovery.upnp.upnp": ("UpnpManager",),
        "libp2p.security.tls.autotls.acme": ("ACMEClient", "compute_b36_peer_id"),
        "libp2p.security.tls.autotls.broker": ("BrokerClient",),
        "libp2p.relay.circuit_v2.nat": ("is_private_ip",),  # AutoTLS too
    },
    "libp2p.network.swarm": {
        "libp2p.security.pnet.protector": ("new_protected_conn",),
        "multiaddr.resolvers": ("DNSResolver",),  # see LAZY_CALLS
    },
    # dnspython (~60 modules; with aioquic installed also QUIC and pyOpenSSL for
    # DNS-over-QUIC): only to dial /dns, /dns4, /dns6 and /dnsaddr addresses.
    "libp2p.utils.dns_utils": {"multiaddr.resolvers": ("DNSResolver",)},
    "libp2p.metrics.swarm": {"prometheus_client": ("Counter",)},
    "libp2p.rcmgr.manager": {
        "libp2p.rcmgr.prometheus_exporter": ("PrometheusExporter", "create_prometheus_exporter"),
        # off by default: connection pooling and per-subnet limits
        "libp2p.rcmgr.connection_pool": ("ConnectionPool",),
        "libp2p.rcmgr.cidr_limits": ("CIDRLimiter",),
    },
    "libp2p.custom_types": {
        "libp2p.transport.quic.stream": ("QUICStream",),
        "libp2p.pubsub.pb": ("rpc_pb2",),  # a type alias of pubsub's
    },
    # anyio: for the asyncio flavour of libp2p's services; the swarm runs on trio
    "libp2p.tools.anyio_service.api": {
        "anyio": ("",),
        "anyio.streams.memory": ("MemoryObjectSendStream",),
    },
    "libp2p.tools.anyio_service.context": {"anyio": ("",)},
    "libp2p.tools.anyio_service.manager": {
        "anyio": ("", "TaskInfo"),
        "anyio.abc": ("TaskGroup",),
    },
    "libp2p.tools.anyio_service.tasks": {"anyio": ("", "TaskInfo")},
    # provider records (CIDs) and random-walk refreshes: our DHT uses neither
    "libp2p.kad_dht.kad_dht": {
        "libp2p.bitswap.cid": ("parse_cid",),
        "libp2p.discovery.random_walk.rt_refresh_manager": ("RTRefreshManager",),
    },
    # psutil: only if memory statistics are asked for (see LAZY_CALLS), or to
    # list the interfaces for a wildcard address (the node never asks)
    "libp2p.rcmgr.memory_stats": {"psutil": ("",)},
    "multiaddr.utils": {"psutil": ("",)},
    # hash functions peer IDs never use (blake3's Rust build alone is ~0.6 MiB)
    "multihash.funcs": {"blake3": ("",), "mmh3": ("",)},
    # libp2p's version, read once at import by identify: see SUBSTITUTES
    "libp2p.utils.version": {"importlib.metadata": ("version",)},
    # typing helpers (see SUBSTITUTES)
    "libp2p.tools.anyio_service.trio_manager": {"trio_typing": ("",)},
    "libp2p.transport.tcp.tcp": {
        "multiaddr.resolvers": ("DNSResolver",),
        "trio_typing": ("TaskStatus",),
    },
    "libp2p.crypto.serialization": {
        "libp2p.crypto.rsa": ("RSAPrivateKey", "RSAPublicKey"),
        "libp2p.crypto.secp256k1": ("Secp256k1PrivateKey", "Secp256k1PublicKey"),
    },
    "libp2p.peer.envelope": {
        "libp2p.crypto.rsa": ("RSAPublicKey",),
        "libp2p.crypto.secp256k1": ("Secp256k1PublicKey",),
    },
    "libp2p.records.pubkey": {
        "libp2p.crypto.rsa": ("RSAPublicKey",),
        "libp2p.crypto.secp256k1": ("Secp256k1PublicKey",),
    },
    "libp2p.records.utils": {
        "libp2p.crypto.rsa": ("RSAPublicKey",),
        "libp2p.crypto.secp256k1": ("Secp256k1PublicKey",),
    },
}
# (importer, module.name) whose call gives an object built only when first used:
# - every Swarm builds a DNS resolver into ``swarm.dns_resolver``, which
#   nothing reads (the TCP transport makes its own for each /dns dial);
# - every MemoryStatsCache (the resource manager builds two) makes a
#   ``psutil.Process()`` for this process; it is used when statistics are
#   collected, and then made (an error making it would surface there, not
#   in the constructor, which would have swallowed it);
# - multihash's registry makes one hasher of each kind at import to see that
#   it works; a BLAKE3 hasher is made for real when first fed (the blake3
#   library is a hard dependency of multihash, so it is always there).
LAZY_CALLS = {
    ("libp2p.network.swarm", "multiaddr.resolvers.DNSResolver"),
    ("libp2p.rcmgr.memory_stats", "psutil.Process"),
    ("multihash.funcs", "blake3.blake3"),
}
_STAND_IN = "__p2pserver_stand_in__"
_CACHE_SUFFIX = ".p2pserver-slim.pyc"
_CACHE_VERSION = b"1"  # bump when _defer_imports changes the code it produces
# One lock for every completion: a package initialiser may import another.
_completing = threading.RLock()


# --- bare packages -------------------------------------------------------------------


def _is_submodule(package: ModuleType, name: str) -> bool:
    for directory in getattr(package, "__path__", ()):
        path = os.path.join(directory, name)
        if os.path.isdir(path) or any(
            os.path.isfile(path + suffix) for suffix in importlib.machinery.all_suffixes()
        ):
            return True
    return False


class _BarePackageLoader(importlib.abc.Loader):
    """Creates the package module; runs its ``__init__.py`` only when a name from it is asked for."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        real = self.real

        def __getattr__(name: str) -> Any:
            if name.startswith("__") and name.endswith("__") and name != "__all__":
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
            if _is_submodule(module, name):
                return importlib.import_module(f"{module.__name__}.{name}")
            with _completing:
                if module.__dict__.get("__getattr__") is __getattr__:
                    del module.__dict__["__getattr__"]
                    real.exec_module(module)
            try:
                return module.__dict__[name]
            except KeyError:
                raise AttributeError(
                    f"module {module.__name__!r} has no attribute {name!r}"
                ) from None

        module.__dict__["__getattr__"] = __getattr__


def is_bare(package: str) -> bool:
    """Whether ``package`` is loaded and its ``__init__.py`` has not run (for tests)."""
    module = sys.modules.get(package)
    getattr_ = module.__dict__.get("__getattr__") if module is not None else None
    return getattr(getattr_, "__qualname__", "").startswith("_BarePackageLoader.")


# --- deferred names ------------------------------------------------------------------


class _StandIn:
    """Stands for ``module.path``; imports the module when called or when an attribute is read.

    While the importing module is still executing, attribute reads give
    stand-ins too, so a module-level table of ``Name.method`` entries stays
    deferred until an entry is called.
    """

    __slots__ = ("_module", "_path", "_importing", "_lazy_calls")

    def __init__(
        self,
        module: str,
        path: str,
        importing: list[bool],
        lazy_calls: frozenset[str] = frozenset(),
    ) -> None:
        self._module = module
        self._path = path
        self._importing = importing  # [True] while the importing module executes
        self._lazy_calls = lazy_calls  # the importer's LAZY_CALLS targets

    def _target(self, path: str) -> str:
        return ".".join(filter(None, (self._module, path)))

    def resolve(self) -> Any:
        obj: Any = importlib.import_module(self._module)
        for part in filter(None, self._path.split(".")):
            obj = getattr(obj, part)
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._target(self._path) in self._lazy_calls:
            return _LazyResult(self, args, kwargs)
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        path = f"{self._path}.{name}" if self._path else name
        if self._importing[0] or self._target(path) in self._lazy_calls:
            return _StandIn(self._module, path, self._importing, self._lazy_calls)
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        return f"<stand-in for {self._target(self._path)}>"


class _LazyResult:
    """What calling a LAZY_CALLS stand-in gives: the real call is made when an attribute is read."""

    __slots__ = ("_call", "_lock", "_value")

    def __init__(self, stand_in: _StandIn, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._call = (stand_in, args, kwargs)
        self._lock = threading.Lock()
        self._value: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        with self._lock:
            if self._value is None:
                stand_in, args, kwargs = self._call
                self._value = stand_in.resolve()(*args, **kwargs)
        return getattr(self._value, name)


def package_version(distribution: str) -> str:
    """``importlib.metadata.version(distribution)``, without importing importlib.metadata.

    Finds the distribution as importlib.metadata does (the first ``sys.path``
    entry holding it) and reads ``Version:`` from its METADATA when that is a
    ``<name>-<version>.dist-info`` directory; anything else (an .egg-info,
    a zip archive, unreadable metadata) is left to importlib.metadata.
    """
    metadata = _dist_info_metadata(distribution)
    if metadata is not None:
        with suppress(OSError, UnicodeDecodeError), open(metadata, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the headers
                key, colon, value = line.partition(":")
                if colon and key.strip().lower() == "version":
                    return value.strip()
    from importlib.metadata import version

    return version(distribution)


def _dist_info_metadata(distribution: str) -> str | None:
    """The METADATA path of the first distribution named so on sys.path, if a .dist-info."""
    wanted = re.sub(r"[-_.]+", "_", distribution).lower()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            if entry and os.path.isfile(entry):  # a zip archive: importlib.metadata's job
                return None
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info", "egg"):
                continue
            if re.sub(r"[-_.]+", "_", stem.partition("-")[0]).lower() == wanted:
                if suffix != "dist-info":
                    return None
                return os.path.join(entry or ".", name, "METADATA")
    return None


def _returns_its_argument(fn: Any) -> Any:
    return fn


class _TrioTypingAtRunTime:
    """What the node's libp2p modules use of trio_typing, as it behaves at run time."""

    takes_callable_and_args = staticmethod(_returns_its_argument)


# (module, name) -> what the importer gets instead: the same behaviour, cheaper.
SUBSTITUTES: dict[tuple[str, str], Any] = {
    ("importlib.metadata", "version"): package_version,
    ("trio_typing", ""): _TrioTypingAtRunTime,
    # trio's own TaskStatus is hidden from mypy by trio_typing's stubs
    ("trio_typing", "TaskStatus"): trio.TaskStatus,  # type: ignore[attr-defined]
}


def _absolute(stmt: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` statement in ``package`` names."""
    if stmt.level == 0:
        return stmt.module or ""
    base = package.rsplit(".", stmt.level - 1)[0] if stmt.level > 1 else package
    return f"{base}.{stmt.module}" if stmt.module else base


def _stand_in(source: str, name: str, target: str, stmt: ast.stmt) -> ast.stmt:
    """``target = <stand-in for source.name>`` (the module itself when ``name`` is empty)."""
    call = ast.Call(ast.Name(_STAND_IN, ast.Load()), [ast.Constant(source), ast.Constant(name)], [])
    return ast.copy_location(ast.Assign([ast.Name(target, ast.Store())], call), stmt)


def _defer_imports(tree: ast.Module, deferred: dict[str, tuple[str, ...]], package: str) -> bool:
    """Replace the module-level imports of the deferred names by stand-ins; False if one is missing."""
    wanted = {(source, name) for source, names in deferred.items() for name in names}
    found: set[tuple[str, str]] = set()
    body: list[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):  # import X [as Y]: name "" stands for X itself
            for alias in stmt.names:
                if (alias.name, "") in wanted and "." not in alias.name:
                    found.add((alias.name, ""))
                    body.append(_stand_in(alias.name, "", alias.asname or alias.name, stmt))
                else:
                    body.append(ast.copy_location(ast.Import([alias]), stmt))
            continue
        source = _absolute(stmt, package) if isinstance(stmt, ast.ImportFrom) else ""
        if not isinstance(stmt, ast.ImportFrom) or source not in deferred:
            body.append(stmt)
            continue
        kept = [a for a in stmt.names if (source, a.name) not in wanted]
        if kept:
            body.append(ast.copy_location(ast.ImportFrom(stmt.module, kept, stmt.level), stmt))
        for alias in stmt.names:
            if (source, alias.name) in wanted:
                found.add((source, alias.name))
                body.append(_stand_in(source, alias.name, alias.asname or alias.name, stmt))
    tree.body = body
    ast.fix_missing_locations(tree)
    return found == wanted


class _DeferringLoader(importlib.abc.Loader):
    """Runs a module compiled with its DEFERRED imports replaced by stand-ins."""

    def __init__(self, real: Any, deferred: dict[str, tuple[str, ...]]) -> None:
        self.real = real
        self.deferred = deferred

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Names already imported for real: nothing to save by deferring them.
        deferred = {}
        for origin, names in self.deferred.items():
            loaded = sys.modules.get(origin)
            left = tuple(n for n in names if loaded is None or n and n not in loaded.__dict__)
            if left:
                deferred[origin] = left
        code = self._code(module, deferred) if deferred else None
        if code is None:
            self.real.exec_module(module)
            return
        importing = [True]
        importer = module.__name__
        lazy_calls = frozenset(target for i, target in LAZY_CALLS if i == importer)
        module.__dict__[_STAND_IN] = lambda source, name: (
            SUBSTITUTES[source, name]
            if (source, name) in SUBSTITUTES
            else _StandIn(source, name, importing, lazy_calls)
        )
        try:
            exec(code, module.__dict__)
        finally:
            importing[0] = False
            module.__dict__.pop(_STAND_IN, None)

    def _code(self, module: ModuleType, deferred: dict[str, tuple[str, ...]]) -> Any:
        """The module's code with ``deferred`` imports replaced; None if they are not all there.

        Compiled code is cached beside the module's own .pyc, as pytest does
        for rewritten tests: compiling swarm.py from source costs ~3 MiB of
        transient memory, ~1.5 MiB of which stays fragmented for good.
        """
        filename = module.__file__ or module.__name__
        key = hashlib.sha256(
            _CACHE_VERSION + importlib.util.MAGIC_NUMBER + repr(sorted(deferred.items())).encode()
        ).digest()[:16]
        try:
            stat = os.stat(filename)
            stamp = (
                key + stat.st_mtime_ns.to_bytes(8, "little") + stat.st_size.to_bytes(8, "little")
            )
            cache = importlib.util.cache_from_source(filename).removesuffix(".pyc") + _CACHE_SUFFIX
        except (OSError, ValueError, NotImplementedError):
            stamp, cache = b"", ""
        if cache:
            with suppress(OSError, ValueError, EOFError, TypeError):
                with open(cache, "rb") as f:
                    data = f.read()
                if data.startswith(stamp):
                    return marshal.loads(data[len(stamp) :])
        source = self.real.get_source(module.__name__)
        tree = ast.parse(source, filename) if source else None
        if tree is None or not _defer_imports(tree, deferred, module.__name__.rpartition(".")[0]):
            logger.debug("%s: deferred imports not found, loading as is", module.__name__)
            return None
        code = compile(tree, filename, "exec", dont_inherit=True)
        del tree
        if cache:  # best effort: a read-only install just compiles every time
            tmp = f"{cache}.{os.getpid()}.tmp"
            try:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(stamp + marshal.dumps(code))
                os.replace(tmp, cache)
            except OSError:
                with suppress(OSError):
                    os.unlink(tmp)
        return code


# --- the finder ----------------------------------------------------------------------


class _Libp2pFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        in_libp2p = fullname.split(".")[0] == _ROOT
        if not in_libp2p and fullname not in DEFERRED:  # e.g. multiaddr.utils
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not spec.has_location:
            return spec  # not found, or a namespace package: nothing to skip
        if spec.submodule_search_locations is not None and in_libp2p:
            spec.loader = _BarePackageLoader(spec.loader)
        elif fullname in DEFERRED:
            spec.loader = _DeferringLoader(spec.loader, DEFERRED[fullname])
        return spec  # any other module loads as usual


_finder = _Libp2pFinder()


def install() -> bool:
    """Load libp2p slim from now on; False if libp2p is already imported normally."""
    if _finder in sys.meta_path:
        return True
    if _ROOT in sys.modules:
        return False
    sys.meta_path.insert(0, _finder)
    return True


install()
