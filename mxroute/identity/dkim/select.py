"""Which configured keys sign a message: by its From: header domain (PURE).

A key signs mail whose author domain is its ``domain`` or a subdomain of it (relaxed
alignment, RFC 7489 §3.1.1); the most specific ``domain`` wins, and every key configured
for that domain signs (RSA + Ed25519 dual signing, RFC 8463). ``domain = "*"`` is the
catch-all (OpenDKIM's SigningTable ``*``), used only when no other key matches.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxroute.settings import DkimKey


def signing_keys(keys: Sequence[DkimKey], author_domain: str) -> list[DkimKey]:
    """The keys that sign mail from ``author_domain`` (no trailing dot needed), in configured order.

    Key files are not read here: which algorithm signs first is the signer's business.
    """
    domain = author_domain.strip().rstrip(".").lower()
    best: list[DkimKey] = []
    best_len = -1
    for key in keys:
        if key.domain == "*":
            continue
        if domain == key.domain or domain.endswith("." + key.domain):
            if len(key.domain) > best_len:
                best, best_len = [key], len(key.domain)
            elif len(key.domain) == best_len:
                best.append(key)
    if best:
        return best
    return [key for key in keys if key.domain == "*"]
