"""The DNS wing: the one shared resolver (dnspython, asyncio, TTL cache) and its zone-file backend.

Owns every DNS question mxroute asks and the four outcomes routing keeps apart: ``answer`` (plain
data), ``resolver``, ``zonefile``, and ``configured`` (the resolver the settings describe).
May import: the ground (``mxroute.settings``, ``errors``, ``text``, ``address``) only.
"""
