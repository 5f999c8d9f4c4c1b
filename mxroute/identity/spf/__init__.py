"""SPF ``check_host()`` (RFC 7208) over the shared resolver.

Two stages, as RFC 7208 §4.6 requires ("if there are any syntax errors anywhere
in the record, check_host() returns immediately with the result permerror"):

1. *Parse* (pure, no I/O): ``parse.parse_record`` turns the selected ``v=spf1``
   text into a ``Record`` of mechanisms and modifiers; ``macros`` tokenizes every
   §7.1 macro-string in it and, later, expands them (§7.2–§7.4).
2. *Evaluate*: ``evaluate.check_host`` fetches records through the resolver,
   applies the §4.6.4 limits and an overall time bound, and traces every term
   (``results``: the seven §2.6 results and the trace; ``names``: the domain names
   it looks up).

Nothing here raises for bad DNS data or hostile records: every path ends in one
of the seven §2.6 results. May import: ``mxroute.dns``, ``mxroute.identity.ip`` and
the ground.
"""
