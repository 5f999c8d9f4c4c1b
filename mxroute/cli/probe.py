"""`explain --probe`: connect to the first reachable address of a plan and report what it offers.

Banner, EHLO extensions and the outcome of STARTTLS (unverified as opportunistic
delivery does it, TLS-1; verified against the MX name under a ``verify`` policy; checked
against the host's TLSA records where DANE applies, TLS-7), and whether delivery's TLS
policy would accept the host (TLS-3, EXP-3), then QUIT. A host whose TLSA lookup failed
is skipped, as delivery skips it. No mail is sent (EXP-1).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from mxroute.routing.plan import Plan, Target
from mxroute.settings import Settings
from mxroute.tls import dane
from mxroute.tls import host as hosttls
from mxroute.tls import policy as tlspolicy
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.policy import TlsPolicy


async def probe(
    plan: Plan, settings: Settings, limit: int = 3, tls: TlsPolicy | None = None, sts: mtasts.Lookup | None = None,
) -> dict[str, Any]:
    """Try the plan's first ``limit`` addresses delivery would use; report the first that answers.

    With ``tls`` (the domain's policy), also ``tls_policy``, ``tls_policy_satisfied`` and
    ``tls_policy_result``: would delivery use this host under that policy (EXP-3)? The hosts
    delivery skips are skipped here too and listed under ``skipped``: ruled out by an MTA-STS
    ``enforce`` policy (``sts``, TLS-6) or with a failed TLSA lookup (TLS-7); DANE or MTA-STS
    sets the others' policy as delivery does (``hosttls.for_host``).
    """
    import aiosmtplib

    tried: list[str] = []
    skipped: list[str] = []  # hosts delivery would skip: MTA-STS enforce (TLS-6), a failed TLSA lookup (TLS-7)
    candidates: list[tuple[Target, TlsPolicy | None]] = []
    for target in plan.targets:
        policy, refusal, _ = hosttls.for_host(tls or TlsPolicy(), plan.dane, sts, target.exchange, str(target))
        if refusal is not None:
            skipped.append(f"{target}: {refusal}")
        else:
            candidates.append((target, policy if tls is not None else None))
    for target, host_tls in candidates[:limit]:
        started = time.perf_counter()
        client = aiosmtplib.SMTP(
            hostname=target.address, port=target.port, timeout=min(settings.connect_timeout, 30.0),
            local_hostname=settings.helo_name, start_tls=False, use_tls=False,
        )
        try:
            greeting = await client.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            tried.append(f"{target}: {type(exc).__name__}: {exc}")
            continue
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
            offered = client.supports_extension("starttls")
            error, verification, dane_failure = None, False, None
            if offered:
                verify = host_tls is not None and host_tls.verify and bool(target.exchange)
                context = tlspolicy.verify_context(settings.tls_ca_file) if verify else None
                if host_tls is not None and host_tls.tlsa:
                    context = dane.ta_context(host_tls.tlsa)
                context = context or tlspolicy.opportunistic_context()
                try:
                    await client.starttls(tls_context=context, server_hostname=target.exchange or None)
                    transport = client.transport
                    ssl_object = transport.get_extra_info("ssl_object") if transport else None
                    if host_tls is not None and host_tls.tlsa:  # TLS-7: the check delivery makes
                        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                        problem = dane.peer_problem(host_tls.tlsa, der)
                        if problem is not None:
                            error, dane_failure = problem, dane.mismatch(str(target), problem)
                    report["starttls"] = f"ok: {ssl_object.version() if ssl_object else '?'} {ssl_object.cipher()[0] if ssl_object else ''}".strip()
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                    report["starttls"] = f"failed: {exc}"
                    error = str(exc) or type(exc).__name__
                    verification = isinstance(exc, ssl.SSLCertVerificationError)
            else:
                report["starttls"] = "not offered"
            if host_tls is not None:  # TLS-3, TLS-7 / EXP-3: the same rules delivery applies
                ok, why = tlspolicy.probe_verdict(host_tls, str(target), target.exchange, offered=offered,
                                                  error=error, verification=verification)
                if dane_failure is not None:
                    ok, why = False, dane_failure
                report.update(tls_policy=host_tls.level, tls_policy_satisfied=ok, tls_policy_result=why)
        except (aiosmtplib.SMTPException, OSError) as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
        if tried:
            report["unreachable"] = tried
        if skipped:
            report["skipped"] = skipped
        return report
    failed: dict[str, Any] = {"target": None, "error": "no address answered", "unreachable": tried}
    if skipped:
        failed["skipped"] = skipped
    return failed
