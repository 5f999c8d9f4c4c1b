"""The organizational domain (RFC 7489 §3.2), by the Public Suffix List of ``publicsuffixlist``.

The list ships inside the package (no download); it is read once per process (about 60 ms),
on first use or by ``load()``. Names outside every listed suffix take the list's default
rule ``*`` (so ``mail.example.test`` belongs to ``example.test``).
"""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList


@functools.cache
def load() -> PublicSuffixList:
    """The shipped list (ICANN and private sections, as receivers use it)."""
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The public suffix plus one label; a public suffix itself is its own (§3.2 step 4)."""
    name = domain.rstrip(".").lower()
    return load().privatesuffix(name) or name


def aligned(one: str, other: str, strict: bool) -> bool:
    """Identifier alignment (§3.1): equal for ``s``, the same organizational domain for ``r``."""
    a, b = one.rstrip(".").lower(), other.rstrip(".").lower()
    return a == b if strict else a == b or org_domain(a) == org_domain(b)
