"""The Kademlia DHT beyond the LAN: peer routing, room records, public-room records.

- :mod:`.records`: the signed record formats, their checks and merging (no I/O).
- :mod:`.service`: :class:`DhtService`, py-libp2p's KadDHT under our private
  protocol, storing and reading those records. Imports libp2p (slow): import
  it lazily where libp2p may not be needed.
- :mod:`.memory_transport`: an in-memory libp2p transport for tests and
  benchmarks (many DHT nodes in one process, no sockets).
"""
