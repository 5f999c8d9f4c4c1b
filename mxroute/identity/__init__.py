"""The identity wing: the relay's own sending identity as receivers judge it.

Owns SPF (RFC 7208: parse, evaluate, ``check_host``), forward-confirmed reverse DNS
(RFC 8601 iprev), the findings built from them, the self-check ``serve`` runs, and DKIM
(``dkim``: keys, their records, and signing with them).
May import: ``dns`` and the ground.
"""
