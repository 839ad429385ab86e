"""mDNS on the LAN: advertise this node and find the others, with zeroconf.

Service type ``_p2pserver._tcp.local.``; one instance per node, named by the
first 32 hex digits of its server name (a DNS label holds at most 63 bytes,
a server name has 64 characters). The TXT record says who and where:

- ``sn``: the full server name; ``a0`` .. ``a7``: dialable multiaddrs
  (``/ip4/<concrete IP>/tcp/<port>``, never a wildcard; loopback only when
  nothing else exists, see :func:`~p2pserver.dht.records.advertised_addresses`);
- ``kid``, ``sig``: an ed25519 signature by the server name's key
  (:func:`sign_json` over ``{"kind": "p2pserver.mdns", "server_name",
  "addrs"}``). A neighbour cannot advertise itself under someone else's
  name, so "who is around" lists no phantoms. (Dialling is safe either way:
  the Noise handshake proves the PeerID.)

Threads and trio. zeroconf is synchronous and runs its own threads; its
calls block (registration announces with pauses in between; py-libp2p's
mDNS, which registers on the trio thread, stalled it 1.5 s). So every
zeroconf call that may block runs in ``trio.to_thread.run_sync``, and the
browser's callbacks, which arrive on zeroconf's thread, only hand the event
to trio with ``TrioToken.run_sync_soon`` and return. Resolving a service
(reading its TXT record) then runs in a worker thread started from trio,
one per instance at a time. The trio loop never blocks on zeroconf.

Memory. zeroconf is imported from its Python sources, not its Cython
builds (:func:`zeroconf_from_source`): ~0.7 MiB instead of ~4.5 MiB of idle
RSS, for CPU that does not matter at mDNS rates.

Changes. Our own advertisement is recomputed every ``recheck_interval``
seconds: when the listen addresses change, or an address's IP leaves every
interface, the record is updated (or withdrawn when nothing is left). When
the machine's interface addresses change, zeroconf itself is restarted: it
binds one socket per address at start and never revisits them (a removed
address can take its only working multicast socket with it). A
peer's record that changes arrives as an update; a peer that leaves sends a
goodbye (``on_lost`` at once) or, if it vanished, its records expire after
``ttl`` seconds (120 by default, instead of mDNS's usual 75 minutes for
service records); known peers are resolved again every ``ttl / 4`` seconds
(answered from zeroconf's cache while their records live, so a live peer
costs one query per ``ttl``), and one that no longer answers is lost.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import trio

from p2pserver.dht.records import advertised_addresses
from p2pserver.rooms.errors import MatrixError
from p2pserver.rooms.receipt import hex_server_keys
from p2pserver.rooms.signing import SigningKey, server_name_verify_key, sign_json, verify_json


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds ``zeroconf`` and its submodules among their .py files only."""

    def __init__(self, site: str) -> None:
        self.site = site  # the directory holding the zeroconf package

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] != "zeroconf":
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path or [self.site]:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def zeroconf_from_source() -> bool:
    """Import zeroconf from its Python sources rather than its Cython builds; False if not.

    Why: zeroconf's 18 Cython extension modules (5.3 MB) put ~4.5 MiB into an
    idle node's RSS; the same modules from source take ~0.7 MiB (measured).
    zeroconf ships its sources beside the builds and supports running from
    them (it is what runs where no build exists). The price is CPU: parsing
    an mDNS answer takes ~16 us instead of ~4 us, noise at mDNS rates. All
    or nothing, since the Cython modules check each other's types: only
    while zeroconf is not imported yet, and only if every extension module
    has its source.
    """
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return True
    if "zeroconf" in sys.modules:
        return False
    spec = importlib.util.find_spec("zeroconf")
    if spec is None or not spec.submodule_search_locations:
        return False
    package = spec.submodule_search_locations[0]
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for directory, _, files in os.walk(package):
        for file in files:
            if file.endswith(suffixes):
                stem = file.split(".", 1)[0]
                if not os.path.isfile(os.path.join(directory, stem + ".py")):
                    return False
    sys.meta_path.insert(0, _SourceFinder(os.path.dirname(package)))
    return True


zeroconf_from_source()

from zeroconf import (  # noqa: E402  (after zeroconf_from_source)
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pserver._tcp.local."
SIGNED_KIND = "p2pserver.mdns"
MAX_ADVERTISED = 8
RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class LanPeer:
    """A verified advertisement: ``server_name`` listens at ``addrs``."""

    server_name: str
    addrs: tuple[str, ...]


# --- the TXT record -------------------------------------------------------------------


def _signed_object(server_name: str, addrs: Sequence[str]) -> dict[str, Any]:
    return {"kind": SIGNED_KIND, "server_name": server_name, "addrs": list(addrs)}


def encode_txt(signing_key: SigningKey, addrs: Sequence[str]) -> dict[str, str]:
    """The TXT properties advertising ``addrs`` for ``signing_key``'s server."""
    server_name = signing_key.server_name
    addrs = list(addrs)[:MAX_ADVERTISED]
    signed = sign_json(_signed_object(server_name, addrs), server_name, signing_key)
    properties = {
        "sn": server_name,
        "kid": signing_key.key_id,
        "sig": signed["signatures"][server_name][signing_key.key_id],
    }
    for i, addr in enumerate(addrs):
        properties[f"a{i}"] = addr
    return properties


def decode_txt(properties: dict[bytes, bytes | None]) -> LanPeer | None:
    """The advertisement in a TXT record, or None if it is malformed or forged."""
    try:
        text = {k.decode("ascii"): (v or b"").decode("utf-8") for k, v in properties.items()}
    except UnicodeDecodeError:
        return None
    server_name = text.get("sn", "")
    key_id = text.get("kid", "")
    if server_name_verify_key(server_name) is None or not key_id.startswith("ed25519:"):
        return None
    addrs = [text[f"a{i}"] for i in range(MAX_ADVERTISED) if text.get(f"a{i}")]
    signed = _signed_object(server_name, addrs)
    signed["signatures"] = {server_name: {key_id: text.get("sig", "")}}
    try:
        verify_json(signed, server_name, hex_server_keys(server_name))
    except MatrixError:
        return None
    return LanPeer(server_name, tuple(addrs))


def _ip_of(addr: str) -> str | None:
    parts = addr.split("/")
    return parts[2] if len(parts) > 4 and parts[1] in ("ip4", "ip6") else None


# --- the service ----------------------------------------------------------------------


class Mdns:
    """Advertise ``addresses()`` on the LAN and report peers that do the same.

    ``on_found(peer)`` runs (in trio) for every new or changed advertisement,
    ``on_lost(server_name)`` when one goes away; neither may block.
    ``interface_ips()`` lists the IPs currently on the machine's interfaces.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        addresses: Callable[[], Sequence[str]],
        *,
        on_found: Callable[[LanPeer], None],
        on_lost: Callable[[str], None],
        interface_ips: Callable[[], Sequence[str]],
        ttl: int = 120,
        recheck_interval: float = 5.0,
    ) -> None:
        self.signing_key = signing_key
        self.server_name = signing_key.server_name
        self.instance_name = f"{self.server_name[:32]}.{SERVICE_TYPE}"
        self._addresses = addresses
        self._on_found = on_found
        self._on_lost = on_lost
        self._interface_ips = interface_ips
        self.ttl = ttl
        self.recheck_interval = recheck_interval
        self.advertised: tuple[str, ...] = ()
        self._zc: Zeroconf | None = None
        self._zc_ips: set[str] = set()  # the interface IPs zeroconf started with
        self._browser: ServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._names: dict[str, str] = {}  # instance name -> server name
        self._resolving: dict[str, bool] = {}  # instance name -> resolve again after
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise and browse until cancelled; says goodbye on the way out."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._start_zeroconf()
                nursery.start_soon(self._watch_peers)
                task_status.started()
                while True:
                    await trio.sleep(self.recheck_interval)
                    if set(self._interface_ips()) != self._zc_ips:
                        await self._restart_zeroconf(nursery)
                    else:
                        await self._readvertise()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):  # say goodbye even when cancelled
                    await self._stop_zeroconf()

    async def _start_zeroconf(self) -> None:
        self._zc_ips = set(self._interface_ips())
        zc = await trio.to_thread.run_sync(_new_zeroconf)
        self._zc = zc
        self._browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._from_zeroconf])
        )
        await self._readvertise()

    async def _stop_zeroconf(self, *, goodbye: bool = True) -> None:
        zc, browser, info = self._zc, self._browser, self._info
        self._zc = self._browser = self._info = None
        self.advertised = ()
        if zc is not None:
            await trio.to_thread.run_sync(_shutdown, zc, browser, info, goodbye)

    async def _restart_zeroconf(self, nursery: trio.Nursery) -> None:
        """The machine's addresses changed. zeroconf picks its sockets (one per
        interface address) when it starts and never revisits them, so a lost
        address can leave it with no working socket: start it afresh."""
        logger.info("mDNS: interface addresses changed; restarting zeroconf")
        before = dict(self._names)
        self._names.clear()
        # No goodbye: we are back at once, and neighbours would drop us meanwhile.
        await self._stop_zeroconf(goodbye=False)
        await self._start_zeroconf()
        nursery.start_soon(self._forget_unseen, before)

    async def _forget_unseen(self, before: dict[str, str]) -> None:
        """Peers the new browser has not found again after a while are gone."""
        await trio.sleep(max(5.0, 2 * self.recheck_interval))
        for name, server_name in before.items():
            if name not in self._names:
                self._on_lost(server_name)

    # --- advertising -------------------------------------------------------------------

    def wanted_addresses(self) -> tuple[str, ...]:
        """What we should advertise now: advertisable listen addresses on live IPs."""
        live = set(self._interface_ips())
        usable = [a for a in self._addresses() if _ip_of(a) in live]
        return tuple(advertised_addresses(usable)[:MAX_ADVERTISED])

    async def _readvertise(self) -> None:
        wanted = self.wanted_addresses()
        if wanted == self.advertised and (self._info is not None or not wanted):
            return
        old, self._info = self._info, None
        new = self._service_info(wanted) if wanted else None
        zc = self._zc
        if zc is None:
            return

        def apply() -> None:
            if old is not None and new is not None:
                zc.update_service(new)
            elif old is not None:
                zc.unregister_service(old)
            elif new is not None:
                # No probing for a conflict: the instance name comes from our key.
                zc.register_service(new, allow_name_change=False, cooperating_responders=True)

        try:
            await trio.to_thread.run_sync(apply)
        except Exception as e:  # e.g. a name conflict: try again next round
            logger.warning("mDNS advertisement failed: %s", e)
            self._info = old
            return
        self._info = new
        self.advertised = wanted
        logger.info("mDNS: advertising %s", list(wanted) or "nothing")

    def _service_info(self, addrs: Sequence[str]) -> ServiceInfo:
        ips = list(dict.fromkeys(ip for a in addrs if (ip := _ip_of(a)) is not None))
        port = int(addrs[0].split("/")[4])
        return ServiceInfo(
            SERVICE_TYPE,
            self.instance_name,
            port=port,
            properties=encode_txt(self.signing_key, addrs),
            server=f"{self.server_name[:32]}.local.",
            parsed_addresses=ips,
            host_ttl=self.ttl,
            other_ttl=self.ttl,
        )

    # --- browsing --------------------------------------------------------------------

    def _from_zeroconf(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Runs on zeroconf's thread: hand the event to trio and return at once."""
        token = self._token
        if token is None or name == self.instance_name:
            return
        with suppress(trio.RunFinishedError):  # trio has stopped: nobody to tell
            token.run_sync_soon(self._on_browse_event, name, state_change)

    def _on_browse_event(self, name: str, state_change: ServiceStateChange) -> None:
        logger.debug("mDNS: %s %s", state_change.name, name)
        if self._nursery is None:
            return
        if state_change is ServiceStateChange.Removed:
            server_name = self._names.pop(name, None)
            if server_name is not None:
                self._on_lost(server_name)
            return
        if name in self._resolving:
            self._resolving[name] = True  # changed while resolving: once more after
            return
        self._resolving[name] = False
        self._nursery.start_soon(self._resolve, name)

    async def _watch_peers(self) -> None:
        """Resolve every known peer now and then: one that vanished without a
        goodbye stops answering once its records expire (``ttl``). zeroconf
        would only report it removed when its PTR record expires, which it
        stretches to at least 1125 s."""
        while True:
            await trio.sleep(max(1.0, self.ttl / 4))
            for name in list(self._names):
                if name not in self._resolving and self._nursery is not None:
                    self._resolving[name] = False
                    self._nursery.start_soon(self._resolve, name, True)

    async def _resolve(self, name: str, liveness: bool = False) -> None:
        try:
            while True:
                zc = self._zc
                if zc is None:
                    return
                try:
                    info = await trio.to_thread.run_sync(
                        zc.get_service_info, SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS
                    )
                except Exception as e:  # zeroconf closed under us (a restart)
                    logger.debug("mDNS: resolving %s failed: %s", name, e)
                    info = None
                peer = decode_txt(info.properties) if info is not None else None
                logger.debug("mDNS: %s resolved to %s", name, peer)
                if info is None and liveness and self._zc is zc:
                    server_name = self._names.pop(name, None)
                    if server_name is not None:
                        self._on_lost(server_name)
                elif peer is None:
                    logger.debug("mDNS: ignoring %s (unresolved, malformed or forged)", name)
                elif peer.server_name != self.server_name and name.startswith(
                    peer.server_name[:32]
                ):
                    self._names[name] = peer.server_name
                    self._on_found(peer)
                if not self._resolving.get(name):
                    return
                self._resolving[name] = False
        finally:
            self._resolving.pop(name, None)


def _shutdown(
    zc: Zeroconf, browser: ServiceBrowser | None, info: ServiceInfo | None, goodbye: bool
) -> None:
    """Runs in a thread: goodbye (or not), then close zeroconf."""
    try:
        if browser is not None:
            browser.cancel()
        if info is not None and goodbye:
            zc.unregister_service(info)
        elif info is not None and zc.loop is not None:
            # close() says goodbye for every registered service: forget ours first.
            async def forget() -> None:
                zc.registry.async_remove(info)

            asyncio.run_coroutine_threadsafe(forget(), zc.loop).result(timeout=2)
    except Exception as e:
        logger.debug("mDNS shutdown: %s", e)
    finally:
        zc.close()


def _new_zeroconf() -> Zeroconf:
    return Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
