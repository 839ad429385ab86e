"""The node: wires storage, the room engine, the network and federation together.

- :mod:`.config`: settings (embedded defaults, TOML file, command-line flags).
- :mod:`.node`: :class:`~p2pserver.node.node.Node`, what ``p2pserver run`` starts.
- :mod:`.status`: the peers snapshot ``p2pserver peers`` reads.
- :mod:`.control`: the JSON Lines control socket (a test/dev tool).
"""
