"""A private LAN in network namespaces, for mDNS tests and benchmarks (needs root).

``with LanLab(3) as lab:`` creates namespaces ``<prefix>-0`` .. ``-2``, each
with one veth interface at ``10.231.0.<i+1>/24`` plus loopback, and a bridge
joining the veths inside a namespace of its own (``<prefix>-br``). Nothing
is added to the machine's own namespace: the veth pairs are created there
and moved away at once. ``lab.popen(i, argv)`` runs a process inside
namespace ``i`` (``ip netns exec``); ``lab.call(i, fn, *args)`` runs
``fn`` in this process on a worker thread that lives in namespace ``i``
(``setns`` moves one thread only), so a test can talk to a server bound to
that namespace's loopback without a process per request. Leaving the block
kills those processes, stops those threads and deletes the namespaces
(which removes the veths and the bridge), also after a failure. Names carry
the creating PID, so concurrent labs do not collide, and the addresses only
exist inside the lab.

:func:`LanLab.unavailable` says why a lab cannot be built here (no ``ip``,
not root, namespaces refused), for tests to skip with that reason.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from types import TracebackType
from typing import Any, TypeVar

SUBNET = "10.231.0"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class LanLabError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise LanLabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _enter_namespace(name: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class LanLab:
    def __init__(self, size: int, *, prefix: str | None = None) -> None:
        if not 1 <= size <= 50:
            raise ValueError("a lab has 1-50 hosts")
        self.size = size
        tag = os.getpid() % 100000
        self.prefix = prefix or f"p2pl{tag}"
        self._veth = f"p2pv{tag}"
        self.bridge_ns = f"{self.prefix}-br"
        self.namespaces = [f"{self.prefix}-{i}" for i in range(size)]
        self.ips = [f"{SUBNET}.{i + 1}" for i in range(size)]
        self.processes: list[subprocess.Popen[Any]] = []
        self._threads: dict[int, ThreadPoolExecutor] = {}

    @staticmethod
    def unavailable() -> str | None:
        """Why network namespaces cannot be made here, or None if they can."""
        if shutil.which("ip") is None:
            return "the `ip` command (iproute2) is not installed"
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        probe = f"p2pprobe{os.getpid() % 100000}"
        try:
            _ip("netns", "add", probe)
        except (LanLabError, OSError, subprocess.TimeoutExpired) as e:
            return f"cannot create a network namespace: {e}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
        return None

    def __enter__(self) -> LanLab:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _create(self) -> None:
        self._delete_namespaces()  # leftovers of a crashed run with our PID
        _ip("netns", "add", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, (ns, ip) in enumerate(zip(self.namespaces, self.ips, strict=True)):
            inner, outer = f"{self._veth}a{i}", f"{self._veth}b{i}"
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", outer, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")

    def add_address(self, index: int, cidr: str) -> None:
        """Give host ``index``'s interface another address (e.g. ``10.231.1.1/24``)."""
        _ip("-n", self.namespaces[index], "addr", "add", cidr, "dev", f"{self._veth}a{index}")

    def remove_address(self, index: int, cidr: str) -> None:
        _ip("-n", self.namespaces[index], "addr", "del", cidr, "dev", f"{self._veth}a{index}")

    def popen(self, index: int, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside namespace ``index`` (killed when the lab closes)."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespaces[index], *argv], **kwargs)
        self.processes.append(process)
        return process

    def call(self, index: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on namespace ``index``'s worker thread (one
        per namespace, so calls to a namespace run one at a time)."""
        if index not in self._threads:
            self._threads[index] = ThreadPoolExecutor(
                1, f"{self.namespaces[index]}-", _enter_namespace, (self.namespaces[index],)
            )
        return self._threads[index].submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        for executor in self._threads.values():
            executor.shutdown(cancel_futures=True)
        self._threads.clear()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self._delete_namespaces()

    def _delete_namespaces(self) -> None:
        for ns in [*self.namespaces, self.bridge_ns]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        # A veth whose namespace move failed half way would stay behind here.
        for i in range(self.size):
            subprocess.run(
                ["ip", "link", "del", f"{self._veth}a{i}"], capture_output=True, timeout=20
            )
