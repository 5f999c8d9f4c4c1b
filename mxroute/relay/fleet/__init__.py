"""A fleet of ``serve`` nodes sharing state through Redis (issue 19; docs/shaping.md,
"Limits across nodes").

``connection``: the client for ``shared_state`` (short timeouts, the password from its file, the
URL shown redacted); ``scripts``: the Lua scripts on the server's clock (connection leases, GCRA
rate limits, node heartbeats, every key with a TTL); ``limiter``: ``RedisLimiter``,
``relay.limiter``'s ``Limiter`` shared by the fleet, with local limits when Redis is away.
May import what ``relay`` may; nothing else in the relay imports it (``service.worker`` builds the
limiter when ``shared_state`` is set).
"""
