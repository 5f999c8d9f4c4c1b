"""What one ``Courier.deliver`` call has learnt so far: final answers and the last temporary reason
per recipient (MX-17, DSN-6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from mxroute.relay.courier.health import Walk
from mxroute.relay.courier.replies import Answer, Kind
from mxroute.relay.courier.upstream import Upstream
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Target
from mxroute.routing.shaping import Shape
from mxroute.tls import dane
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.policy import TlsPolicy


class LastReason(NamedTuple):
    """A recipient's last temporary reason: what its deferral says if nothing better comes."""

    status: str
    reply: str
    relay: str | None  # the host that gave it, or None
    remote: bool  # ``reply`` is what ``relay`` replied, not our own reason (DSN-6)


NO_ADDRESS = LastReason(
    "4.4.1", "451 4.4.1 no address of the destination could be tried", None, False
)


@dataclass
class Attempt:
    """What one deliver() call has learnt so far."""

    envelope: Envelope
    body: bytes  # canonical (CRLF) message
    eight_bit: bool
    utf8: bool  # the envelope or the header needs SMTPUTF8 (SESS-15)
    tls: TlsPolicy = field(default_factory=TlsPolicy)  # the destination's TLS policy (TLS-3)
    dane: dane.DanePosture | None = None  # the plan's DANE verdict per MX host (TLS-7)
    sts: mtasts.Lookup | None = (
        None  # the destination's MTA-STS state (TLS-5/6); None: not consulted
    )
    upstream: Upstream | None = None  # a routed next hop's implicit TLS and AUTH (issue 16)
    shape: Shape | None = None  # the destination's shaping: key and limits (issue 18)
    results: dict[str, RecipientResult] = field(default_factory=dict)
    last: dict[str, LastReason] = field(default_factory=dict)  # address -> last temporary reason
    # issue 15 D: the hosts contacted (a greeting came) -> their session's TLS ("none": plain),
    # and the seconds spent setting sessions up (connect, greeting, EHLO, STARTTLS) and sending
    met: dict[str, str] = field(default_factory=dict)
    setup: float = 0.0
    transfer: float = 0.0
    # issue 18 §2: the sessions had and missed per address family, and the replies heard, in
    # order (each once per host): what the site's health learns from this delivery
    walk: Walk = field(default_factory=Walk)
    heard: dict[tuple[Target, str], None] = field(default_factory=dict)

    def finish(
        self,
        rcpt: Recipient,
        disposition: Disposition,
        status: str,
        reply: str,
        target: Target | None,
        *,
        remote: bool,
    ) -> None:
        """A final answer. ``remote``: ``reply`` is what ``target`` replied, not our own reason
        (DSN-6)."""
        relay = str(target) if target else None
        if remote and target is not None:
            self.heard[(target, reply)] = None
        self.results[rcpt.address] = RecipientResult(
            rcpt.address,
            disposition,
            status,
            reply,
            relay,
            remote_reply=remote and target is not None,
        )

    def soft(
        self,
        recipients: Sequence[Recipient],
        status: str,
        reply: str,
        target: Target | None,
        *,
        remote: bool,
    ) -> None:
        """A temporary answer: the recipients stay pending; remember it as their last reason."""
        relay = str(target) if target else None
        if remote and target is not None:
            self.heard[(target, reply)] = None
        for rcpt in recipients:
            self.last[rcpt.address] = LastReason(
                status, reply, relay, remote and target is not None
            )

    def answered(self, recipients: Sequence[Recipient], answer: Answer, target: Target) -> None:
        """What ``target`` replied for ``recipients``: bounced when permanent, else their last
        temporary reason (an accepting answer records nothing)."""
        if answer.kind is Kind.PERMANENT:
            for rcpt in recipients:
                self.finish(
                    rcpt, Disposition.BOUNCED, answer.status, answer.reply, target, remote=True
                )
        elif answer.kind is not Kind.ACCEPTED:
            self.soft(recipients, answer.status, answer.reply, target, remote=True)

    def deferred(self, rcpt: Recipient) -> RecipientResult:
        """The deferral of a recipient still pending when the plan is walked, from its last
        reason. A host-level 5xx (greeting, EHLO) was only a reason to move on: made 4xx."""
        status, reply, relay, remote = self.last.get(rcpt.address, NO_ADDRESS)
        if status[0] != "4":
            status = "4" + status[1:]
        return RecipientResult(
            rcpt.address, Disposition.DEFERRED, status, reply, relay, remote_reply=remote
        )


__all__ = ["NO_ADDRESS", "Attempt", "LastReason"]
