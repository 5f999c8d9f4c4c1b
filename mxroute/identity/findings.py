"""The relay's own sending identity, checked the way receivers will check it (SPF-10, SPF-12).

For each egress IP: SPF ``check_host()`` for the sender's domain (or, with a null
sender, the HELO identity: RFC 7208 §2.3, §2.4), SPF for the HELO identity, and
iprev plus HELO/PTR agreement (RFC 8601 §3). Each problem becomes a ``Finding``
with a stable code and a one-line fix. ``explain`` shows these (``mxroute.cli.identity``
renders them) and ``serve`` logs them as warnings; nothing here ever refuses mail.

Warning codes (stable; tests and log filters rely on them):

=====================  ==========================================================
``spf-fail``           the sender domain's SPF fails the egress IP
``spf-softfail``       ... softfails it
``spf-neutral``        ... says nothing about it (``?`` or no match)
``spf-none``           the sender domain publishes no SPF record
``spf-permerror``      the sender domain's SPF record is broken
``spf-temperror``      DNS trouble while checking the sender domain's SPF
``helo-spf-<result>``  the same six, for the HELO identity
``ptr-missing``        no PTR record for the egress IP (iprev permerror)
``ptr-unconfirmed``    PTR names exist but none resolves back (iprev fail)
``ptr-temperror``      DNS trouble during iprev
``helo-no-address``    the HELO name does not resolve to the egress IP
``helo-ptr-mismatch``  the HELO name is not a forward-confirmed PTR name of the IP
``helo-temperror``     DNS trouble resolving the HELO name
=====================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mxroute.dns.resolver import Resolver
from mxroute.identity.ip import normalize_ip
from mxroute.identity.rdns import IprevResult, iprev
from mxroute.identity.spf.evaluate import SPFOptions, check_host, identity
from mxroute.identity.spf.results import (
    FAIL,
    NEUTRAL,
    NONE,
    PASS,
    PERMERROR,
    SOFTFAIL,
    TEMPERROR,
    SPFResult,
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with the sending identity: a stable code, what is wrong, how to fix it."""

    code: str
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "fix": self.fix}


@dataclass(slots=True)
class IdentityReport:
    """The self-check for one egress IP."""

    egress_ip: str
    helo: str
    sender: str | None  # None: null reverse-path, so ``spf`` is the HELO identity
    spf: SPFResult  # MAIL FROM identity (HELO identity when sender is None)
    helo_spf: SPFResult | None  # HELO identity, when it differs from ``spf``
    ptr: IprevResult
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def codes(self) -> list[str]:
        return [finding.code for finding in self.findings]

    def to_json(self) -> dict[str, Any]:
        return {
            "egress_ip": self.egress_ip,
            "helo": self.helo,
            "sender": self.sender,
            "spf": self.spf.to_json(),
            "helo_spf": self.helo_spf.to_json() if self.helo_spf else None,
            "ptr": self.ptr.to_json(),
            "warnings": [finding.to_json() for finding in self.findings],
        }


def _mechanism(ip: str) -> str:
    return f"ip4:{ip}" if ":" not in ip else f"ip6:{ip}"


def spf_findings(result: SPFResult, prefix: str = "spf") -> list[Finding]:
    """What to tell the operator about one SPF result (SPF-12); pass gives nothing."""
    ip, domain = result.ip, result.domain
    mech = _mechanism(ip)
    who = f"{domain}'s SPF" if prefix == "spf" else f"the HELO name {domain}'s SPF"
    code = f"{prefix}-{result.result}"
    if result.result == PASS:
        return []
    if result.result in (FAIL, SOFTFAIL, NEUTRAL):
        what = f"{who} gives {result.result} for {ip} ({result.reason})"
        return [Finding(code, what, f"add {mech} to {domain}'s SPF record")]
    if result.result == NONE:
        what = result.reason or f"{domain} publishes no SPF record"
        return [Finding(code, what, f'publish TXT "v=spf1 {mech} ~all" at {domain}')]
    if result.result == PERMERROR:
        what = f"{who} record is broken: {result.reason}"
        return [Finding(code, what, f"fix {domain}'s SPF record: {result.reason}")]
    if result.result == TEMPERROR:
        what = f"DNS trouble checking {who}: {result.reason}"
        return [Finding(code, what, f"check that {domain}'s name servers answer, then retry")]
    raise AssertionError(result.result)


def ptr_findings(ptr: IprevResult, helo: str) -> list[Finding]:
    """iprev and HELO agreement problems (RFC 8601 §3, RFC 5321 §4.1.4, SPF-12)."""
    ip = ptr.ip
    found: list[Finding] = []
    rtype = "A" if ":" not in ip else "AAAA"
    if ptr.result == PERMERROR:
        found.append(
            Finding("ptr-missing", f"{ip} has no PTR record", f"set PTR of {ip} to {helo}")
        )
    elif ptr.result == FAIL:
        names = ", ".join(ptr.names)
        found.append(Finding(
            "ptr-unconfirmed", f"PTR of {ip} is {names}, which does not resolve back to {ip}",
            f"add {rtype} {ip} to {ptr.names[0]}, or set PTR of {ip} to {helo}",
        ))
    elif ptr.result == TEMPERROR:
        found.append(Finding(
            "ptr-temperror", f"DNS trouble checking the PTR of {ip}: {ptr.reason}",
            "check the reverse zone's name servers, then retry",
        ))
    if ptr.helo_error:
        found.append(Finding(
            "helo-temperror", f"DNS trouble resolving {helo}: {ptr.helo_error}",
            f"check {helo}'s name servers, then retry",
        ))
    elif ptr.helo_resolves is False:
        found.append(Finding(
            "helo-no-address", f"HELO name {helo} does not resolve to {ip}",
            f"add {rtype} {ip} to {helo}",
        ))
    if ptr.result == PASS and not ptr.helo_matches:
        confirmed = ", ".join(ptr.confirmed)
        found.append(Finding(
            "helo-ptr-mismatch",
            f"HELO name {helo} is not a confirmed PTR name of {ip} ({confirmed})",
            f"set PTR of {ip} to {helo}, or set helo_name to {ptr.confirmed[0]}",
        ))
    return found


async def check_identity(
    resolver: Resolver,
    *,
    sender: str | None,
    egress_ips: list[str],
    helo: str,
    options: SPFOptions | None = None,
) -> list[IdentityReport]:
    """The self-check for each egress IP (SPF-10, SPF-12), in the order given.

    ``sender`` is the MAIL FROM address (``None`` or ``""``: null sender, so the
    HELO identity is what receivers check). Raises ValueError for an egress IP
    that is not an IP address (settings validate them first).
    """
    reports = []
    null_sender = not sender or sender == "<>"
    helo_domain, helo_sender = identity("", helo)
    for text in egress_ips:
        ip = normalize_ip(text)
        helo_spf = await check_host(
            resolver, ip, helo_domain, helo_sender, helo=helo, options=options
        )
        if null_sender:
            spf, other = helo_spf, None
        else:
            assert sender is not None
            domain, full_sender = identity(sender.strip("<>"), helo)
            spf = await check_host(resolver, ip, domain, full_sender, helo=helo, options=options)
            other = helo_spf if domain.lower() != helo_domain.lower() else None
        ptr = await iprev(resolver, ip, helo)
        findings = spf_findings(spf, "spf" if not null_sender else "helo-spf")
        if other is not None:
            findings += spf_findings(other, "helo-spf")
        findings += ptr_findings(ptr, helo)
        shown_sender = None if null_sender else sender
        reports.append(IdentityReport(str(ip), helo, shown_sender, spf, other, ptr, findings))
    return reports


@dataclass(slots=True)
class PtrReport:
    """The PTR/HELO part of the self-check for one egress IP (``check-config``, ``serve``)."""

    egress_ip: str
    helo: str
    ptr: IprevResult
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "egress_ip": self.egress_ip,
            "helo": self.helo,
            "ptr": self.ptr.to_json(),
            "warnings": [finding.to_json() for finding in self.findings],
        }


async def check_ptr(resolver: Resolver, *, egress_ips: list[str], helo: str) -> list[PtrReport]:
    """iprev and HELO agreement for each egress IP (SPF-11, SPF-12).

    No SPF: the sender is unknown.
    """
    reports = []
    for text in egress_ips:
        ptr = await iprev(resolver, normalize_ip(text), helo)
        reports.append(PtrReport(ptr.ip, helo, ptr, ptr_findings(ptr, helo)))
    return reports
