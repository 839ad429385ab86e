"""State resolution v2 and v2.1. Pure code over data, no I/O.

:func:`resolve_state` (in :mod:`p2pserver.state.resolve`) runs the
algorithm; it reads events through an :class:`EventSource`
(:mod:`p2pserver.state.source`), which storage implements and
:class:`MemoryEventSource` implements in memory.
"""

from p2pserver.state.resolve import StateResolutionError, resolve_state
from p2pserver.state.source import EventSource, MemoryEventSource

__all__ = ["EventSource", "MemoryEventSource", "StateResolutionError", "resolve_state"]
