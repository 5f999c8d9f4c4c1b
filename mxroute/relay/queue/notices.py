"""The notifications the queue owes a sender: bounces, delay warnings, ``relayed`` notices.

Each is one RFC 3464 report (built by ``relay.dsn``) spooled as a message of its own from the
null reverse-path, durably, *before* the recipients it names are marked (DSN-12); its queue ID
``<original>B<batch>`` makes a second enqueue after a crash a no-op, so each recipient is
notified once. Each is DKIM-signed with the key for its From: domain (the reporting MTA's,
``helo_name``) when ``dkim_keys`` has one (issue 14 §1). RFC 5321 §6.1 (never bounce a
bounce), RFC 3461 §4.1 (NOTIFY), §5.2.3 (relayed); checklist DSN-1..3, DSN-7..10, DSN-12.

A bounce that cannot be delivered (null-sender mail that failed for good) is logged and counted
(``double_bounces``); with ``postmaster`` set the operator gets a copy, from the null sender
(Postfix's double bounce, issue 15 C7). A copy that fails is only logged and counted: no loop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.sign import DkimSigner, SigningError
from mxroute.relay import dsn
from mxroute.relay.envelope import Disposition, RecipientResult
from mxroute.relay.queue.settle import Timing
from mxroute.relay.spool.format import BOUNCED, PENDING, MessageMeta, RecipientState
from mxroute.relay.spool.store import Spool
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)

Item = tuple[RecipientState, RecipientResult]
_KINDS = {"failed": "non-delivery", "delayed": "delay"}  # else (DSN-9: relayed) "delivery status"
DOUBLE = "double-bounce"  # bounce_of["action"] of a postmaster copy


def mark_bounced(meta: MessageMeta, addresses: set[str], bounces: int) -> None:
    """Mark ``addresses`` bounced and ``bounces`` notices sent (once the DSN is durable)."""
    for rcpt in meta.recipients:
        if rcpt.address in addresses and rcpt.state == PENDING:
            rcpt.state = BOUNCED
    meta.bounces = max(meta.bounces, bounces)


def failures(meta: MessageMeta, status: str, reason: str) -> list[Item]:
    """Every pending recipient of ``meta`` failed with this relay's own ``reason`` (not a remote
    reply): held mail expiring, an operator's bounce."""
    reply = safe_text(reason, LISTING)
    return [(rcpt, RecipientResult(rcpt.address, Disposition.BOUNCED, status, reply))
            for rcpt in meta.pending]


class Notifier:
    """Builds and spools the notices for one message's attempt, and marks what they cover."""

    def __init__(
        self, spool: Spool, *, reporting_mta: str, timing: Timing, clock: Callable[[], float],
        schedule: Callable[[MessageMeta], None], stats: dict[str, int],
        builder: Callable[..., bytes],  # dsn.build_dsn, or a test's recorder
        signer: DkimSigner | None = None, postmaster: str | None = None,
    ) -> None:
        self.spool = spool
        self.reporting_mta = reporting_mta
        self.timing = timing
        self.clock = clock
        self.schedule = schedule  # the queue's: a spooled notice is mail to deliver
        self.stats = stats
        self.builder = builder
        self.signer = signer  # replaced on reload (the delivery process's keys)
        self.postmaster = postmaster  # postmaster_address (reloaded)

    async def bounce(self, meta: MessageMeta, message: bytes, failed: list[Item]) -> None:
        """One DSN for everything that failed in this attempt (DSN-7), enqueued before marking."""
        batch = meta.bounces
        addresses = {r.address for r, _ in failed}
        wanted = [(r, res) for r, res in failed if r.recipient().wants("FAILURE")]
        to = dsn.dsn_recipient(meta.sender)
        if to is None:  # DSN-3: never bounce a bounce
            log.info("%s: from=<>, failed recipient(s) %s: no bounce for a bounce, discarded",
                     meta.queue_id,
                     ", ".join(f"<{safe_text(a, LISTING)}>" for a in sorted(addresses)))
            self.stats["double_bounces"] += len(failed)
            await self._postmaster_copy(meta, message, failed, batch, addresses)
        elif not wanted:  # DSN-8: NOTIFY=NEVER (or without FAILURE)
            log.info("%s: no DSN requested (NOTIFY) for %d failed recipient(s)",
                     meta.queue_id, len(failed))
        else:
            await self._enqueue(meta, message, wanted, to, "failed", batch, addresses)
        mark_bounced(meta, addresses, batch + 1)
        self.stats["bounced"] += len(failed)

    async def warn(self, meta: MessageMeta, message: bytes, delayed: list[Item]) -> None:
        """DSN-10: one ``delayed`` report for the recipients whose warning is due."""
        to = dsn.dsn_recipient(meta.sender)
        if to is None:
            return
        await self._enqueue(meta, message, delayed, to, "delayed", meta.bounces, set())
        meta.bounces += 1
        for rcpt, _ in delayed:
            rcpt.warned = True

    async def relayed(self, meta: MessageMeta, message: bytes, items: list[Item]) -> None:
        """DSN-9: NOTIFY=SUCCESS, handed to a hop without DSN → one ``relayed`` DSN (§5.2.3).

        A DSN-capable hop got NOTIFY/ORCPT and is responsible instead (§5.2.2): no local notice.
        Enqueued before the recipients are recorded as delivered (DSN-12).
        """
        to = dsn.dsn_recipient(meta.sender)
        if to is None:  # DSN-3: nothing about a bounce
            return
        await self._enqueue(meta, message, items, to, "relayed", meta.bounces, set())
        meta.bounces += 1

    async def _postmaster_copy(
        self, meta: MessageMeta, message: bytes, failed: list[Item], batch: int, marks: set[str],
    ) -> None:
        """The operator's copy of an undeliverable bounce, the whole bounce enclosed; none for a
        copy itself (a failed double bounce is only logged and counted)."""
        if (meta.bounce_of or {}).get("action") == DOUBLE:
            log.info("%s: postmaster copy undeliverable, discarded (no copy of a copy)",
                     meta.queue_id)
        elif self.postmaster:
            await self._enqueue(meta, message, failed, self.postmaster, "failed", batch, marks,
                                copy=True)

    async def _enqueue(
        self, meta: MessageMeta, message: bytes, items: list[Item],
        to: str, action: str, batch: int, marks: set[str], *, copy: bool = False,
    ) -> None:
        """``copy``: a postmaster copy (to ``to``, the original enclosed in full)."""
        dsn_id = f"{meta.queue_id}B{batch}"
        if self.spool.exists(dsn_id):  # enqueued before a crash: notified once only (DSN-12)
            return
        until = self.timing.retry_until(meta.arrival) if action == "delayed" else None
        envelope = meta.envelope()
        if copy:
            envelope = dataclasses.replace(envelope, sender=to, ret="FULL")
        body = self.builder(
            reporting_mta=self.reporting_mta, envelope=envelope, message=message,
            results=[res for _, res in items], action=action, arrival=meta.arrival,
            recipients=[r.recipient() for r, _ in items], will_retry_until=until,
        )
        body = self._signed(body, dsn_id)
        notice = MessageMeta(
            queue_id=dsn_id, sender="", arrival=self.clock(), size=len(body), client="local",
            recipients=[RecipientState(address=to, notify=("NEVER",))],
            bounce_of={"queue_id": meta.queue_id, "batch": batch, "recipients": sorted(marks),
                       "action": DOUBLE if copy else action},
        )
        await self.spool.store(notice, body)
        self.stats["dsn"] += 1
        kind = f"sender {_KINDS.get(action, 'delivery status')}"
        kind = "postmaster double-bounce" if copy else kind
        log.info("%s: %s notification: %s", meta.queue_id, kind, dsn_id)  # as bounce(8)
        self.schedule(notice)

    def _signed(self, body: bytes, dsn_id: str) -> bytes:
        """``body`` with the DKIM signatures of its From: domain's keys, if it has any.

        A notice that cannot be signed is logged and sent unsigned: a report about the sender's
        own mail is not held back for it.
        """
        if self.signer is None or not self.signer.keys:
            return body
        try:
            parsed = canon.split_message(body)
            author = canon.author_domain(parsed)
            keys = self.signer.keys_for(author)
            return self.signer.sign_parsed(parsed, keys, author) + body if keys else body
        except (canon.ParseError, canon.AuthorError, SigningError) as exc:
            log.error("%s: notification not DKIM-signed: %s", dsn_id, exc)
            return body


__all__ = ["Item", "Notifier", "failures", "mark_bounced"]
