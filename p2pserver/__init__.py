"""p2pserver: a peer-to-peer Matrix homeserver that runs inside every device."""

__version__ = "0.1.0"
