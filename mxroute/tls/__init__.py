"""The TLS wing: what a destination demands of TLS and whether a peer meets it.

Owns the per-destination policy levels (TLS-3), DANE (RFC 7672, TLS-7), MTA-STS
(RFC 8461, TLS-5/6) and the choice of policy per MX host. Decisions take host names
and addresses, never routing's types.
May import: ``dns`` and the ground.
"""
