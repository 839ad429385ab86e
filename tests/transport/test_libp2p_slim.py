"""p2pserver.transport.libp2p_slim: libp2p loads only what the node uses, and nothing is lost.

Each check runs in a fresh interpreter, since the point is what an import
leaves in ``sys.modules`` (pytest's own process has long imported libp2p).
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import p2pserver
from p2pserver.transport import libp2p_slim

# Subsystems the node never uses; importing any of them means the slim import regressed.
HEAVY = [
    "aioquic",
    "requests",
    "zeroconf",
    "libp2p.transport.quic.transport",
    "libp2p.transport.websocket.transport",
    "libp2p.security.tls.transport",
    "libp2p.security.secio.transport",
    "libp2p.pubsub.pubsub",
    "libp2p.relay.circuit_v2.protocol",
    "libp2p.bitswap.block_service",
    "Crypto",
    "coincurve",
    "prometheus_client",
    "cryptography.x509",
    "dns",
    "anyio",
    "psutil",
    "importlib.metadata",
    "blake3",
    "mmh3",
    "trio_typing",
    "typing_extensions",
]


def run_python(code: str, timeout: float = 120) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON value last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_node_imports_leave_the_heavy_subsystems_out() -> None:
    loaded = run_python(
        """
        import json, sys
        import p2pserver.transport.libp2p_network, p2pserver.dht.service, p2pserver.discovery
        from p2pserver.transport import libp2p_slim
        print(json.dumps({
            "bare_root": libp2p_slim.is_bare("libp2p"),
            "modules": sorted(sys.modules),
        }))
        """
    )
    assert loaded["bare_root"]
    modules = set(loaded["modules"])
    assert [m for m in HEAVY if m in modules] == []
    # The node needs ~190 libp2p modules; a plain `import libp2p` loads ~300.
    assert len([m for m in modules if m.split(".")[0] == "libp2p"]) < 220


def test_every_package_initialiser_still_runs_on_demand() -> None:
    """A package's own names appear on first use, as after a normal import."""
    normal = run_python(
        """
        import json, sys, types
        import libp2p, libp2p.kad_dht.kad_dht
        def own_names(package, module):  # submodules appear as attributes once imported
            return sorted(k for k, v in vars(module).items() if not k.startswith("_")
                          and getattr(v, "__name__", None) != f"{package}.{k}")
        packages = {n: own_names(n, m) for n, m in sys.modules.items()
                    if n.split(".")[0] == "libp2p" and hasattr(m, "__path__")}
        print(json.dumps(packages))
        """
    )
    slim = run_python(
        f"""
        import json, sys
        import p2pserver.transport.libp2p_network
        from p2pserver.transport import libp2p_slim
        import importlib
        packages = {sorted(normal)!r}
        for package in packages:
            module = importlib.import_module(package)
            getattr(module, "__all__", None)  # runs the initialiser if still bare
            assert not libp2p_slim.is_bare(package), package
        from libp2p import new_host  # the root package's own function
        def own_names(package, module):
            return sorted(k for k, v in vars(module).items() if not k.startswith("_")
                          and getattr(v, "__name__", None) != f"{{package}}.{{k}}")
        names = {{p: own_names(p, sys.modules[p]) for p in packages}}
        print(json.dumps(names))
        """
    )
    missing = {p: sorted(set(normal[p]) - set(slim[p])) for p in normal}
    assert {p: m for p, m in missing.items() if m} == {}


def test_new_host_builds_what_libp2p_new_host_builds() -> None:
    built = run_python(
        """
        import json
        from typing import Any, cast
        import p2pserver.transport.libp2p_network as net
        from p2pserver.rooms.signing import SigningKey
        import libp2p
        from libp2p.crypto.x25519 import create_new_key_pair
        from libp2p.network.config import ConnectionConfig
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as Noise
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
        from libp2p.stream_muxer.yamux.yamux import Yamux

        def describe(host):
            swarm = host.get_network()
            upgrader = swarm.upgrader
            return {
                "host": type(host).__name__,
                "swarm": type(swarm).__name__,
                "transports": [type(t).__name__ for t in swarm.transport_manager.get_transports()],
                "security": sorted(upgrader.security_multistream.transports),
                "muxers": sorted(upgrader.muxer_multistream.transports),
                "resource_manager": type(swarm._resource_manager).__name__,
                "host_resource_manager": swarm._resource_manager is not None,
                "peer_id": str(host.get_id()),
                "has_private_key": host.get_private_key() is not None,
                "max_connections_per_peer": swarm.connection_config.max_connections_per_peer,
                "protocols": sorted(host.get_mux().get_protocols()),
                "mdns": host.mDNS, "upnp": host.upnp, "bootstrap": host.bootstrap,
            }

        keypair = net.keypair_from_signing_key(SigningKey.generate())
        def options():
            return dict(
                sec_opt={NOISE_ID: Noise(keypair, noise_privkey=create_new_key_pair().private_key)},
                muxer_opt=cast(Any, {YAMUX_ID: Yamux}),
                connection_config=ConnectionConfig(max_connections_per_peer=1),
            )
        ours = describe(net.new_host(keypair, **options()))
        theirs = describe(libp2p.new_host(key_pair=keypair, **options()))
        print(json.dumps([ours, theirs]))
        """
    )
    ours, theirs = built
    assert ours == theirs
    assert ours["transports"] == ["TCP"]


@pytest.mark.timeout(120)
def test_two_slim_networks_talk_and_stay_slim() -> None:
    """Noise, Yamux and our protocol over TCP on 127.0.0.1, with libp2p loaded slim."""
    outcome = run_python(
        """
        import json, sys
        import trio
        from p2pserver.transport.libp2p_network import Libp2pNetwork
        from p2pserver.transport import libp2p_slim
        from p2pserver.rooms.signing import SigningKey

        async def main():
            a = Libp2pNetwork(SigningKey.generate(), listen_ips=["127.0.0.1"], port=0)
            b = Libp2pNetwork(SigningKey.generate(), listen_ips=["127.0.0.1"], port=0)
            async def handler(origin, method, body):
                return {"origin": origin, "echo": body}
            b.set_request_handler(handler)
            async with a.running(), b.running():
                a.add_peer_address(b.server_name, b.listen_addresses())
                answer = await a.request(b.server_name, "ping", {"n": 1}, timeout=20)
            return answer == {"origin": a.server_name, "echo": {"n": 1}}

        ok = trio.run(main)
        print(json.dumps({"ok": ok, "bare_root": libp2p_slim.is_bare("libp2p"),
                          "heavy": [m for m in HEAVY if m in sys.modules]}))
        """.replace("HEAVY", repr(HEAVY))
    )
    assert outcome == {"ok": True, "bare_root": True, "heavy": []}


def _uses_of(tree: ast.Module, name: str) -> list[str]:
    """How ``tree`` uses ``name``, one entry per use (see test_deferred_names_are_used_safely)."""
    parents: dict[ast.AST, ast.AST] = {}
    annotations: set[ast.AST] = set()
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.update(ast.walk(node.annotation))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            annotations.update(ast.walk(node.returns))
    module_tables = {
        stmt.value for stmt in tree.body if isinstance(stmt, ast.Assign | ast.AnnAssign)
    }
    uses = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)):
            continue
        ancestors = _ancestors(node, parents)
        in_function = any(
            isinstance(a, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) for a in ancestors
        )
        outer: ast.AST = node
        while isinstance(parents[outer], ast.Attribute):  # name.attr.attr...
            outer = parents[outer]
        parent = parents[outer]
        if node in annotations:
            uses.append("annotation")
        elif isinstance(parent, ast.Call) and parent.func is outer:
            uses.append("call")
        elif in_function and outer is not node:
            uses.append("attribute")  # read after the module loaded: the real attribute
        elif isinstance(parent, ast.Dict) and outer in parent.values and parent in module_tables:
            uses.append("table entry")  # stays a stand-in until called
        elif not in_function and any(
            isinstance(a, ast.Subscript) and outer is not a.value for a in ancestors
        ):
            uses.append("type alias")
        else:
            uses.append(f"other (line {node.lineno})")
    return uses


def _ancestors(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> list[ast.AST]:
    chain = []
    while node in parents:
        node = parents[node]
        chain.append(node)
    return chain


def _parse(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        return ast.parse(f.read())


@pytest.mark.parametrize("importer", sorted(libp2p_slim.DEFERRED))
def test_deferred_names_are_used_safely(importer: str) -> None:
    """A stand-in only acts like the real thing when called or when its attributes are read.

    So each deferred name may only be called, have attributes read inside
    functions (they run after the module loaded), sit in annotations or
    type aliases (stored, not used), or, as ``Name.method``, be an entry in
    a module-level table (called later). Not ``isinstance``, ``except``, a
    base class or a value passed around. (SUBSTITUTES are real objects,
    checked by test_substitutes_do_what_the_originals_do.)
    """
    tree = _parse(importer)
    for module, names in libp2p_slim.DEFERRED[importer].items():
        for name in names:
            if (module, name) in libp2p_slim.SUBSTITUTES:
                continue
            uses = _uses_of(tree, name or module)  # "": `import module`
            assert uses, f"{importer} no longer uses {module}.{name}"
            allowed = {"call", "attribute", "annotation", "type alias", "table entry"}
            assert set(uses) <= allowed, (importer, name, uses)


def test_table_entries_are_called_later() -> None:
    """The one module-level table (key deserialisers) is only ever called through."""
    spec = importlib.util.find_spec("libp2p.crypto.serialization")
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    tables = {"key_type_to_public_key_deserializer", "key_type_to_private_key_deserializer"}
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in tables]
    assert {type(n.ctx).__name__ for n in uses} == {"Store", "Load"}
    loads = [n for n in uses if isinstance(n.ctx, ast.Load)]
    # deserializer = table[key_type]; return deserializer(data)
    assert len(loads) == 2


def test_deferred_names_work_when_used() -> None:
    """RSA and secp256k1 keys still deserialise, and BasicHost's AutoTLS helper still runs."""
    results = run_python(
        """
        import json, sys
        import p2pserver.transport.libp2p_network
        from libp2p.crypto import serialization
        from libp2p.host import basic_host
        from libp2p.peer.id import ID
        from libp2p.records.utils import _unmarshal_public_key as unmarshal_public_key
        from libp2p.records import pubkey
        assert "libp2p.crypto.rsa" not in sys.modules
        assert "libp2p.security.tls.autotls.acme" not in sys.modules

        from libp2p.crypto.rsa import create_new_key_pair as new_rsa
        from libp2p.crypto.secp256k1 import create_new_key_pair as new_secp
        rsa = new_rsa(1024).public_key
        secp = new_secp().public_key
        from libp2p.security.tls.autotls.acme import compute_b36_peer_id
        peer = ID.from_pubkey(secp)
        print(json.dumps({
            "rsa": serialization.deserialize_public_key(rsa.serialize()) == rsa,
            "secp": serialization.deserialize_public_key(secp.serialize()) == secp,
            "secp_from_id": peer.extract_public_key() == secp,
            "records": unmarshal_public_key(secp.serialize()) == secp,
            "pubkey_record": pubkey.unmarshal_public_key(rsa.serialize()) == rsa,
            "b36": basic_host.compute_b36_peer_id(peer) == compute_b36_peer_id(peer),
            "mdns": basic_host.create_mdns_discovery.resolve().__module__,
        }))
        """
    )
    assert results == {
        "rsa": True,
        "secp": True,
        "secp_from_id": True,
        "records": True,
        "pubkey_record": True,
        "b36": True,
        "mdns": "libp2p.discovery.mdns.mdns",
    }


def test_substitutes_do_what_the_originals_do() -> None:
    import trio
    import trio_typing

    substitutes = libp2p_slim.SUBSTITUTES
    assert {(m, n) for names in libp2p_slim.DEFERRED.values() for m, ns in names.items()
            for n in ns if (m, n) in substitutes} == set(substitutes)  # fmt: skip
    # importlib.metadata.version: the same answers, and only called
    from importlib.metadata import version

    package_version = substitutes["importlib.metadata", "version"]
    for distribution in ("libp2p", "trio", "PyNaCl", "pynacl", "typing_extensions", "p2pserver"):
        assert package_version(distribution) == version(distribution), distribution
    with pytest.raises(ModuleNotFoundError):  # importlib.metadata's own error
        package_version("no-such-distribution-here")
    assert set(_uses_of(_parse("libp2p.utils.version"), "version")) == {"call"}

    # trio_typing: only its takes_callable_and_args decorator, which returns its argument
    def f() -> None: ...

    assert trio_typing.takes_callable_and_args(f) is f
    assert substitutes["trio_typing", ""].takes_callable_and_args(f) is f
    tree = _parse("libp2p.tools.anyio_service.trio_manager")
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "trio_typing"]
    decorators = [
        d.value
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        for d in n.decorator_list
        if isinstance(d, ast.Attribute) and d.attr == "takes_callable_and_args"
    ]
    assert uses and uses == [u for u in uses if u in decorators]
    # TaskStatus: only subscripted, in annotations and as typing.cast's type
    assert substitutes["trio_typing", "TaskStatus"] is trio.TaskStatus
    tree = _parse("libp2p.transport.tcp.tcp")
    typing_only: set[ast.AST] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.arg) and n.annotation is not None:
            typing_only.update(ast.walk(n.annotation))
        if isinstance(n, ast.Call) and ast.unparse(n.func) in ("typing.cast", "cast"):
            typing_only.update(ast.walk(n.args[0]))
    uses = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Name) and n.id == "TaskStatus" and isinstance(n.ctx, ast.Load)
    ]  # fmt: skip
    assert uses and all(u in typing_only for u in uses)


def test_lazy_calls_are_made_when_their_results_are_used() -> None:
    """psutil and blake3 load only when memory statistics or a BLAKE3 hash are asked for."""
    results = run_python(
        """
        import json, sys
        import p2pserver.transport.libp2p_network as net
        from p2pserver.rooms.signing import SigningKey
        from libp2p.rcmgr.manager import new_resource_manager
        import multihash
        manager = new_resource_manager()
        network = net.Libp2pNetwork(SigningKey.generate(), listen_ips=["127.0.0.1"], port=0)
        before = {m: m in sys.modules for m in ("psutil", "blake3", "mmh3")}
        stats = manager.memory_stats_cache.get_memory_stats()
        import psutil
        own = psutil.Process().memory_info().rss
        blake = multihash.digest(b"abc", "blake3").digest
        import blake3
        print(json.dumps({
            "before": before,
            "rss_close": abs(stats.process_memory_bytes - own) < 64 * 1024 * 1024,
            "total": stats.system_memory_total == psutil.virtual_memory().total,
            "process": type(manager.memory_stats_cache._process._value).__name__,
            "blake3": blake == blake3.blake3(b"abc").digest(),
            "murmur": multihash.digest(b"abc", "murmur3-128").digest.hex() != "",
        }))
        """
    )
    assert results == {
        "before": {"psutil": False, "blake3": False, "mmh3": False},
        "rss_close": True,
        "total": True,
        "process": "Process",
        "blake3": True,
        "murmur": True,
    }


def test_lazy_calls_results_are_never_read() -> None:
    """Nothing reads ``swarm.dns_resolver`` (built lazily, see LAZY_CALLS) in libp2p or here."""
    assert ("libp2p.network.swarm", "multiaddr.resolvers.DNSResolver") in libp2p_slim.LAZY_CALLS
    spec = importlib.util.find_spec("libp2p")
    assert spec is not None and spec.submodule_search_locations is not None
    roots = [*spec.submodule_search_locations, os.path.dirname(p2pserver.__file__)]
    readers = []
    for root in roots:
        for directory, _, files in os.walk(root):
            for file in files:
                if not file.endswith(".py"):
                    continue
                path = os.path.join(directory, file)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                readers += [
                    f"{path}:{n.lineno}"
                    for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute)
                    and n.attr == "dns_resolver"
                    and isinstance(n.ctx, ast.Load)
                ]
    assert readers == []


def test_dns_resolution_still_loads_on_demand() -> None:
    results = run_python(
        """
        import json, sys
        import p2pserver.transport.libp2p_network as net
        from libp2p.transport.tcp import tcp
        from libp2p.utils import dns_utils
        from p2pserver.rooms.signing import SigningKey
        from p2pserver.transport.libp2p_network import Libp2pNetwork
        from libp2p.crypto.x25519 import create_new_key_pair
        from libp2p.network.config import ConnectionConfig
        from libp2p.security.noise.transport import PROTOCOL_ID, Transport
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID, Yamux
        keypair = net.keypair_from_signing_key(SigningKey.generate())
        host = net.new_host(
            keypair,
            sec_opt={PROTOCOL_ID: Transport(keypair, noise_privkey=create_new_key_pair().private_key)},
            muxer_opt={YAMUX_ID: Yamux},
            connection_config=ConnectionConfig(),
        )
        before = "dns" in sys.modules
        resolver = host.get_network().dns_resolver
        from multiaddr.resolvers import DNSResolver
        import dns.asyncresolver
        print(json.dumps({
            "dns_before": before,
            "swarm_resolver": isinstance(resolver._resolver, dns.asyncresolver.Resolver),
            "tcp": tcp.DNSResolver.resolve() is DNSResolver,
            "dns_utils": isinstance(dns_utils.DNSResolver(), DNSResolver),
        }))
        """
    )
    assert results == {"dns_before": False, "swarm_resolver": True, "tcp": True, "dns_utils": True}


def test_rewritten_modules_are_cached_and_a_bad_cache_is_ignored() -> None:
    spec = importlib.util.find_spec("libp2p.host.basic_host")
    assert spec is not None and spec.origin is not None
    cache = importlib.util.cache_from_source(spec.origin).removesuffix(".pyc")
    cache += ".p2pserver-slim.pyc"
    code = """
        import json, sys
        import p2pserver.transport.libp2p_network
        from libp2p.host import basic_host
        print(json.dumps({"stand_in": type(basic_host.create_mdns_discovery).__name__,
                          "zeroconf": "zeroconf" in sys.modules}))
        """
    expected = {"stand_in": "_StandIn", "zeroconf": False}
    assert run_python(code) == expected
    with open(cache, "rb") as f:
        good = f.read()
    tmp = cache + ".test.tmp"
    with open(tmp, "wb") as f:  # replaced whole, as the loader does: never half-written
        f.write(b"not a cache")
    os.replace(tmp, cache)
    assert run_python(code) == expected  # compiled again
    with open(cache, "rb") as f:
        assert f.read() == good  # and cached again
