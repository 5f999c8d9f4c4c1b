"""What one DNS lookup established: its ``Outcome`` and the ``Answer`` (records, TTL, CNAMEs).

Plain data, no I/O: the resolver makes answers; routing, TLS and identity read them, and the
pure planner (``routing.plan``) imports them without the resolver's asyncio.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Outcome(enum.Enum):
    """What one lookup established about (name, type)."""

    RECORDS = "NOERROR"
    NODATA = "NODATA"
    NXDOMAIN = "NXDOMAIN"
    SERVFAIL = "SERVFAIL"  # also REFUSED, FORMERR, NOTIMP, malformed answers: the server failed us
    TIMEOUT = "TIMEOUT"  # no server answered in time
    CNAME_LOOP = "CNAME_LOOP"  # the CNAME chain loops or is longer than MAX_CNAME_CHAIN

    @property
    def temporary(self) -> bool:
        """A failure that may go away: retry later, never treat as "no such domain" (MX-6)."""
        return self in (Outcome.SERVFAIL, Outcome.TIMEOUT, Outcome.CNAME_LOOP)


@dataclass(frozen=True, slots=True)
class Answer:
    """The result of ``Resolver.lookup``: records of ``qtype`` at the end of any CNAME chain."""

    qname: str  # as asked: lower-case, no trailing dot
    qtype: str  # "MX", "A", ...
    outcome: Outcome
    rrs: tuple[Any, ...] = ()  # dnspython rdata objects of type qtype
    ttl: int = 0
    cnames: tuple[str, ...] = ()  # names the chain went through after qname, in order
    detail: str = ""  # for failures: what went wrong, for humans
    # DNSSEC-validated: the trusted resolver set AD on every response of the chain (TLS-7)
    secure: bool = False

    @property
    def canonical(self) -> str:
        """The name the records belong to (the last CNAME target, or qname)."""
        return self.cnames[-1] if self.cnames else self.qname

    @property
    def texts(self) -> list[str]:
        return [rr.to_text() for rr in self.rrs]

    @property
    def exists(self) -> bool:
        """The name exists (it may have no records of this type)."""
        return self.outcome in (Outcome.RECORDS, Outcome.NODATA)
