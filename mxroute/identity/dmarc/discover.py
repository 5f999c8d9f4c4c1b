"""DMARC policy discovery (RFC 7489 §6.6.3) through the shared resolver.

1. TXT at ``_dmarc.<From domain>``; records not starting with ``v=DMARC1`` are discarded.
2. None left: TXT at ``_dmarc.<organizational domain>`` (when that is another name).
3. More than one record, or none: no DMARC applies. A record without a valid ``p=`` and no
   valid ``rua=``: no DMARC applies (§6.6.3 step 5). DNS trouble is reported as such: a
   receiver decides what to do with it, and mxroute says it cannot tell.
"""

from __future__ import annotations

from mxroute.dns.answer import Outcome
from mxroute.dns.resolver import Lookups
from mxroute.identity.dmarc.orgdomain import org_domain
from mxroute.identity.dmarc.record import RecordError, is_dmarc, parse_record
from mxroute.identity.dmarc.verdict import FOUND, NONE, TEMPORARY, Discovery


async def discover(resolver: Lookups, domain: str) -> Discovery:
    """Find the DMARC record that applies to mail whose From: domain is ``domain``."""
    domain = domain.rstrip(".").lower()
    org = org_domain(domain)
    names = [f"_dmarc.{domain}"] + ([f"_dmarc.{org}"] if org != domain else [])
    for name in names:
        answer = await resolver.lookup(name, "TXT")
        if answer.outcome.temporary:
            detail = f" ({answer.detail})" if answer.detail else ""
            return Discovery(domain, org, TEMPORARY, name=name,
                             reason=f"DNS trouble: TXT {name} {answer.outcome.value}{detail}")
        texts = [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer.rrs
                 ] if answer.outcome == Outcome.RECORDS else []
        records = [text for text in texts if is_dmarc(text)]
        if not records:
            continue
        if len(records) > 1:
            return Discovery(domain, org, NONE, name=name,
                             reason=f"{len(records)} DMARC records at {name}: receivers apply "
                                    "none of them (RFC 7489 §6.6.3)")
        try:
            record = parse_record(records[0])
        except RecordError as exc:
            return Discovery(domain, org, NONE, name=name, text=records[0],
                             reason=f"the DMARC record at {name} is not usable: {exc}")
        return Discovery(domain, org, FOUND, record, name, records[0])
    where = " or ".join(names)
    return Discovery(domain, org, NONE, reason=f"no DMARC record at {where}")
