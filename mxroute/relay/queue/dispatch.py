"""Handing a message's due recipients to the courier: one transaction per destination domain.

The queue reaches the courier only through ``CourierLike`` (chasquid's split): it knows nothing
of SMTP, and the courier nothing of retries. Recipients of one domain go in one transaction
(RFC 5321 §4.5.4.1 SHOULD), within the delivery slots (RTY-5); the domains of one message at
once. A domain is routed first: its plan says its site and so its shaping rule (issue 18),
whose key and ``connection_limit`` the slot is taken under, and which the courier applies.
Whatever goes wrong here, every recipient comes back with a result (SEC-12).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from mxroute.address import parse_address
from mxroute.errors import MxrouteError
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult, Times
from mxroute.relay.queue.slots import Slots
from mxroute.relay.queue.suspensions import FILE_NAME, Suspensions
from mxroute.relay.spool.format import MessageMeta, RecipientState
from mxroute.routing.plan import Plan
from mxroute.routing.route import Route
from mxroute.routing.shaping import Shape, Shaper
from mxroute.tls.policy import TlsPolicy

log = logging.getLogger(__name__)

SITES_KEPT = 10000  # recipient domains whose site is remembered: a bound, not a policy


class CourierLike(Protocol):
    """What the queue needs of a courier (``relay.courier``'s ``Courier``; tests script theirs)."""

    async def deliver(
        self, plan: Plan, envelope: Envelope, recipients: list[Recipient], message: bytes, *,
        tls: TlsPolicy, queue_id: str | None = None, times: Times | None = None,
        shape: Shape | None = None,
    ) -> list[RecipientResult]: ...

    def forget_unreachable(self) -> None: ...

    async def close(self) -> None: ...


class Dispatcher:
    """Groups due recipients by domain, routes each domain and has the courier deliver, within
    the slots of its shaping key (``shaper``: replaced when the settings are reloaded)."""

    def __init__(
        self, courier: CourierLike, route: Callable[[str, str], Awaitable[Route]], slots: Slots,
        shaper: Shaper,
    ) -> None:
        self.courier = courier
        self.route = route  # (domain, envelope sender) -> its delivery plan and TLS level
        self.slots = slots
        self.shaper = shaper
        # issue 18 §2: recipient domain -> its site, as last routed (bounded), so a suspended
        # site's mail is passed over like a suspended domain's (``mxroute queue suspend``)
        self.sites: dict[str, str] = {}
        self.suspensions = Suspensions(Path(FILE_NAME))  # the queue's, set by its manager

    def suspended(self, domain: str, now: float) -> float | None:
        """When the suspension of ``domain``, or of its site as last routed (issue 18 §2),
        ends; None: neither is suspended."""
        ends = self.suspensions.until(domain, now)
        site = self.sites.get(domain)
        if ends is None and site is not None:
            ends = self.suspensions.until(site, now)
        return ends

    async def deliver(
        self, meta: MessageMeta, message: bytes, due: list[RecipientState],
    ) -> list[RecipientResult]:
        """A result for each of ``due``: one transaction per destination domain, at once."""
        groups: dict[str, list[RecipientState]] = defaultdict(list)
        for rcpt in due:
            groups[domain_of(rcpt.address)].append(rcpt)
        envelope = meta.envelope()
        if len(groups) == 1:  # the common case: no gather (a task per group) needed
            [(domain, rcpts)] = groups.items()
            return await self._group(meta, envelope, message, domain, rcpts)
        batches = await asyncio.gather(*(
            self._group(meta, envelope, message, domain, rcpts) for domain, rcpts in groups.items()
        ))
        return [r for batch in batches for r in batch]

    async def _group(
        self, meta: MessageMeta, envelope: Envelope, message: bytes, domain: str,
        rcpts: list[RecipientState],
    ) -> list[RecipientResult]:
        """One SMTP transaction's worth: every due recipient of ``domain``, routed, in a slot of
        its shaping key."""
        recipients = [r.recipient() for r in rcpts]
        try:
            begun = time.monotonic()
            async with self.slots.routing:
                routed = await self.route(domain, envelope.sender)
            routing = time.monotonic() - begun
            shape = self.shaper.shape(routed.plan)
            if len(self.sites) >= SITES_KEPT:
                self.sites.clear()
            self.sites[domain] = shape.site
            if shape.site != domain and self.suspensions.until(shape.site, time.time()) is not None:
                reason = f"451 4.7.0 site {shape.site} suspended (mxroute queue suspend)"
                log.info("%s: to %s: deferred, not tried (%s)", meta.queue_id, domain, reason)
                return [_deferred(r.address, reason) for r in rcpts]
            async with self.slots.slot(shape.key, shape.connection_limit):
                # waiting for the slot is time in the queue (delays b), routing is c's
                times = Times(meta.arrival, meta.intake, time.time() - routing, routing)
                results = await self.courier.deliver(routed.plan, envelope, recipients, message,
                                                     tls=routed.tls, queue_id=meta.queue_id,
                                                     times=times, shape=shape)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never crash the worker (SEC-12); the recipients stay queued
            log.exception("%s: delivery to %s failed internally", meta.queue_id, domain)
            reason = f"451 4.3.0 internal error: {type(exc).__name__}"
            return [_deferred(r.address, reason) for r in rcpts]
        seen = {r.recipient for r in results}
        for rcpt in rcpts:  # a courier that forgot a recipient must not make it vanish
            if rcpt.address not in seen:
                results.append(_deferred(rcpt.address, "451 4.3.0 no result"))
        return results


def due_recipients(
    pending: list[RecipientState], now: float, force: bool = False,
) -> list[RecipientState]:
    """The recipients to try now: those due by ``now`` (all when ``force``d), and with them
    every other pending recipient of a domain one of them goes to.

    Each recipient's next try carries its own jitter (RTY-2), so one domain's recipients come
    due moments apart; they go in the one transaction that domain gets now, as on the first
    attempt (RFC 5321 §4.5.4.1 SHOULD; issue 15 C4), not in one transaction each.
    """
    if force:
        return list(pending)
    domains = {domain_of(r.address) for r in pending if r.next_try <= now}
    return [r for r in pending if r.next_try <= now or domain_of(r.address) in domains]


def _deferred(address: str, reason: str) -> RecipientResult:
    """A local 4.3.0 deferral: the courier failed, or forgot ``address``."""
    return RecipientResult(address, Disposition.DEFERRED, "4.3.0", reason)


def domain_of(address: str) -> str:
    """The recipient domain ``address`` is delivered to (normalised as routing keys it)."""
    try:
        return parse_address(address).domain
    except MxrouteError:
        return address.rpartition("@")[2].lower()


__all__ = ["CourierLike", "Dispatcher", "domain_of", "due_recipients"]
