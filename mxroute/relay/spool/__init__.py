"""The durable spool: queue files on disk, written, synced, read back and recovered.

``format`` (pure: the queue file's records and queue IDs; no asyncio, socket or ssl)
and ``store`` (the spool directory: files, fsync, group commit, recovery).
May import: ``relay.envelope`` and the ground.
"""
