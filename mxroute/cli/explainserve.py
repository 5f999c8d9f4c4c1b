"""What ``serve`` itself would do with an address, for ``explain`` (issue 16 §2).

``intake_verdicts``: the replies the intake gives at MAIL FROM and RCPT TO, by the intake's own
functions (``relay.intake.recipient.rcpt_verdict``, ``relay.intake.sendercheck.mail_verdict``);
a refusal there decides the verdict, before any routing. ``relay_policy``: the routing policy
with ``--helo`` and ``--egress-ip`` as this relay's names and addresses (MX-11), as they are
SPF's. ``zone_note``: with ``--zone``, the loaded zone a domain is in, or that it is in none.
``SPF_SKIPPED``: why no SPF verdict without an egress address (EXP-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxroute.address import Address
from mxroute.dns.resolver import Resolver
from mxroute.relay.intake.recipient import Verdict, rcpt_verdict
from mxroute.routing.plan import Plan, RoutingPolicy
from mxroute.routing.plan import Verdict as Status
from mxroute.routing.route import policy_from_settings
from mxroute.settings import Settings

SPF_SKIPPED = ("no egress IP: SPF and reverse DNS are checked for the addresses mail leaves from; "
               "give --egress-ip IP, or set egress_ips")
CLIENT = "a client allowed to relay (relay_networks or AUTH, SEC-3)"


@dataclass(frozen=True, slots=True)
class IntakeVerdicts:
    """The intake's replies to MAIL FROM:<sender> (None: no sender given) and RCPT TO."""

    rcpt_to: str
    rcpt: Verdict
    mail_from: str | None = None
    mail: Verdict | None = None

    def refusal(self) -> tuple[str, Verdict] | None:
        """The first command the intake refuses and its reply (MAIL comes before RCPT)."""
        if self.mail is not None and self.mail_from is not None and not self.mail.accepted:
            return f"MAIL FROM:<{self.mail_from}>", self.mail
        if not self.rcpt.accepted:
            return f"RCPT TO:<{self.rcpt_to}>", self.rcpt
        return None

    def status(self, plan: Plan) -> tuple[Status, str, str]:
        """(verdict, reason, enhanced status): the intake's refusal if any, else the route's."""
        refused = self.refusal()
        if refused is None:
            return plan.verdict, plan.reason, plan.dsn_status
        command, verdict = refused
        reason = f"the intake refuses {command}: {verdict.reply}"
        if verdict.setting:
            reason += f" ({verdict.setting} would change it)"
        kind = Status.TEMPORARY if verdict.reply.startswith("4") else Status.PERMANENT
        return kind, reason, verdict.status or ("4.0.0" if kind is Status.TEMPORARY else "5.0.0")

    def to_json(self, plan: Plan) -> dict[str, Any]:
        return {
            "client": CLIENT,
            "mail": None if self.mail is None else {"sender": self.mail_from,
                                                    **self.mail.to_json()},
            "rcpt": {"recipient": self.rcpt_to, **self.rcpt.to_json()},
            # what routing alone says: the verdict once the intake takes the message
            "route_verdict": {"status": plan.verdict.value, "reason": plan.reason,
                              "dsn_status": plan.dsn_status},
        }

    def lines(self) -> list[list[str]]:
        """Summary rows for the text form."""
        rows = []
        for name, command, verdict in (("mail from", self.mail_from, self.mail),
                                       ("rcpt to", self.rcpt_to, self.rcpt)):
            if verdict is None or command is None:
                continue
            said = f"<{command}>: {verdict.reply}"
            if verdict.note:
                said += f" ({verdict.note})"
            rows.append([name, said])
        return rows


async def intake_verdicts(address: Address, sender: str | None, settings: Settings,
                          resolver: Resolver) -> IntakeVerdicts:
    """What the intake answers to MAIL FROM:<sender> and RCPT TO:<address> (issue 16 §2)."""
    rcpt = rcpt_verdict(address, allow_address_literals=settings.allow_address_literals)
    if sender is None:
        return IntakeVerdicts(str(address), rcpt)
    from mxroute.relay.intake.sendercheck import SenderCheck, mail_verdict

    mail = await mail_verdict(SenderCheck(resolver), sender, settings.null_mx_sender)
    shown = sender.removeprefix("<").removesuffix(">")
    return IntakeVerdicts(str(address), rcpt, shown, mail)


def relay_policy(settings: Settings, helo: str, egress_ips: Sequence[str]) -> RoutingPolicy:
    """The routing policy with ``helo`` and ``egress_ips`` as this relay's own (MX-11), by the
    function delivery uses (``policy_from_settings``)."""
    return policy_from_settings(settings.model_copy(
        update={"helo_name": helo, "egress_ips": list(egress_ips)}))


def zone_note(resolver: Resolver, settings: Settings, domain: str) -> dict[str, Any] | None:
    """With ``--zone``: ``{"files", "zone", "note"}``, the loaded zone holding ``domain`` (None:
    in none, and ``note`` says so); None without zone files."""
    if not settings.dns_zone_files or domain.startswith("["):  # a literal needs no DNS (MX-13)
        return None
    from mxroute.dns.zonefile import ZoneTransport

    transport = resolver.transport
    if not isinstance(transport, ZoneTransport):
        return None
    files = [str(path) for path in settings.dns_zone_files]
    zone = transport.zone_of(domain)
    note = None if zone else "not in any loaded zone (" + " ".join(
        f"--zone {name}" for name in files) + ")"
    return {"files": files, "zone": zone, "note": note}


__all__ = ["SPF_SKIPPED", "IntakeVerdicts", "intake_verdicts", "relay_policy", "zone_note"]
