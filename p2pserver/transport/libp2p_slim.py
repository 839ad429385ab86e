"""py-libp2p without its package initialisers: the parts the node uses, not the whole library.

Why. ``import libp2p.<anything>`` first runs ``libp2p/__init__.py``, and in
py-libp2p 0.8.1 that and the other package ``__init__`` files re-export
nearly everything: QUIC (aioquic, pyOpenSSL), WebSocket, TLS and AutoTLS
(requests), relay, pubsub, bitswap, RSA/secp256k1/ECC keys and more. The
full node paid ~1,180 modules and ~55 MiB of its idle RSS for that, while it
uses TCP + Noise + Yamux, the host and the Kademlia DHT.

How. :func:`install` puts an import finder in front of ``sys.meta_path``
that loads every *package* under ``libp2p`` without executing its
``__init__.py`` (the package's directory is searched for submodules as
usual). Modules themselves load unchanged, so what the node imports is the
real, unmodified py-libp2p code; only the aggregating ``__init__`` files
are skipped. A package's own names stay reachable: the first access to one
that is not a submodule (``from libp2p import new_host``,
``libp2p.rcmgr.ResourceManager``) runs the real ``__init__.py`` at that
moment, after which the package is what a normal import leaves.
Dunder lookups (``__warningregistry__``, ``__wrapped__``, ...) never do, so
introspection does not pull the library in.

A few modules the node needs import, by name, things only optional
features call: BasicHost imports mDNS (zeroconf), UPnP, bootstrap and
AutoTLS (requests) support; key deserialisation imports RSA (pycryptodome,
cffi) and secp256k1 (coincurve); ``custom_types`` imports QUIC (aioquic,
pyOpenSSL) for a type alias. :data:`DEFERRED` lists these names. Such a
module is compiled from its source with those ``from X import name``
statements replaced by ``name = <deferred X.name>``: a stand-in that
imports X when it (or an attribute of it) is called, so the feature works
the moment it is used. This is sound only where the module does nothing
with the name but call it (or name it in an annotation or type alias);
tests/transport/test_libp2p_slim.py checks exactly that in the installed
source, and if an expected import is not found the module loads unchanged.

Rules: importing this module installs the finder, so import it before any
libp2p module (``libp2p_network`` and ``dht.service`` do, above an
``# isort: split``); if libp2p was already imported normally,
:func:`install` does nothing and everything still works, only heavier. Build hosts with :func:`new_host` (``libp2p.new_host`` lives in
the package initialiser that this module avoids). tests/transport/test_libp2p_slim.py
checks that the node's imports stay free of the heavy subsystems, that every
package initialiser still completes on demand and that :func:`new_host`
builds what ``libp2p.new_host`` does.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

    from libp2p.abc import IHost, ITransport
    from libp2p.crypto.keys import KeyPair
    from libp2p.custom_types import TMuxerOptions, TSecurityOptions
    from libp2p.network.config import ConnectionConfig

logger = logging.getLogger(__name__)

_ROOT = "libp2p"

# importer -> {module -> names it imports from there that only optional features call}
DEFERRED: dict[str, dict[str, tuple[str, ...]]] = {
    "libp2p.host.basic_host": {
        "libp2p.discovery.bootstrap.bootstrap": ("BootstrapDiscovery",),
        "libp2p.discovery.mdns.mdns": ("MDNSDiscovery", "create_mdns_discovery"),
        "libp2p.discovery.upnp.upnp": ("UpnpManager",),
        "libp2p.security.tls.autotls.acme": ("ACMEClient", "compute_b36_peer_id"),
        "libp2p.security.tls.autotls.broker": ("BrokerClient",),
    },
    "libp2p.custom_types": {"libp2p.transport.quic.stream": ("QUICStream",)},
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
_DEFERRED_FACTORY = "__p2pserver_deferred__"
# One lock for every completion: a package initialiser may import another.
_completing = threading.RLock()


def _is_submodule(package: ModuleType, name: str) -> bool:
    for directory in getattr(package, "__path__", ()):
        path = os.path.join(directory, name)
        if os.path.isfile(path + ".py") or os.path.isdir(path):
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


class _Deferred:
    """Stands for ``module.path`` until called; then imports the module and calls the real thing."""

    __slots__ = ("_module", "_path")

    def __init__(self, module: str, path: str) -> None:
        self._module = module
        self._path = path

    def resolve(self) -> Any:
        obj: Any = importlib.import_module(self._module)
        for part in self._path.split("."):
            obj = getattr(obj, part)
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, name: str) -> _Deferred:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Deferred(self._module, f"{self._path}.{name}")

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._path}>"


def _defer_imports(tree: ast.Module, deferred: dict[str, tuple[str, ...]]) -> bool:
    """Replace the module-level ``from X import name`` of each deferred name; False if one is missing."""
    wanted = {(source, name) for source, names in deferred.items() for name in names}
    found: set[tuple[str, str]] = set()
    body: list[ast.stmt] = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module in deferred):
            body.append(stmt)
            continue
        source = stmt.module
        kept = [a for a in stmt.names if (source, a.name) not in wanted]
        if kept:
            body.append(ast.copy_location(ast.ImportFrom(source, kept, 0), stmt))
        for alias in stmt.names:
            if (source, alias.name) not in wanted:
                continue
            found.add((source, alias.name))
            stand_in = ast.Call(
                ast.Name(_DEFERRED_FACTORY, ast.Load()),
                [ast.Constant(source), ast.Constant(alias.name)],
                [],
            )
            target = ast.Name(alias.asname or alias.name, ast.Store())
            body.append(ast.copy_location(ast.Assign([target], stand_in), stmt))
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
        # Already imported for real: nothing to save by deferring it.
        deferred = {s: n for s, n in self.deferred.items() if s not in sys.modules}
        source = self.real.get_source(module.__name__) if deferred else None
        tree = ast.parse(source, module.__file__ or "<libp2p>") if source else None
        if tree is None or not _defer_imports(tree, deferred):
            if deferred:
                logger.debug("%s: deferred imports not found, loading as is", module.__name__)
            self.real.exec_module(module)
            return
        code = compile(tree, module.__file__ or "<libp2p>", "exec", dont_inherit=True)
        module.__dict__[_DEFERRED_FACTORY] = _Deferred
        try:
            exec(code, module.__dict__)
        finally:
            module.__dict__.pop(_DEFERRED_FACTORY, None)


class _BarePackageFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _ROOT and not fullname.startswith(_ROOT + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not spec.has_location:
            return spec  # not found, or a namespace package: nothing to skip
        if spec.submodule_search_locations is not None:
            spec.loader = _BarePackageLoader(spec.loader)
        elif fullname in DEFERRED:
            spec.loader = _DeferringLoader(spec.loader, DEFERRED[fullname])
        return spec  # any other module loads as usual


_finder = _BarePackageFinder()


def install() -> bool:
    """Load libp2p's packages bare from now on; False if libp2p is already imported normally."""
    if _finder in sys.meta_path:
        return True
    if _ROOT in sys.modules:
        return False
    sys.meta_path.insert(0, _finder)
    _no_dns_over_quic()
    return True


def is_bare(package: str) -> bool:
    """Whether ``package`` is loaded and its ``__init__.py`` has not run (for tests)."""
    module = sys.modules.get(package)
    getattr_ = module.__dict__.get("__getattr__") if module is not None else None
    return getattr(getattr_, "__qualname__", "").startswith("_BarePackageLoader.")


def _no_dns_over_quic() -> None:
    """Tell dnspython that DNS-over-QUIC is unavailable.

    libp2p's swarm and TCP transport hold a multiaddr DNS resolver (for
    /dns addresses); dnspython imports aioquic and with it pyOpenSSL for
    DNS-over-QUIC whenever aioquic is installed (~4 MiB), though nothing
    here resolves over QUIC. ``dns._features.force`` is dnspython's switch
    for this.
    """
    try:
        import dns._features
    except ImportError:
        return
    dns._features.force("doq", False)


def new_host(
    key_pair: KeyPair,
    *,
    sec_opt: TSecurityOptions,
    muxer_opt: TMuxerOptions,
    connection_config: ConnectionConfig,
    transports: Sequence[ITransport] | None = None,
) -> IHost:
    """What ``libp2p.new_host`` builds for these arguments (TCP unless ``transports``).

    The same steps as py-libp2p 0.8.1's ``new_host``/``new_swarm`` with no
    QUIC, mDNS, UPnP, AutoTLS, metrics or bootstrap: a peerstore holding our
    key pair, an upgrader with the given security and muxer options, a
    swarm, the default resource manager and a BasicHost.
    """
    from libp2p.host.basic_host import BasicHost
    from libp2p.network.swarm import Swarm
    from libp2p.peer.id import ID
    from libp2p.peer.peerstore import PeerStore
    from libp2p.rcmgr.manager import new_resource_manager
    from libp2p.transport.manager import TransportManager
    from libp2p.transport.tcp.tcp import TCP
    from libp2p.transport.upgrader import TransportUpgrader

    peer_id = ID.from_pubkey(key_pair.public_key)
    peerstore = PeerStore()
    peerstore.add_key_pair(peer_id, key_pair)
    upgrader = TransportUpgrader(
        secure_transports_by_protocol=sec_opt, muxer_transports_by_protocol=muxer_opt
    )
    swarm = Swarm(
        peer_id,
        peerstore,
        upgrader,
        transports=list(transports) if transports is not None else [TCP()],
        connection_config=connection_config,
        transport_manager=TransportManager(port_demuxers={}),
    )
    resource_manager = new_resource_manager()
    swarm.set_resource_manager(resource_manager)
    return BasicHost(network=swarm, resource_manager=resource_manager)


install()
