"""p2pserver.discovery.mdns loads zeroconf from its sources, all or nothing (see zeroconf_from_source).

Fresh interpreters, since what matters is what the first import leaves in
``sys.modules``. (tests/discovery runs mDNS itself this way.)
"""

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from typing import Any


def run_python(code: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mdns_imports_every_zeroconf_module_from_source() -> None:
    files = run_python(
        """
        import json, sys
        import p2pserver.discovery.mdns
        print(json.dumps(sorted(
            getattr(m, "__file__", None) or "" for n, m in sys.modules.items()
            if n.split(".")[0] == "zeroconf"
        )))
        """
    )
    assert len(files) > 20
    assert [f for f in files if not f.endswith(".py")] == []


def test_zeroconf_imported_first_keeps_its_builds() -> None:
    """Mixing is never allowed: once the builds are in, mdns leaves them alone."""
    outcome = run_python(
        """
        import json, sys
        import zeroconf
        import p2pserver.discovery.mdns as mdns
        print(json.dumps({
            "from_source": mdns.zeroconf_from_source(),
            "files": {n: getattr(m, "__file__", None) or "" for n, m in sys.modules.items()
                      if n.split(".")[0] == "zeroconf"},
        }))
        """
    )
    assert outcome["from_source"] is False
    built = {name: file for name, file in outcome["files"].items() if _has_build(name)}
    assert len(built) > 10
    assert [name for name, file in built.items() if file.endswith(".py")] == []


def _has_build(module: str) -> bool:
    spec = importlib.util.find_spec("zeroconf")
    assert spec is not None and spec.submodule_search_locations
    base = os.path.join(os.path.dirname(spec.submodule_search_locations[0]), *module.split("."))
    return any(os.path.isfile(base + s) for s in importlib.machinery.EXTENSION_SUFFIXES)


def test_zeroconf_from_source_works() -> None:
    """An advertisement survives a round trip through zeroconf's packet code, from source."""
    outcome = run_python(
        """
        import json, socket, sys
        import p2pserver.discovery.mdns as mdns
        from p2pserver.rooms.signing import SigningKey
        from zeroconf import DNSIncoming, DNSOutgoing, ServiceInfo, const
        key = SigningKey.generate()
        addrs = ["/ip4/192.168.1.10/tcp/4001"]
        info = ServiceInfo(
            mdns.SERVICE_TYPE, key.server_name[:32] + "." + mdns.SERVICE_TYPE,
            addresses=[socket.inet_aton("192.168.1.10")], port=4001,
            properties=mdns.encode_txt(key, addrs), server="host.local.",
        )
        out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
        for record in [info.dns_pointer(), info.dns_service(), info.dns_text()]:
            out.add_answer_at_time(record, 0)
        incoming = DNSIncoming(out.packets()[0])
        text = [r for r in incoming.answers() if r.type == const._TYPE_TXT][0]
        parsed = ServiceInfo(mdns.SERVICE_TYPE, info.name)
        parsed._set_text(text.text)
        peer = mdns.decode_txt(parsed.properties)
        print(json.dumps({
            "parser": sys.modules["zeroconf._protocol.incoming"].__file__,
            "peer": [peer.server_name, list(peer.addrs)] if peer else None,
            "expected": [key.server_name, addrs],
        }))
        """
    )
    assert outcome["parser"].endswith(".py")
    assert outcome["peer"] == outcome["expected"]
