"""`explain --probe`: connect to the first reachable address of a plan and report what it offers.

Banner, EHLO extensions and the outcome of STARTTLS (opportunistic, unverified,
as delivery does it: TLS-1), then QUIT. No mail is sent (EXP-1).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from mxroute.plan import Plan
from mxroute.settings import Settings


async def probe(plan: Plan, settings: Settings, limit: int = 3) -> dict[str, Any]:
    """Try the plan's first ``limit`` addresses in order; report the first that answers."""
    import aiosmtplib

    tried: list[str] = []
    for target in plan.targets[:limit]:
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
            if client.supports_extension("starttls"):
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                try:
                    await client.starttls(tls_context=context)
                    transport = client.transport
                    ssl_object = transport.get_extra_info("ssl_object") if transport else None
                    report["starttls"] = f"ok: {ssl_object.version() if ssl_object else '?'} {ssl_object.cipher()[0] if ssl_object else ''}".strip()
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                    report["starttls"] = f"failed: {exc}"
            else:
                report["starttls"] = "not offered"
        except (aiosmtplib.SMTPException, OSError) as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
        if tried:
            report["unreachable"] = tried
        return report
    return {"target": None, "error": "no address answered", "unreachable": tried}
