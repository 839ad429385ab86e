"""The node: wires storage, the room engine, the network and the client API together."""
