"""The routing wing: resolver answers -> the routing plan (RFC 5321 §5.1, RFC 7505).

Owns ``plan`` (the pure planner that ``explain`` and delivery share) and ``route``
(gather the facts through the resolver, then plan; the destination's TLS requirement), ``rules``
(the ``routes`` next hops) and ``shaping`` (a destination's site, shaping rule and limits).
May import: ``tls``, ``identity``, ``dns`` and the ground. Never ``relay``, ``service`` or ``cli``.
"""
