"""Forward-confirmed reverse DNS: the "iprev" method of RFC 8601 §3 (SPF-11).

PTR of the IP (at most 10 names, as RFC 7208 §4.6.4 bounds ``ptr``), then A or
AAAA of each name; the IP is forward-confirmed when any name maps back to it.
Results, RFC 8601 §2.7.3:

- ``pass``: some PTR name's forward lookup contains the IP;
- ``fail``: PTR names exist, but none maps back (mismatch, NXDOMAIN or NODATA);
- ``permerror``: no PTR data is published (NXDOMAIN or NODATA);
- ``temperror``: SERVFAIL or a timeout kept the answer from being known.

It also says whether the HELO name resolves to the IP and is one of the
confirmed names (RFC 5321 §4.1.4 forbids refusing on a mismatch, but receivers
penalise it: SPF-12). Every lookup goes through the shared resolver.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import dns.name

from mxroute.address import IPAddress
from mxroute.dns.answer import Answer
from mxroute.dns.resolver import Lookups
from mxroute.identity.ip import normalize_ip, reverse_name

MAX_PTR_NAMES = 10
PASS, FAIL, PERMERROR, TEMPERROR = "pass", "fail", "permerror", "temperror"


@dataclass(slots=True)
class IprevResult:
    """The iprev verdict for one IP, and how the HELO name relates to it."""

    ip: str
    result: str
    names: list[str] = field(default_factory=list)  # PTR names looked at (≤ 10)
    confirmed: list[str] = field(default_factory=list)  # names whose A/AAAA contains the IP
    helo: str | None = None
    helo_resolves: bool | None = None  # the HELO name's A/AAAA has the IP (None: not checked)
    helo_error: str = ""  # a temporary failure while resolving the HELO name
    reason: str = ""

    @property
    def forward_confirmed(self) -> bool:
        return self.result == PASS

    @property
    def helo_matches(self) -> bool:
        """The HELO name is a forward-confirmed PTR name of the IP."""
        if not self.helo:
            return False
        wanted = _norm(self.helo)
        return any(_norm(name) == wanted for name in self.confirmed)

    def to_json(self) -> dict[str, Any]:
        """The contract's ``ptr`` object, with additions."""
        return {
            "ip": self.ip,
            "names": list(self.names),
            "forward_confirmed": self.forward_confirmed,
            "helo_matches": self.helo_matches,
            "result": self.result,
            "confirmed": list(self.confirmed),
            "helo": self.helo,
            "helo_resolves": self.helo_resolves,
            "reason": self.reason,
        }


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _contains(answer: Answer, ip: IPAddress) -> bool:
    """The answer's A/AAAA records include ``ip`` (compared as addresses, not text)."""
    return any(ipaddress.ip_address(rr.address) == ip for rr in answer.rrs)


async def iprev(resolver: Lookups, ip: str | IPAddress, helo: str | None = None) -> IprevResult:
    """RFC 8601 §3 iprev for ``ip``, plus the HELO name check; never raises for DNS failures.

    ``ip`` must be an IP address (ValueError otherwise). An IPv4-mapped IPv6
    address is checked as its IPv4 address.
    """
    address = normalize_ip(ip)
    qtype = "A" if address.version == 4 else "AAAA"
    result = IprevResult(ip=str(address), result=PERMERROR, helo=helo)
    ptr = await resolver.lookup(reverse_name(address), "PTR")
    if ptr.outcome.temporary:
        result.result = TEMPERROR
        result.reason = f"PTR {reverse_name(address)}: {ptr.outcome.value} {ptr.detail}".strip()
    elif not ptr.rrs:
        result.reason = f"no PTR record for {address} ({ptr.outcome.value})"
    else:
        names = [rr.target for rr in ptr.rrs if rr.target != dns.name.root]
        result.names = [name.to_text(omit_final_dot=True) for name in names][:MAX_PTR_NAMES]
        temporary: list[str] = []
        for name in result.names:
            forward = await resolver.lookup(name, qtype)
            if forward.outcome.temporary:
                temporary.append(f"{qtype} {name}: {forward.outcome.value}")
            elif _contains(forward, address):
                result.confirmed.append(name)
        if result.confirmed:
            result.result = PASS
            result.reason = f"{', '.join(result.confirmed)} resolves back to {address}"
        elif temporary:
            # Only a temporary failure stands between us and a verdict (§2.7.3 temperror).
            result.result = TEMPERROR
            result.reason = "; ".join(temporary)
        else:
            result.result = FAIL
            listed = ", ".join(result.names)
            result.reason = f"no PTR name of {address} ({listed}) resolves back to it"
    if helo:
        forward = await resolver.lookup(helo, qtype)
        if forward.outcome.temporary:
            result.helo_error = f"{qtype} {helo}: {forward.outcome.value}"
        else:
            result.helo_resolves = _contains(forward, address)
    return result
