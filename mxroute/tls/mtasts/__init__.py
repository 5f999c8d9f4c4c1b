"""MTA-STS, RFC 8461 (TLS-5 discovery and caching, TLS-6 enforcement, EXP-3).

``policy``: pure (the ``_mta-sts`` TXT record, the policy file, MX patterns, the cache
decision, what a policy makes of one MX host; no asyncio, socket or ssl). ``fetch``: the
HTTPS fetch of a policy (§3.3). ``store``: the cache in memory and on disk and the ``MtaSts``
object delivery and ``explain`` ask. May import: ``tls.policy``, ``dns`` and the ground.
"""
