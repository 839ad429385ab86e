"""The Matrix event core: PDUs, hashing, signing, redaction and auth rules.

Pure code over data: nothing in this package does I/O (no trio, sockets or
SQLite). Storage, network and HTTP live at the edges and call in here.
"""
