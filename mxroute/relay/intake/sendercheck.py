"""The MAIL FROM domain check (SPF-13, DSN-13): refuse in the session what could never be bounced.

RFC 7505 §4.2: a domain that publishes a null MX accepts no mail, so a message with
such a reverse-path could never get its bounce back; servers that refuse it SHOULD
answer ``550`` with the enhanced status ``5.7.27`` ("Sender address has null MX",
RFC 7505 §6 / the IANA enhanced status code registry). Refusing at MAIL tells the
submitting program at once, instead of a bounce later that has nowhere to go
(RFC 5321 §6.2, DSN-13).

``judge`` decides from the MX answer alone (pure); ``SenderCheck`` asks the shared
resolver, whose TTL cache makes a domain seen before cost no query and at most one
lookup per domain per TTL (a temporary failure is remembered ``TEMPFAIL_TTL``
seconds), waits at most ``MAIL_WAIT`` seconds, and logs. The null reverse-path
``<>`` and address literals are never looked up.

``null_mx_sender`` (settings):

- ``reject`` (default): null MX → ``550 5.7.27``. DNS trouble (SERVFAIL, REFUSED, a
  timeout, a CNAME loop, no answer within ``MAIL_WAIT``) and NXDOMAIN are accepted
  and logged (once a minute per domain).
- ``strict``: also ``451 4.4.3`` on DNS trouble (the client keeps the message and
  retries) and ``550 5.1.8`` on NXDOMAIN (RFC 3463: the sender's system does not
  exist or cannot accept return mail).
- ``off``: no lookup.

Why the default accepts on DNS trouble and NXDOMAIN: a smarthost's clients are the
site's own programs, and the relay's promise is to take their mail while DNS is
sick (DUR-9: intake must not depend on DNS answers); a 4xx would stall cron, PHP's
``mail()`` or the benchmark (whose sender domain's server answers REFUSED) for
nothing, because delivery copes with DNS trouble itself and a bounce that cannot
be delivered is logged and dropped. Postfix agrees in spirit: its recommended
``smtpd_sender_restrictions = permit_mynetworks, reject_unknown_sender_domain``
never checks its own networks, and even there a temporary failure is only
``defer_if_permit`` and NXDOMAIN a soft ``450`` (``unknown_address_reject_code``).
Local programs often send as ``user@host.internal`` names that public DNS does not
know; refusing those is left to ``strict``. A null MX, in contrast, is the domain
owner's explicit statement that nothing can be returned, so it is refused by
default, as Postfix's ``reject_unknown_sender_domain`` does (``550 5.7.27``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mxroute.address import Address
from mxroute.dns.answer import Answer, Outcome
from mxroute.dns.resolver import Resolver
from mxroute.relay.intake.params import Reply, path_address
from mxroute.relay.intake.recipient import MAIL_OK, Verdict
from mxroute.routing.plan import is_null_mx, mx_records
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)

MAIL_WAIT = 1.0  # seconds the MAIL reply waits for DNS; the lookup goes on and its answer is cached
NOTE_INTERVAL = 60.0  # an accepted-anyway note is logged at most this often per domain
MAX_NOTED = 4096


@dataclass(frozen=True, slots=True)
class Judgement:
    """``reply``: the refusal for MAIL, or None to go on; ``note``: what to log when going on
    anyway; ``setting``: what would let a refused sender through (``explain`` says it)."""

    reply: str | None = None
    note: str | None = None
    setting: str | None = None


def judge(domain: str, answer: Answer | None, mode: str) -> Judgement:
    """Decide on a MAIL FROM domain from its MX answer (None: no answer within ``MAIL_WAIT``)."""
    if mode == "off":
        return Judgement()
    if answer is not None and answer.outcome is Outcome.RECORDS and is_null_mx(mx_records(answer)):
        return Judgement(f"550 5.7.27 Sender address has null MX: {domain} accepts no mail, "
                         "so no bounce could reach the sender (RFC 7505 section 4.2)",
                         setting="null_mx_sender = off")
    if answer is not None and answer.outcome is Outcome.NXDOMAIN:
        if mode == "strict":
            return Judgement(f"550 5.1.8 Sender address rejected: domain {domain} does not exist "
                             "(NXDOMAIN), so no bounce could reach the sender",
                             setting="null_mx_sender = reject")
        return Judgement(note=f"sender check: {domain} does not exist (NXDOMAIN); accepted "
                              f"(null_mx_sender = {mode}), a bounce to it would fail")
    if answer is None or answer.outcome.temporary:
        what = f"no answer within {MAIL_WAIT:g} s" if answer is None else answer.outcome.value
        if answer is not None and answer.detail:
            what += f": {answer.detail}"
        if mode == "strict":
            return Judgement(f"451 4.4.3 Sender address rejected: cannot look up the MX records "
                             f"of {domain} now ({what}); try again later",
                             setting="null_mx_sender = reject")
        return Judgement(note=f"sender check: {domain}: MX lookup failed ({what}); accepted "
                              f"without the null MX check (null_mx_sender = {mode})")
    # MX records, or none (implicit MX: RFC 5321 §5.1): the domain can take a bounce
    return Judgement()


class SenderCheck:
    """``judge`` over the shared resolver, for the intake's MAIL command."""

    def __init__(self, resolver: Resolver, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.clock = clock
        self._noted: dict[str, float] = {}  # domain -> when its note may be logged again
        # outlived MAIL_WAIT: kept until they finish
        self._lookups: set[asyncio.Task[Answer]] = set()

    async def refusal(self, sender: Address, mode: str, client: str) -> str | None:
        """The reply refusing MAIL FROM ``sender`` (logged with ``client``), or None to go on."""
        verdict = await self.judgement(sender, mode)
        if verdict.reply is not None:
            log.info("reject: MAIL from %s: %s; from=<%s>", client, verdict.reply,
                     safe_text(str(sender), LISTING))
        elif verdict.note is not None:
            self._note(sender.domain, verdict.note)
        return verdict.reply

    async def judgement(self, sender: Address, mode: str) -> Judgement:
        """The verdict on MAIL FROM ``sender`` under ``mode``, unlogged (``explain``'s too)."""
        if mode == "off" or sender.literal is not None:  # MX-13: a literal needs no DNS
            return Judgement()
        return judge(sender.domain, await self._lookup(sender.domain), mode)

    async def _lookup(self, domain: str) -> Answer | None:
        answer = self.resolver.cached(domain, "MX")  # the common case: no task, no wait
        if answer is not None:
            return answer
        task = asyncio.ensure_future(self.resolver.lookup(domain, "MX"))
        done, _ = await asyncio.wait({task}, timeout=MAIL_WAIT)
        if done:
            return task.result()
        self._lookups.add(task)  # its answer lands in the resolver's cache for the next MAIL
        task.add_done_callback(self._lookups.discard)
        return None

    def _note(self, domain: str, text: str) -> None:
        now = self.clock()
        if self._noted.get(domain, 0.0) > now:
            return
        if len(self._noted) >= MAX_NOTED:
            self._noted.clear()
        self._noted[domain] = now + NOTE_INTERVAL
        log.info("%s", text)


async def mail_verdict(check: SenderCheck, sender: str, mode: str) -> Verdict:
    """What MAIL FROM:<sender> gets from the intake's address and null MX checks (``explain``,
    issue 16 §2), for a client that declared SMTPUTF8 when the address needs it."""
    try:
        address = path_address(f"<{sender.removeprefix('<').removesuffix('>')}>")
    except Reply as refusal:
        return Verdict(refusal.text, refusal.setting)
    if address is None:  # SPF-13/DSN-13: the null reverse-path is never checked
        return Verdict(MAIL_OK)
    judged = await check.judgement(address, mode)
    return Verdict(judged.reply or MAIL_OK, judged.setting, judged.note)
