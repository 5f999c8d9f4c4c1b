"""`mxroute explain`: how mail to an address would be routed, by the delivery code itself.

``run_explain`` gathers facts through the shared resolver, calls the same
``routing.route`` that delivery calls, adds the TLS, MTA-STS, identity and probe
findings, and with ``--from`` the DKIM and DMARC verdict of the From: domain (issue 14 §3),
and returns the contract's report (EXP-1..5). It never touches the queue.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mxroute.address import Address
from mxroute.cli.explainserve import SPF_SKIPPED, IntakeVerdicts, intake_verdicts, relay_policy
from mxroute.dns.resolver import Resolver
from mxroute.errors import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from mxroute.routing.plan import Plan, Verdict, plan_to_json
from mxroute.routing.route import mta_sts_reach, route
from mxroute.routing.shaping import Shape, shaper_of
from mxroute.settings import Settings
from mxroute.tls import host as hosttls
from mxroute.tls.mtasts.policy import Lookup, skip_reason
from mxroute.tls.policy import TlsPolicy

if TYPE_CHECKING:  # DKIM and DMARC (cryptography, the PSL) load only with --from
    from mxroute.identity.dmarc.assess import Assessment
    from mxroute.tls.mtasts.store import MtaSts

EXIT_CODES = {Verdict.DELIVERABLE: EX_OK, Verdict.TEMPORARY: EX_TEMPFAIL,
              Verdict.PERMANENT: EX_UNAVAILABLE}


@dataclass
class Report:
    """Everything ``explain`` shows, in the contract's JSON shape via ``to_json``."""

    address: Address
    plan: Plan
    dns: list[dict[str, Any]]
    identity: list[dict[str, Any]] = field(default_factory=list)  # one per egress IP (SPF + PTR)
    probe: dict[str, Any] | None = None
    identity_text: str = ""
    tls: TlsPolicy | None = None  # the destination's TLS policy as delivery has it (TLS-3, EXP-3)
    mta_sts: Lookup | None = None  # the MTA-STS state delivery would apply (TLS-5/6, EXP-3)
    mta_sts_skipped: str | None = None  # or why delivery would not consult MTA-STS
    author: Assessment | None = None  # --from: the From: domain's DKIM and DMARC verdict
    # issue 16 §2: what serve itself would do (explainserve, relaystate)
    intake: IntakeVerdicts | None = None  # the intake's replies at MAIL FROM and RCPT TO
    relay: dict[str, Any] | None = None  # what a relay on this spool knows (RTY-4, TLS-5)
    zones: dict[str, Any] | None = None  # --zone: the loaded zone holding the domain, or none
    spf_skipped: str | None = None  # why there is no SPF verdict
    shaping: Shape | None = None  # issue 18: the site, the shaping rule and its limits
    # issue 19: where those limits are counted: "local" (this node) or "shared" (the fleet's
    # shared_state, shown redacted in ``shared_state``)
    shaping_scope: str = "local"
    shared_state: str | None = None

    def verdict(self) -> tuple[Verdict, str, str]:
        """(verdict, reason, enhanced status): an intake refusal first, else the route's."""
        found = (self.intake.status(self.plan) if self.intake is not None
                 else (self.plan.verdict, self.plan.reason, self.plan.dsn_status))
        note = self.zones and self.zones["note"]
        return (found[0], f"{found[1]}: {note}", found[2]) if note else found

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict()[0]]

    def to_json(self) -> dict[str, Any]:
        first = self.identity[0] if self.identity else {}
        body: dict[str, Any] = {"address": str(self.address), "domain": self.address.domain}
        body.update(plan_to_json(self.plan))
        verdict, body["reason"], body["dsn_status"] = self.verdict()
        body["status"] = verdict.value
        body["intake"] = self.intake.to_json(self.plan) if self.intake is not None else None
        body["relay"] = self.relay
        body["zones"] = self.zones
        body["spf_skipped"] = self.spf_skipped
        body["spf"] = first.get("spf")
        body["ptr"] = first.get("ptr")
        body["identity"] = self.identity
        body["shaping"] = {**self.shaping.to_json(), "scope": self.shaping_scope,
                           "shared_state": self.shared_state} if self.shaping else None
        body["tls"] = self.tls.to_json() if self.tls else None
        body["dane"] = self.plan.dane.to_json() if self.plan.dane else None  # TLS-7 / EXP-3
        body["mta_sts"] = self.mta_sts_json()
        body["probe"] = self.probe
        if self.author is not None:  # issue 14 §3: bulk_sender_ready and fixes inside dmarc
            body["dkim"] = self.author.dkim_json()
            body["dmarc"] = self.author.verdict.to_json()
        body["dns"] = self.dns
        return body

    def mta_sts_json(self) -> dict[str, Any] | None:
        """``mta_sts`` (EXP-3): the lookup and each MX host's eligibility, or why not consulted."""
        if self.mta_sts is not None:
            base = self.tls or TlsPolicy()
            targets = list({t.exchange: t for t in self.plan.targets if t.exchange}.values())
            body = self.mta_sts.to_json([t.exchange for t in targets], base)
            # DANE's hosts are not MTA-STS's (RFC 8461 §2)
            for row, target in zip(body["hosts"], targets):
                policy, refusal, rule = hosttls.for_host(
                    base, self.plan.dane, self.mta_sts, target.exchange, str(target)
                )
                if rule == "TLS-7":
                    row.update(eligible=refusal is None, tls=None if refusal else policy.level,
                               reason=refusal or "DANE decides this host's TLS (TLS-7): "
                                                 "MTA-STS not applied")
            return body
        if self.mta_sts_skipped is not None:
            return {"applied": False, "reason": self.mta_sts_skipped}
        return None


async def run_explain(address: Address, settings: Settings, resolver: Resolver, *,
                      seed: int | None = None, egress_ips: Sequence[str] = (),
                      sender: str | None = None, helo: str | None = None,
                      probe: bool = False, author: Address | None = None,
                      sts: MtaSts | None = None) -> Report:
    """The whole report for ``address``, each part by the code delivery runs.

    The route (EXP-1, EXP-2; ``seed`` fixes the shuffle of equal preferences), the
    destination's TLS policy and MTA-STS state (EXP-3), the sending identity of
    ``egress_ips`` (default: the settings'; EXP-4), with ``probe`` the first reachable
    host's banner, EHLO and STARTTLS, and every DNS answer seen on the way. With ``author``
    (the From: address; also the envelope ``sender`` unless one is given) the DKIM and DMARC
    verdict of its domain. ``sts``: the MTA-STS policies to consult (bulk: one ``mta_sts_store``
    for every address); by default a fresh ``mta_sts_store``.
    """
    egress = list(egress_ips or settings.egress_ips)
    helo = helo or settings.helo_name
    if author is not None:
        sender = sender if sender is not None else str(author)
    policy = relay_policy(settings, helo, egress)  # MX-11: --helo, --egress-ip are this relay
    envelope = None if sender is None else sender.removeprefix("<").removesuffix(">")  # <>: ""
    routed = await route(resolver, address.domain, policy, random.Random(seed), settings, envelope)
    plan = routed.plan
    report = Report(address, plan, [], tls=routed.tls)  # EXP-3: the level delivery applies
    report.shaping = shaper_of(settings).shape(plan)  # issue 18: as delivery resolves it
    if settings.shared_state:  # issue 19: counted by the fleet (local while Redis is away)
        from mxroute.relay.fleet.connection import shown

        report.shaping_scope, report.shared_state = "shared", shown(settings)
    await _add_mta_sts(report, settings, resolver, sts)
    await _add_serve(report, settings, resolver, sender)
    await _add_identity(report, settings, resolver, egress, sender, helo)
    if author is not None:
        from mxroute.identity.dmarc.assess import assess

        report.author = await assess(resolver, author.domain, sender=sender, egress_ips=egress,
                                     helo=helo, dkim_keys=settings.dkim_keys)
    if probe:
        from mxroute.cli.probe import probe as probe_first

        report.probe = await probe_first(plan, settings, tls=report.tls, sts=report.mta_sts)
    report.dns = [record.to_json() for record in resolver.trace]
    return report


def mta_sts_store(settings: Settings, resolver: Resolver) -> MtaSts:
    """The delivery process's MTA-STS policy store under ``spool_dir``, read, never written."""
    from mxroute.tls.mtasts.store import STORE_NAME, MtaSts

    return MtaSts(mta_sts_reach(settings), resolver, store=settings.spool_dir / STORE_NAME,
                  persist=False)


async def _add_mta_sts(report: Report, settings: Settings, resolver: Resolver,
                       sts: MtaSts | None) -> None:
    """EXP-3: what delivery's MTA-STS step would decide (TLS-5/6), by the same code.

    Reads the delivery process's policy store (``mta_sts_store``) and fetches live when that
    is what delivery would do.
    """
    if report.tls is None:
        return
    report.mta_sts_skipped = skip_reason(settings.mta_sts, report.plan.domain, report.tls,
                                         deliverable=report.plan.deliverable)
    if report.mta_sts_skipped is None:
        store = mta_sts_store(settings, resolver) if sts is None else sts.sharing(resolver)
        report.mta_sts = await store.lookup(report.plan.domain)


async def _add_serve(report: Report, settings: Settings, resolver: Resolver,
                     sender: str | None) -> None:
    """Issue 16 §2: the intake's replies, the --zone note, and what a relay on the spool knows."""
    from mxroute.cli import relaystate
    from mxroute.cli.explainserve import zone_note

    report.intake = await intake_verdicts(report.address, sender, settings, resolver)
    report.zones = zone_note(resolver, settings, report.address.domain)
    known = await relaystate.snapshot(settings)
    if known is not None:
        cached = relaystate.cached_policy(settings, resolver, report.plan.domain)
        report.relay = known.for_plan(report.plan, cached)


async def _add_identity(report: Report, settings: Settings, resolver: Resolver,
                        egress_ips: list[str], sender: str | None, helo: str) -> None:
    """SPF and reverse-DNS verdicts for the relay's own sending identity (EXP-4)."""
    if not egress_ips:
        report.spf_skipped = SPF_SKIPPED  # issue 16 §2: say why
        return
    sender = sender or (f"postmaster@{settings.sender_domain}" if settings.sender_domain else None)
    from mxroute.cli.identity import render_identity
    from mxroute.identity.findings import check_identity

    reports = await check_identity(resolver, sender=sender, egress_ips=egress_ips, helo=helo)
    report.identity = [r.to_json() for r in reports]
    report.identity_text = render_identity(reports)


__all__ = ["Report", "mta_sts_store", "run_explain"]
