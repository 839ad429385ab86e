"""p2pserver.transport.libp2p_slim: libp2p loads only what the node uses, and nothing is lost.

Each check runs in a fresh interpreter, since the point is what an import
leaves in ``sys.modules`` (pytest's own process has long imported libp2p).
"""

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

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
    "dns.quic._asyncio",
    "Crypto",
    "coincurve",
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
        from p2pserver.transport import libp2p_slim
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
        ours = describe(libp2p_slim.new_host(keypair, **options()))
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
                          "aioquic": "aioquic" in sys.modules}))
        """
    )
    assert outcome == {"ok": True, "bare_root": True, "aioquic": False}


def _uses_of(tree: ast.Module, name: str) -> list[str]:
    """How ``tree`` uses ``name``: "call", "annotation", "type alias" or "other" for each use."""
    parents: dict[ast.AST, ast.AST] = {}
    annotations: set[ast.AST] = set()
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.update(ast.walk(node.annotation))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            annotations.update(ast.walk(node.returns))
    uses = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)):
            continue
        if node in annotations:
            uses.append("annotation")
            continue
        outer: ast.AST = node
        while isinstance(parents[outer], ast.Attribute):  # name.attr.attr...
            outer = parents[outer]
        parent = parents[outer]
        if isinstance(parent, ast.Call) and parent.func is outer:
            uses.append("call")
        elif (
            isinstance(parent, ast.Dict)
            and outer in parent.values
            and parents[parent]
            in (
                tree,
                *(s for s in tree.body if isinstance(s, ast.Assign)),
            )
        ):
            uses.append("call")  # a module-level table of functions, called later
        elif any(
            isinstance(p, ast.Subscript) and outer is not p.value
            for p in _ancestors(outer, parents)
        ) and all(not isinstance(p, ast.FunctionDef) for p in _ancestors(outer, parents)):
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


@pytest.mark.parametrize("importer", sorted(libp2p_slim.DEFERRED))
def test_deferred_names_are_only_called(importer: str) -> None:
    """A stand-in behaves like the real thing only when called: check each use in the source."""
    spec = importlib.util.find_spec(importer)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    future_annotations = "from __future__ import annotations" in source
    for module, names in libp2p_slim.DEFERRED[importer].items():
        for name in names:
            uses = _uses_of(tree, name)
            assert uses, f"{importer} no longer uses {module}.{name}"
            allowed = {"call", "type alias"} | ({"annotation"} if future_annotations else set())
            assert set(uses) <= allowed, (importer, name, uses)


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
