"""Gather the facts for one From: domain and judge them: what ``explain --from`` and ``serve``'s
self-check both run.

The facts, each by the code that owns it: DMARC discovery (``discover``), SPF
``check_host()`` of the envelope sender's domain for every egress IP (``identity.spf``, the
fix from ``identity.findings``), and ``dkim check`` of every key that signs the From domain
(``identity.dkim.select`` picks them, ``identity.dkim.check`` compares them with DNS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxroute.dns.resolver import Lookups
from mxroute.identity.dkim.check import check_key, load_or_problem
from mxroute.identity.dkim.select import signing_keys
from mxroute.identity.dmarc.discover import discover
from mxroute.identity.dmarc.verdict import DmarcVerdict, Facts, KeyStatus, SpfCheck, judge
from mxroute.identity.findings import spf_findings
from mxroute.identity.ip import normalize_ip
from mxroute.identity.spf.evaluate import check_host, identity
from mxroute.settings import DkimKey


@dataclass(frozen=True, slots=True)
class Assessment:
    """The verdict and the signing keys it judged (explain's ``dmarc`` and ``dkim``)."""

    verdict: DmarcVerdict
    keys: tuple[KeyStatus, ...]

    def dkim_json(self) -> dict[str, Any]:
        """``{"signing", "domain", "selectors": [{"selector", "algorithm", "published"}]}``."""
        return {
            "signing": bool(self.keys),
            "domain": self.keys[0].domain if self.keys else None,
            "selectors": [{"selector": k.selector, "algorithm": k.algorithm,
                           "published": k.status} for k in self.keys],
        }


async def assess(
    resolver: Lookups, author_domain: str, *, sender: str | None, egress_ips: Sequence[str],
    helo: str, dkim_keys: Sequence[DkimKey],
) -> Assessment:
    """Will mail from ``author_domain`` (the From: header's domain) pass DMARC?

    ``sender`` is the envelope sender (empty or ``<>``: the null sender, so SPF checks the HELO
    identity, RFC 7208 §2.4).
    """
    author = author_domain.rstrip(".").lower()
    found = await discover(resolver, author)
    envelope_domain, full_sender = identity((sender or "").strip("<>"), helo)
    spf = []
    for text in egress_ips:
        ip = normalize_ip(text)
        result = await check_host(resolver, ip, envelope_domain, full_sender, helo=helo)
        fixes = spf_findings(result)
        spf.append(SpfCheck(str(ip), result.result, fixes[0].fix if fixes else None))
    keys = []
    for entry in signing_keys(dkim_keys, author):
        domain = author if entry.domain == "*" else entry.domain  # the catch-all signs as From
        checked = await check_key(resolver, domain, entry.selector,
                                  load_or_problem(entry.key_file))
        keys.append(KeyStatus(domain, entry.selector, checked.dns_name, checked.status,
                              checked.algorithm, checked.testing, checked.detail))
    facts = Facts(found, envelope_domain.lower(), tuple(spf), tuple(keys))
    return Assessment(judge(facts), tuple(keys))
