"""`explain --probe`: connect to the first reachable address of a plan and report what it offers.

Banner, EHLO extensions and the outcome of STARTTLS with the SSL context delivery would use
(``tls.contexts``: unverified as opportunistic delivery does it, TLS-1; verified against the
MX name under a ``verify`` policy or an MTA-STS ``testing`` one; checked against the host's
TLSA records where DANE applies, TLS-7), and whether delivery's TLS policy would accept the
host (TLS-3, EXP-3), then QUIT. A host whose TLSA lookup failed is skipped, as delivery skips
it. No mail is sent (EXP-1).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from mxroute.routing.plan import Plan, Target
from mxroute.settings import Settings
from mxroute.tls import dane
from mxroute.tls import host as hosttls
from mxroute.tls.contexts import Contexts, TlsOutcome, peer_of, verdict
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.policy import TlsPolicy

_ERRORS = (aiosmtplib.SMTPException, OSError)


async def probe(
    plan: Plan,
    settings: Settings,
    limit: int = 3,
    tls: TlsPolicy | None = None,
    sts: mtasts.Lookup | None = None,
) -> dict[str, Any]:
    """Try the plan's first ``limit`` addresses delivery would use; report the first that answers.

    With ``tls`` (the domain's policy), also ``tls_policy``, ``tls_policy_satisfied`` and
    ``tls_policy_result``: would delivery use this host under that policy (EXP-3)? The hosts
    delivery skips are skipped here too and listed under ``skipped``: ruled out by an MTA-STS
    ``enforce`` policy (``sts``, TLS-6) or with a failed TLSA lookup (TLS-7); DANE or MTA-STS
    sets the others' policy as delivery does (``hosttls.for_host``).
    """
    tried: list[str] = []
    skipped: list[str] = []  # hosts delivery skips: MTA-STS enforce (TLS-6), failed TLSA (TLS-7)
    candidates: list[tuple[Target, TlsPolicy | None, bool]] = []
    for target in plan.targets:
        policy, refusal, rule = hosttls.for_host(
            tls or TlsPolicy(), plan.dane, sts, target.exchange, str(target)
        )
        if refusal is not None:
            skipped.append(f"{target}: {refusal}")
        elif tls is not None:
            audited = rule == "TLS-6" and mtasts.audited(sts, target.exchange) is not None
            candidates.append((target, policy, audited))
        else:
            candidates.append((target, None, False))
    contexts = Contexts()
    hop = plan.route.rule.next_hop if plan.route is not None else None
    implicit = hop is not None and hop.implicit_tls
    literal = str(hop.literal) if hop is not None and hop.literal is not None else ""
    for target, host_tls, audited in candidates[:limit]:
        report = await _probe_host(
            target, host_tls, audited, settings, contexts,
            _Hop(implicit, target.exchange or literal),
        )
        if isinstance(report, str):
            tried.append(report)
            continue
        if tried:
            report["unreachable"] = tried
        if skipped:
            report["skipped"] = skipped
        return report
    failed: dict[str, Any] = {"target": None, "error": "no address answered", "unreachable": tried}
    if skipped:
        failed["skipped"] = skipped
    return failed


@dataclass(frozen=True, slots=True)
class _Hop:
    """How delivery speaks to the host: TLS from the first byte (``smtps://``), and the name
    its certificate is checked for (the MX name, else a next hop's IP address)."""

    implicit_tls: bool
    tls_name: str


async def _probe_host(
    target: Target,
    host_tls: TlsPolicy | None,
    audited: bool,
    settings: Settings,
    contexts: Contexts,
    hop: _Hop,
) -> dict[str, Any] | str:
    """The report on one address, or why it could not be reached."""
    started = time.perf_counter()
    policy = host_tls or TlsPolicy()
    context = contexts.for_host(policy, hop.tls_name, settings.tls_ca_file, audited=audited)
    timeout = min(settings.connect_timeout, 30.0)
    try:
        client = await _connected(target, settings, context if hop.implicit_tls else None,
                                  hop.tls_name, timeout)
        greeting = await client.connect(timeout=timeout)
    except (*_ERRORS, ssl.SSLError, TimeoutError) as exc:
        return f"{target}: {type(exc).__name__}: {exc}"
    report: dict[str, Any] = {
        "target": str(target),
        "connect_ms": round((time.perf_counter() - started) * 1000, 1),
        "banner": greeting.message.splitlines()[0] if greeting.message else "",
        "banner_code": greeting.code,
    }
    try:
        ehlo = await client.ehlo()
        report["ehlo"] = f"{ehlo.code}"
        report["extensions"] = sorted(client.esmtp_extensions)
        verifies = contexts.verifies(policy, hop.tls_name, audited=audited)
        if hop.implicit_tls:
            seen = _seen(client, policy, hop.tls_name, audited, verifies)
            report["starttls"] = f"implicit: ok: {peer_of(client.transport).summary()}"
        else:
            report["starttls"], seen = await _starttls(
                client, hop.tls_name, policy, context, audited, verifies
            )
        if host_tls is not None:  # TLS-3, TLS-7 / EXP-3: the same rules delivery applies
            ok, why = verdict(host_tls, str(target), target.exchange, seen)
            report.update(tls_policy=host_tls.level, tls_policy_satisfied=ok, tls_policy_result=why)
    except _ERRORS as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            await client.quit()
        except _ERRORS:
            client.close()
    return report


async def _connected(
    target: Target, settings: Settings, tls: ssl.SSLContext | None, name: str, timeout: float
) -> aiosmtplib.SMTP:
    """A client on a socket connected to ``target`` (TLS from the first byte with ``tls``,
    checking ``name``), not yet greeted; OSError or TimeoutError when the connect fails."""
    sock = socket.socket(
        socket.AF_INET6 if target.family == 6 else socket.AF_INET, socket.SOCK_STREAM
    )
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (target.address, target.port)), timeout
        )
    except BaseException:
        sock.close()
        raise
    return aiosmtplib.SMTP(
        sock=sock,
        local_hostname=settings.helo_name,
        timeout=timeout,
        start_tls=False,
        use_tls=tls is not None,
        tls_context=tls,
        hostname=(name or target.address) if tls is not None else None,
    )


async def _starttls(
    client: aiosmtplib.SMTP,
    name: str,
    policy: TlsPolicy,
    context: ssl.SSLContext,
    audited: bool,
    verifies: bool,
) -> tuple[str, TlsOutcome]:
    """STARTTLS as delivery would send it: what to report, and what it gave."""
    if not client.supports_extension("starttls"):
        return "not offered", TlsOutcome(offered=False)
    try:
        await client.starttls(tls_context=context, server_hostname=name or None)
    except (*_ERRORS, ssl.SSLError) as exc:
        return f"failed: {exc}", TlsOutcome(
            error=str(exc) or type(exc).__name__,
            audited=audited,
            verification=isinstance(exc, ssl.SSLCertVerificationError),
        )
    return f"ok: {peer_of(client.transport).summary()}", _seen(
        client, policy, name, audited, verifies
    )


def _seen(
    client: aiosmtplib.SMTP, policy: TlsPolicy, name: str, audited: bool, verifies: bool
) -> TlsOutcome:
    """What the TLS session on ``client`` proved, as delivery judges it (TLS-3, TLS-7)."""
    peer = peer_of(client.transport)
    shown = name.lower() if name else None
    problem = dane.peer_problem(policy.tlsa, peer.der) if policy.tlsa else None  # TLS-7
    return TlsOutcome(
        tls=True,
        audited=audited,
        dane_problem=problem,
        dane_name=shown if policy.tlsa and problem is None else None,
        verified_name=shown if verifies else None,
    )
