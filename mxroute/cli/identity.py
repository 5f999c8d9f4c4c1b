"""Plain text for the identity wing's results: ``mxroute spf``'s verdict and trace,
``explain``'s "Sending identity" section, and ``check-config``'s PTR/HELO lines.
"""

from __future__ import annotations

from mxroute.identity.findings import IdentityReport, PtrReport
from mxroute.identity.rdns import IprevResult
from mxroute.identity.spf.results import SPFResult


def _helo_verdict(ptr: IprevResult) -> tuple[str, str]:
    if ptr.helo_error:
        return "temperror", ptr.helo_error
    if ptr.helo_matches:
        return "matches PTR", f"forward-confirmed name of {ptr.ip}"
    if ptr.helo_resolves:
        return "resolves", f"resolves to {ptr.ip} but is not a confirmed PTR name"
    return "no address", f"does not resolve to {ptr.ip}"


def render_ptr(reports: list[PtrReport], prefix: str = "") -> str:
    """Plain text for ``check-config``: PTR and HELO verdict per egress IP, each warning and fix."""
    out: list[str] = []
    for report in reports:
        ptr = report.ptr
        helo_state, why = _helo_verdict(ptr)
        names = ", ".join(ptr.names) or "-"
        out.append(f"egress {report.egress_ip}: PTR {names} {ptr.result} ({ptr.reason}); "
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
        shown = f"{indent}{term:<{width}}  {entry.result or '-'}  {where}".rstrip()
        lines.append(f"{shown}  ({counters})")
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
    limits = (f"{result.dns_terms} DNS-querying terms, {result.void_lookups} void lookups, "
              f"{result.elapsed_ms:.1f} ms")
    rows.append(("limits", limits))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    lines.append("trace:")
    lines.extend(render_trace(result))
    return "\n".join(lines) + "\n"


def render_identity(reports: list[IdentityReport]) -> str:
    """Plain text for explain's "Sending identity" section: one block per egress IP."""
    out: list[str] = []
    for report in reports:
        sender = report.sender or "<> (HELO identity)"
        out.append(f"egress {report.egress_ip}  HELO {report.helo}  sender {sender}")
        rows = [("SPF", report.spf.domain, report.spf.result, report.spf.reason)]
        if report.helo_spf is not None:
            helo_spf = report.helo_spf
            rows.append(("SPF (HELO)", helo_spf.domain, helo_spf.result, helo_spf.reason))
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
