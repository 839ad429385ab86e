"""End-to-end encryption across nodes: the federation side of the client API's E2EE.

The client API (:mod:`p2pserver.clientapi.keys`, :mod:`~p2pserver.clientapi.todevice`,
:mod:`~p2pserver.clientapi.devicelists`, :mod:`~p2pserver.clientapi.backup`)
holds the rules and :mod:`p2pserver.storage.e2ee` the data; neither
imports the federation layer, so a node can answer clients before its
network is up. This package joins them to it:

- :mod:`.federation`: :class:`~.federation.FederationE2ee`, the client
  API's :class:`~p2pserver.clientapi.remote.E2eeRemote` over a
  :class:`~p2pserver.federation.Federation`, and :func:`~.federation.connect`,
  which wires a running client API to its node's federation (queries,
  EDU handlers, the hook).
"""

from __future__ import annotations

from p2pserver.e2ee.federation import FederationE2ee, connect

__all__ = ["FederationE2ee", "connect"]
