"""DKIM keys (RFC 6376, RFC 8463): load a private key, build and parse its DNS record, check it.

``keys`` reads PEM private keys (``cryptography``); ``record`` is PURE (the TXT record, its
zone-file line, parsing a published one); ``check`` compares the published key with the private
one through the shared resolver. Signing will use ``keys``. May import: ``dns`` and the ground.
"""
