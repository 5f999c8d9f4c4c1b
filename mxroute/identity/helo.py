"""The HELO name itself, as receivers will judge it (issue 15 C2): warnings, never a refusal.

Many receivers refuse or penalise an EHLO name that is not a fully-qualified domain name, is
``localhost``, or does not resolve to the client's address (RFC 5321 §4.1.1.1, §2.3.5; Postfix
``reject_non_fqdn_helo_hostname``, ``reject_unknown_helo_hostname``). ``check-config`` prints
these findings and ``serve`` logs them at start and when a reload changes the name:

=====================  ==========================================================
``helo-not-fqdn``      the name has no dot
``helo-localhost``     a localhost name (``localhost``, ``*.localhost``, ``*.localdomain``)
``helo-no-address``    the name has no A or AAAA record (no egress_ips to compare with)
``helo-loopback``      it resolves only to loopback addresses, never an egress address
``helo-temperror``     DNS trouble resolving it
=====================  ==========================================================

With ``egress_ips`` set, whether the name resolves to each of them is the per-IP check of
``findings.ptr_findings`` (``helo-no-address``, SPF-12); this module then looks nothing up. A
name that cannot be a host's in DNS (no dot, localhost) is not looked up either. Every lookup
goes through the shared resolver. Log lines come from the logger ``mxroute.identity.helo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from mxroute.address import is_local_name
from mxroute.dns.answer import Outcome
from mxroute.dns.resolver import Lookups
from mxroute.identity.findings import Finding
from mxroute.settings import Settings

log = logging.getLogger(__name__)

_FIX = "set helo_name to this host's fully-qualified name, one whose A/AAAA is its egress address"
_tasks: set[asyncio.Task[None]] = set()  # the background checks serve started (kept referenced)


def name_findings(helo: str) -> list[Finding]:
    """What is wrong with ``helo`` as a name, without DNS. An address literal passes."""
    if helo.startswith("["):
        return []
    if is_local_name(helo):
        return [Finding("helo-localhost", f"{helo} is a localhost name: receivers refuse it",
                        _FIX)]
    if "." not in helo:
        return [Finding("helo-not-fqdn", f"{helo} is not a fully-qualified domain name (no dot): "
                        "receivers refuse it", _FIX)]
    return []


async def check_helo(resolver: Lookups, helo: str, egress_ips: list[str]) -> list[Finding]:
    """``name_findings``, then (egress_ips empty, the name a plausible host name) its A/AAAA."""
    found = name_findings(helo)
    if found or egress_ips or helo.startswith("["):
        return found
    addresses: list[str] = []
    trouble: list[str] = []
    for qtype in ("A", "AAAA"):
        answer = await resolver.lookup(helo, qtype)
        if answer.outcome.temporary:
            trouble.append(f"{qtype} {helo}: {answer.outcome.value}")
        addresses += [rr.address for rr in answer.rrs]
        if answer.outcome is Outcome.NXDOMAIN:
            break  # no such name: AAAA says no more
    if addresses:
        if all(ipaddress.ip_address(a).is_loopback for a in addresses):
            return [Finding("helo-loopback", f"{helo} resolves only to loopback "
                            f"({', '.join(addresses)}), never to an egress address", _FIX)]
        return []
    if trouble:
        return [Finding("helo-temperror", f"DNS trouble resolving {helo}: {'; '.join(trouble)}",
                        f"check {helo}'s name servers, then retry")]
    return [Finding("helo-no-address", f"{helo} has no A or AAAA record: receivers that look it "
                    "up refuse it", f"publish an A/AAAA record for {helo}, or {_FIX}")]


def describe(settings: Settings) -> str:
    """``helo_name NAME (from WHERE)`` for a line about it: the default says it is the default."""
    origin = settings.origin("helo_name")
    where = "the default: this host's name" if origin == "default" else f"from {origin}"
    return f"helo_name {settings.helo_name} ({where})"


def line(settings: Settings, finding: Finding) -> str:
    """One finding as a line: ``helo_name NAME (from WHERE): CODE: what; fix: how``."""
    return f"{describe(settings)}: {finding.code}: {finding.message}; fix: {finding.fix}"


def watch(settings: Settings, resolver: Lookups) -> None:
    """Check ``helo_name`` in the background and log each finding as a WARNING (serve's start
    and a reload that changes it). Call inside the running event loop."""

    async def run() -> None:
        try:
            findings = await check_helo(resolver, settings.helo_name, settings.egress_ips)
        except Exception as exc:  # noqa: BLE001  (advice only: never let it touch mail)
            log.error("helo_name check failed: %r", exc)
            return
        for finding in findings:
            log.warning("%s", line(settings, finding))

    task = asyncio.get_running_loop().create_task(run(), name="helo-check")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


__all__ = ["check_helo", "describe", "line", "name_findings", "watch"]
