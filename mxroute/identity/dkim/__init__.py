"""DKIM (RFC 6376, RFC 8463): keys, their DNS record, checking them, and signing with them.

``keys`` reads PEM private keys (``cryptography``); ``record`` is PURE (the TXT record, its
zone-file line, parsing a published one); ``check`` compares the published key with the private
one through the shared resolver; ``select`` chooses the keys for a From: domain; ``canon`` is
PURE (relaxed canonicalization, header selection, the From: domain); ``sign`` makes the
DKIM-Signature fields (``DkimSigner``). May import: ``dns`` and the ground.
"""
