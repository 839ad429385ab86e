"""`p2pserver run` serves the Matrix client API and says where, before the network is up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from tests.node.test_multiprocess import free_port


def test_run_serves_the_client_api_and_logs_its_url_and_server_name(tmp_path):
    port = free_port()
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pserver", "run", "--data-dir", str(tmp_path / "d")]
            + ["--listen", f"/ip4/127.0.0.1/tcp/{free_port()}"]
            + ["--client-listen", f"127.0.0.1:{port}", "--no-mdns"],
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        versions = None
        while versions is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                url = f"http://127.0.0.1:{port}/_matrix/client/versions"
                with urllib.request.urlopen(url, timeout=1) as response:
                    versions = json.load(response)
            except OSError:
                time.sleep(0.05)
        assert "v1.11" in versions["versions"]
        keys = subprocess.run(
            [sys.executable, "-m", "p2pserver", "keys", "--json", "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            check=True,
        )
        server_name = json.loads(keys.stdout)["server_name"]
        while "ready" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert f"client API at http://127.0.0.1:{port}" in text
        assert server_name in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_refuses_a_remote_client_listen_without_the_option(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "p2pserver", "run", "--data-dir", str(tmp_path), "--no-mdns"]
        + ["--client-listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "allow_remote_clients" in result.stderr
