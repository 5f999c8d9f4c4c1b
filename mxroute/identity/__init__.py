"""The identity wing: the relay's own sending identity as receivers judge it.

Owns SPF (RFC 7208: parse, evaluate, ``check_host``), forward-confirmed reverse DNS
(RFC 8601 iprev), DKIM keys, the DMARC verdict (RFC 7489), the findings built from them, and
the self-check ``serve`` runs.
May import: ``dns`` and the ground.
"""
