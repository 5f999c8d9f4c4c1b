"""Text rendering for the commands: aligned tables, colour only on a terminal.

Peer- and DNS-supplied strings are shown with control characters escaped, so a
hostile TXT record or banner cannot repaint the terminal (SEC-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mxroute.cli.explain import Report
from mxroute.identity.dmarc.assess import Assessment
from mxroute.routing.plan import Verdict
from mxroute.text import terminal_safe
from mxroute.tls.dane import DanePosture


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Left-aligned columns; the last column is not padded."""
    cells = [[terminal_safe(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(padded)).rstrip())
    return "\n".join(lines)


class Style:
    """ANSI styling when enabled (stdout is a TTY), plain text otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def verdict(self, verdict: Verdict, text: str) -> str:
        codes = {Verdict.DELIVERABLE: "32", Verdict.TEMPORARY: "33", Verdict.PERMANENT: "31"}
        code = codes[verdict]
        return self._wrap(code + ";1", text)


def _scope(report: Report) -> str:
    """Where the shaping limits are counted (issue 19): the fleet's or this node's."""
    if report.shaping_scope == "shared":
        return (f"shared by the fleet through {report.shared_state} (on this node alone, "
                "divided by the nodes last seen, while it is away)")
    return "counted on this node (no shared_state)"


def render_explain(report: Report, style: Style) -> str:
    """The human form of ``explain``: summary, MX, plan, pruned, reasoning, DNS trace."""
    plan = report.plan
    out: list[str] = []
    domain = report.address.domain
    if plan.cnames:
        domain += f"  (alias: {' -> '.join(plan.cnames)})"
    verdict, reason, status = report.verdict()  # an intake refusal decides (issue 16 §2)
    summary = [["domain", domain], ["verdict", f"{verdict.value} ({status}): {reason}"]]
    if report.intake is not None:
        summary += report.intake.lines()
    if plan.route is not None:  # issue 16: the next-hop rule instead of the domain's MX
        summary.append(["route", plan.route.describe()])
    if report.shaping is not None:  # issue 18: site, rule, limits
        summary += [["shaping", report.shaping.describe()], ["limits", _scope(report)]]
    if report.tls is not None:  # TLS-3 / EXP-3
        summary.append(["tls policy", report.tls.describe()])
    if report.mta_sts is not None:  # TLS-5/6, EXP-3
        summary.append(["mta-sts", report.mta_sts.describe()])
    elif report.mta_sts_skipped is not None:
        summary.append(["mta-sts", f"not consulted: {report.mta_sts_skipped}"])
    out.append(table(
        ["address", terminal_safe(report.address)],
        summary,
    ).replace(verdict.value, style.verdict(verdict, verdict.value), 1))
    flags = []
    if plan.null_mx:
        flags.append("null MX (RFC 7505)")
    if plan.implicit_mx:
        flags.append("no MX records: implicit MX (RFC 5321 §5.1)")
    if plan.mx:
        of = f" of {plan.route.rule.next_hop.host}" if plan.route is not None else ""
        out.append(style.bold(f"\nMX records{of}") + (f"  [{'; '.join(flags)}]" if flags else ""))
        mx = sorted(plan.mx, key=lambda r: r.preference)
        out.append(table(["PREF", "EXCHANGE", "TTL"],
                         [[r.preference, r.exchange, r.ttl] for r in mx]))
    elif flags:
        out.append(style.bold("\nMX records") + f"  [{'; '.join(flags)}]")
    if plan.targets:
        out.append(style.bold("\nPlan") + " (the order delivery will try)")
        out.append(table(
            ["#", "EXCHANGE", "PREF", "ADDRESS", "FAMILY", "PORT"],
            [[i, t.exchange or "(literal)", t.preference, t.address, f"IPv{t.family}", t.port]
             for i, t in enumerate(plan.targets, 1)],
        ))
    if plan.dane is not None:  # TLS-7 / EXP-3
        out.append(render_dane(plan.dane, style))
    sts = report.mta_sts_json()
    if report.mta_sts is not None and report.mta_sts.policy is not None and sts and sts["hosts"]:
        out.append(style.bold("\nMTA-STS") + f"  (TXT id {report.mta_sts.txt_id or '-'}; RFC 8461)")
        out.append(table(["EXCHANGE", "ELIGIBLE", "REASON"],
                         [[h["exchange"], "yes" if h["eligible"] else "no", h["reason"]]
                          for h in sts["hosts"]]))
    if plan.pruned:
        out.append(style.bold("\nPruned"))
        out.append(table(
            ["EXCHANGE", "ADDRESS", "REASON", "DETAIL"],
            [[p.exchange or "-", p.address or "-", p.reason, p.detail] for p in plan.pruned],
        ))
    if plan.decisions:
        out.append(style.bold("\nReasoning"))
        out.append(table(["RULE", "REF", "DECISION"],
                         [[d.rule, d.ref, d.text] for d in plan.decisions]))
    out += render_serve(report, style)
    if report.author is not None:  # issue 14 §3
        out.append(render_author(report.author, style))
    if report.probe is not None:
        out.append(style.bold("\nProbe"))
        out.append(render_probe(report.probe))
    if report.dns:
        out.append(style.bold("\nDNS queries"))
        out.append(table(
            ["QNAME", "TYPE", "RCODE", "TTL", "MS", "CACHED", "ANSWERS"],
            [[q["qname"], q["qtype"], q["rcode"], q["ttl"], f"{q['ms']:.1f}",
              "yes" if q["cached"] else "no", "; ".join(q["answers"]) or "-"] for q in report.dns],
        ))
    return "\n".join(out) + "\n"


def render_serve(report: Report, style: Style) -> list[str]:
    """The sending identity (or why SPF was not checked) and what a relay on the spool knows
    (issue 16 §2)."""
    out = []
    if report.identity_text:
        out.append(style.bold("\nSending identity"))
        out.append(report.identity_text.rstrip("\n"))
    elif report.spf_skipped and report.intake is not None and report.intake.mail_from:
        out.append(style.bold("\nSending identity"))
        out.append(f"  SPF not checked: {report.spf_skipped}")
    if report.relay is not None:
        from mxroute.cli.relaystate import render as render_relay

        out.append(style.bold("\nRelay") + " (what the relay on this spool knows)")
        out += render_relay(report.relay)
    return out


def render_author(found: Assessment, style: Style) -> str:
    """The From: domain's DKIM signing, DMARC verdict and what to fix (issue 14 §3)."""
    verdict = found.verdict
    yes = {True: "yes", False: "no"}
    if found.keys:
        signing = f"signs as d={found.keys[0].domain}: " + ", ".join(
            f"{k.selector} ({k.algorithm or '?'}) {k.status}" for k in found.keys)
    else:
        signing = "signs nothing for this domain (no dkim_keys entry)"
    policy = f", policy {verdict.policy}" if verdict.policy else ""
    rows = [["dkim", signing],
            ["dmarc", f"{verdict.verdict}{policy}"],
            ["record", verdict.record if verdict.record is not None else "-"],
            ["org domain", verdict.org_domain],
            ["aligned", f"SPF {yes[verdict.spf_aligned]}, DKIM {yes[verdict.dkim_aligned]}"],
            ["why", verdict.reason],
            ["bulk sender", "ready" if verdict.bulk_sender_ready else
             "not ready (needs SPF and DKIM to pass, a DMARC record, and DMARC to pass)"]]
    out = [style.bold("\nDKIM and DMARC") + f"  (From: domain {terminal_safe(verdict.domain)})",
           table(["WHAT", "RESULT"], rows), style.bold("\nTo fix")]
    out += [f"  - {terminal_safe(fix)}" for fix in verdict.fixes] or ["  nothing to fix"]
    return "\n".join(out)


def render_dane(posture: DanePosture, style: Style) -> str:
    """The DANE section: DNSSEC status of the MX RRset and each host's addresses, its TLSA records
    and what delivery to it needs (EXP-3)."""
    secure = {True: "secure", False: "insecure"}
    out = [style.bold("\nDANE") + f" (TLS-7, RFC 7672)  MX RRset: {secure[posture.mx_secure]}"]
    rows = []
    for host in posture.hosts:
        lookup = ("not asked" if host.tlsa_name is None
                  else f"{host.tlsa_outcome}, {secure[host.tlsa_secure]}")
        rows.append([host.exchange, secure[host.addresses_secure], lookup, host.need.value,
                     host.reason])
    if rows:
        out.append(table(["EXCHANGE", "ADDRESSES", "TLSA", "NEEDS", "WHY"], rows))
    records = [[h.tlsa_name, _short(r.text), r.usage_name,
                "usable" if r.problem is None else r.problem]
               for h in posture.hosts for r in h.records]
    if records:
        out.append(table(["TLSA NAME", "RECORD", "USAGE", "USABLE"], records))
    return "\n".join(out)


def _short(text: str, limit: int = 80) -> str:
    """A TLSA record for one line: a full certificate (2 0 0) is shortened, with its size."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 20]}... ({(len(text.split()[-1])) // 2} bytes)"


def render_probe(probe: dict[str, Any]) -> str:
    rows = [[key, "; ".join(map(str, value)) if isinstance(value, list) else value]
            for key, value in probe.items()]
    return table(["WHAT", "RESULT"], rows)
