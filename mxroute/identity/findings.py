"""The relay's own sending identity, checked the way receivers will check it (SPF-10, SPF-12).

For each egress IP: SPF ``check_host()`` for the sender's domain (or, with a null
sender, the HELO identity: RFC 7208 §2.3, §2.4), SPF for the HELO identity, and
iprev plus HELO/PTR agreement (RFC 8601 §3). Each problem becomes a ``Finding``
with a stable code and a one-line fix. ``explain`` shows these and ``serve`` logs
them as warnings; nothing here ever refuses mail.

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
from mxroute.identity.rdns import IprevResult, iprev
from mxroute.identity.spf import (
    FAIL,
    NEUTRAL,
    NONE,
    PASS,
    PERMERROR,
    SOFTFAIL,
    TEMPERROR,
    SPFOptions,
    SPFResult,
    check_host,
    identity,
    normalize_ip,
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
        return [Finding(code, f"{who} gives {result.result} for {ip} ({result.reason})", f"add {mech} to {domain}'s SPF record")]
    if result.result == NONE:
        return [Finding(code, result.reason or f"{domain} publishes no SPF record", f'publish TXT "v=spf1 {mech} ~all" at {domain}')]
    if result.result == PERMERROR:
        return [Finding(code, f"{who} record is broken: {result.reason}", f"fix {domain}'s SPF record: {result.reason}")]
    if result.result == TEMPERROR:
        return [Finding(code, f"DNS trouble checking {who}: {result.reason}", f"check that {domain}'s name servers answer, then retry")]
    raise AssertionError(result.result)


def ptr_findings(ptr: IprevResult, helo: str) -> list[Finding]:
    """iprev and HELO agreement problems (RFC 8601 §3, RFC 5321 §4.1.4, SPF-12)."""
    ip = ptr.ip
    found: list[Finding] = []
    if ptr.result == PERMERROR:
        found.append(Finding("ptr-missing", f"{ip} has no PTR record", f"set PTR of {ip} to {helo}"))
    elif ptr.result == FAIL:
        names = ", ".join(ptr.names)
        found.append(Finding("ptr-unconfirmed", f"PTR of {ip} is {names}, which does not resolve back to {ip}",
                             f"add {'A' if ':' not in ip else 'AAAA'} {ip} to {ptr.names[0]}, or set PTR of {ip} to {helo}"))
    elif ptr.result == TEMPERROR:
        found.append(Finding("ptr-temperror", f"DNS trouble checking the PTR of {ip}: {ptr.reason}", "check the reverse zone's name servers, then retry"))
    if ptr.helo_error:
        found.append(Finding("helo-temperror", f"DNS trouble resolving {helo}: {ptr.helo_error}", f"check {helo}'s name servers, then retry"))
    elif ptr.helo_resolves is False:
        rtype = "A" if ":" not in ip else "AAAA"
        found.append(Finding("helo-no-address", f"HELO name {helo} does not resolve to {ip}", f"add {rtype} {ip} to {helo}"))
    if ptr.result == PASS and not ptr.helo_matches:
        found.append(Finding("helo-ptr-mismatch", f"HELO name {helo} is not a confirmed PTR name of {ip} ({', '.join(ptr.confirmed)})",
                             f"set PTR of {ip} to {helo}, or set helo_name to {ptr.confirmed[0]}"))
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
        helo_spf = await check_host(resolver, ip, helo_domain, helo_sender, helo=helo, options=options)
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
        reports.append(IdentityReport(str(ip), helo, None if null_sender else sender, spf, other, ptr, findings))
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
        return {"egress_ip": self.egress_ip, "helo": self.helo, "ptr": self.ptr.to_json(),
                "warnings": [finding.to_json() for finding in self.findings]}


async def check_ptr(resolver: Resolver, *, egress_ips: list[str], helo: str) -> list[PtrReport]:
    """iprev and HELO agreement for each egress IP (SPF-11, SPF-12), no SPF: the sender is unknown."""
    reports = []
    for text in egress_ips:
        ptr = await iprev(resolver, normalize_ip(text), helo)
        reports.append(PtrReport(ptr.ip, helo, ptr, ptr_findings(ptr, helo)))
    return reports


# --------------------------------------------------------------------------- text


def _helo_verdict(ptr: IprevResult) -> tuple[str, str]:
    if ptr.helo_error:
        return "temperror", ptr.helo_error
    if ptr.helo_matches:
        return "matches PTR", f"forward-confirmed name of {ptr.ip}"
    if ptr.helo_resolves:
        return "resolves", f"resolves to {ptr.ip} but is not a confirmed PTR name"
    return "no address", f"does not resolve to {ptr.ip}"


def render_ptr(reports: list[PtrReport], prefix: str = "") -> str:
    """Plain text for ``check-config``: PTR and HELO verdict per egress IP, each warning with its fix."""
    out: list[str] = []
    for report in reports:
        ptr = report.ptr
        helo_state, why = _helo_verdict(ptr)
        out.append(f"egress {report.egress_ip}: PTR {', '.join(ptr.names) or '-'} {ptr.result} ({ptr.reason}); "
                   f"HELO {report.helo} {helo_state} ({why})")
        for finding in report.findings:
            out.append(f"  warning {finding.code}: {finding.message}")
            out.append(f"  {'':8}fix: {finding.fix}")
        if report.ok:
            out.append("  ok: PTR is forward-confirmed and matches the HELO name")
    return "".join(f"{prefix}{line}\n" for line in out)


def render_trace(result: SPFResult, indent: str = "  ") -> list[str]:
    """The evaluation trace, one line per term and one per DNS lookup, aligned."""
    lines = []
    width = max((len(entry.term) + 2 * max(entry.depth, 0) for entry in result.trace), default=0)
    width = min(width, 48)
    for entry in result.trace:
        pad = "  " * max(entry.depth, 0)
        term = f"{pad}{entry.term}"
        where = f"[{entry.domain}]" if entry.term in ("record", "%{p}") else ""
        counters = f"terms {entry.dns_terms} voids {entry.void_lookups}"
        lines.append(f"{indent}{term:<{width}}  {entry.result or '-'}  {where}".rstrip() + f"  ({counters})")
        for lookup in entry.lookups:
            lines.append(f"{indent}{pad}    {lookup}")
    return lines


def render_spf(result: SPFResult) -> str:
    """Plain text for ``mxroute spf``: the result, the why, the explanation and the trace."""
    rows = [
        ("result", result.result),
        ("domain", result.domain),
        ("sender", result.sender),
        ("ip", result.ip),
        ("helo", result.helo or "-"),
        ("reason", result.reason or "-"),
    ]
    if result.explanation is not None:
        rows.append(("explanation", result.explanation))
    rows.append(("limits", f"{result.dns_terms} DNS-querying terms, {result.void_lookups} void lookups, {result.elapsed_ms:.1f} ms"))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    lines.append("trace:")
    lines.extend(render_trace(result))
    return "\n".join(lines) + "\n"


def render_identity(reports: list[IdentityReport]) -> str:
    """Plain text for explain's "Sending identity" section: one block per egress IP."""
    out: list[str] = []
    for report in reports:
        out.append(f"egress {report.egress_ip}  HELO {report.helo}  sender {report.sender or '<> (HELO identity)'}")
        rows = [("SPF", report.spf.domain, report.spf.result, report.spf.reason)]
        if report.helo_spf is not None:
            rows.append(("SPF (HELO)", report.helo_spf.domain, report.helo_spf.result, report.helo_spf.reason))
        ptr = report.ptr
        rows.append(("PTR", ", ".join(ptr.names) or "-", ptr.result, ptr.reason))
        helo_state, why = _helo_verdict(ptr)
        rows.append(("HELO", report.helo, helo_state, why))
        widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
        for row in rows:
            cells = [f"{row[i]!s:<{widths[i]}}" for i in range(3)]
            out.append(f"  {'  '.join(cells)}  {row[3]}".rstrip())
        for finding in report.findings:
            out.append(f"  warning {finding.code}: {finding.message}")
            out.append(f"  {'':8}fix: {finding.fix}")
        if report.ok:
            out.append("  ok: SPF passes, PTR is forward-confirmed and matches the HELO name")
    return "\n".join(out) + ("\n" if out else "")
