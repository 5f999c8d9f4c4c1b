"""The queue manager: when to try which recipients, and what to do with the outcome.

It owns the schedule, retries, expiry and bounces, and knows nothing of DNS or
SMTP beyond calling ``route()`` and the courier (the chasquid split). The spool
is the truth: every decision is persisted before it is acted on or forgotten.
Its parts: ``timetable`` (when each message is due), ``dispatch`` (to the courier, within
``slots``), ``settle`` (the pure decisions after an attempt), ``notices`` (the DSNs owed).

RFC 5321 §4.5.4.1 (retry strategy), §6.1 (never lose, bounce to the reverse-path,
never bounce a bounce), RFC 3461/3464 (DSN), checklist RTY-1..5, DSN-1..3/7/8/10/12, DUR-6/7.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from mxroute.dns.resolver import Resolver
from mxroute.errors import EX_DATAERR, MxrouteError
from mxroute.hostdefaults import delivery_share
from mxroute.identity.dkim.sign import DkimSigner
from mxroute.relay import dsn
from mxroute.relay.budget import Budget
from mxroute.relay.envelope import Disposition, RecipientResult
from mxroute.relay.queue import recovery
from mxroute.relay.queue.dispatch import CourierLike, Dispatcher, domain_of, due_recipients
from mxroute.relay.queue.notices import Item, Notifier, failures
from mxroute.relay.queue.plans import PlanCache, plan_key
from mxroute.relay.queue.settle import Next, Settlement, Timing, settle
from mxroute.relay.queue.slots import Slots
from mxroute.relay.queue.suspensions import Suspensions
from mxroute.relay.queue.timetable import Timetable
from mxroute.relay.spool.format import (
    DELIVERED,
    CorruptFile,
    MessageMeta,
    RecipientState,
    queue_id_time,
)
from mxroute.relay.spool.store import Spool
from mxroute.routing.plan import RoutingPolicy
from mxroute.routing.route import Route, policy_from_settings, route
from mxroute.routing.shaping import shaper_of
from mxroute.settings import Settings
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the longest the loop sleeps without looking at the schedule


# (resolver, domain, policy, rng, settings, envelope sender) -> the route (``routing.route``)
RouteFn = Callable[[Resolver, str, RoutingPolicy, random.Random, Settings, str], Awaitable[Route]]


def timing_of(settings: Settings) -> Timing:
    """The retry, lifetime and warning numbers of ``settings``, for the decisions."""
    return Timing(
        retry_min=settings.retry_min_seconds, retry_max=settings.retry_max_seconds,
        queue_lifetime=settings.queue_lifetime_seconds,
        bounce_lifetime=settings.bounce_lifetime_seconds,
        delay_warning=settings.delay_warning_seconds,
    )


class MemoryShare:
    """The delivery's share of max_inflight_bytes (issue 22): the bytes of the messages loaded
    for attempts. An attempt whose message does not fit waits for room; one always may run."""

    def __init__(self, limit: int) -> None:
        self.budget = Budget(limit)
        self._room = asyncio.Event()

    @classmethod
    def of(cls, settings: Settings) -> MemoryShare:
        """The delivery's share of ``settings``' max_inflight_bytes."""
        return cls(delivery_share(settings.inflight_budget(), settings.max_message_size))

    @contextlib.asynccontextmanager
    async def holding(self, size: int) -> AsyncIterator[None]:
        """Wait until ``size`` bytes fit, count them while the block runs."""
        while not self.budget.fits(size):
            self._room.clear()
            await self._room.wait()
        self.budget.force(size)
        try:
            yield
        finally:
            self.budget.give(size)
            self._room.set()


class QueueManager:
    """Schedules due messages, delivers them domain by domain, persists every outcome.

    ``plans``: a cache of delivery plans to share between messages (the service passes one);
    without it every delivery is routed afresh.
    """

    def __init__(
        self, settings: Settings, spool: Spool, resolver: Resolver, courier: CourierLike,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        route_fn: RouteFn = route,
        dsn_builder: Callable[..., bytes] = dsn.build_dsn,
        plans: PlanCache | None = None,
        signer: DkimSigner | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.resolver = resolver
        self.courier = courier
        self.clock = clock
        self.rng = rng or random.Random()
        self.route_fn = route_fn
        self.plans = plans
        self.policy = policy_from_settings(settings)
        self.timing = timing_of(settings)
        self.stats = {"delivered": 0, "deferred": 0, "bounced": 0, "dsn": 0, "double_bounces": 0}
        self.notices = Notifier(spool, reporting_mta=settings.helo_name, timing=self.timing,
                                clock=clock, schedule=self.add, stats=self.stats,
                                builder=dsn_builder, signer=signer,
                                postmaster=settings.postmaster_address)
        self.timetable = Timetable()
        self.memory = MemoryShare.of(settings)  # issue 22
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.held: set[str] = set()  # on hold (``mxroute queue hold``): scheduled at expiry only
        # issue 23: scheduled from the schedule snapshot, their file not read yet (``first_look``)
        self.unverified: set[str] = set()
        self.reports: set[str] = set()  # queued DSNs of an original: never in the snapshot
        # operator actions on a message being delivered: run when its attempt ends (issue 15 A)
        self.after_attempt: dict[str, Callable[[], Awaitable[object]]] = {}
        self._unsaved: dict[str, MessageMeta] = {}  # outcomes the disk refused (DUR-4): newer
        try:  # suspended recipient domains (``mxroute queue suspend``): never tried meanwhile
            self.suspensions = Suspensions.load(spool.root)
        except ValueError as exc:
            error = MxrouteError(f"{exc}; fix or remove it")
            error.exit_code = EX_DATAERR
            raise error from None
        self._wake = asyncio.Event()
        self._stopping = False
        self.slots = Slots(settings.delivery_concurrency)
        self.dispatcher = Dispatcher(courier, self._route, self.slots, shaper_of(settings))
        self.dispatcher.suspensions = self.suspensions
        self._max_inflight = settings.delivery_concurrency * 4

    def reconfigure(self, settings: Settings) -> None:
        """Apply reloaded settings (SIGHUP): retry, lifetime and routing from the next decision on.

        A changed ``delivery_concurrency`` applies to deliveries that start from now on (those in
        flight finish under the old limit); ``shaping`` to destinations not busy."""
        self.slots.configure(settings.delivery_concurrency)
        self.dispatcher.shaper = shaper_of(settings)
        self._max_inflight = settings.delivery_concurrency * 4
        self.settings = settings
        self.policy = policy_from_settings(settings)
        self.timing = self.notices.timing = timing_of(settings)
        self.notices.reporting_mta = settings.helo_name
        self.notices.postmaster = settings.postmaster_address
        self._wake.set()

    def sizes(self) -> dict[str, int]:
        """Messages by state, for STATUS= and metrics: active (being delivered), due (waiting for a
        delivery slot) and deferred (waiting for their retry time). O(queued): call it seldom."""
        due, later = self.timetable.count(self.clock())
        held = sum(1 for queue_id in self.held if self.timetable.knows(queue_id))
        return {"active": len(self._inflight), "due": due, "deferred": later - held, "held": held}

    def busy(self, queue_id: str) -> bool:
        """Is ``queue_id`` being delivered now?"""
        return queue_id in self._inflight

    # --- feeding the schedule ---
    def add(self, meta: MessageMeta) -> None:
        """A message now in the spool (from intake, a DSN, or recovery); a held one is due only
        when it expires (it is then bounced: ``_expire_held``)."""
        if meta.bounce_of:  # read again at every start (the interrupted-bounce check, DSN-12)
            self.reports.add(meta.queue_id)
        if meta.held:
            self.held.add(meta.queue_id)
            if not meta.done:
                self._schedule(meta.queue_id, meta.arrival + self.timing.lifetime(meta.sender))
            return
        self.held.discard(meta.queue_id)
        due = self._next_due(meta)
        if due is not None:
            self._schedule(meta.queue_id, due)

    def _next_due(self, meta: MessageMeta) -> float | None:
        """When ``meta`` is next due: a recipient at a suspended domain when the suspension
        ends, or at the message's expiry if that comes first (it is bounced then)."""
        if not self.suspensions.any():  # the common case (recovery: once per message, issue 23)
            return min((rcpt.next_try for rcpt in meta.pending), default=None)
        now, times = self.clock(), []
        expiry = meta.arrival + self.timing.lifetime(meta.sender)
        for rcpt in meta.pending:
            ends = self.dispatcher.suspended(domain_of(rcpt.address), now)
            times.append(rcpt.next_try if ends is None else max(rcpt.next_try, min(ends, expiry)))
        return min(times) if times else None

    def add_id(self, queue_id: str) -> None:
        """A message now in the spool, known by its ID only (from the intake process): due now.

        The attempt reads the file; what is not due yet is rescheduled from its recorded state.
        """
        self._schedule(queue_id, self.clock())

    def unknown(self, ids: list[str]) -> list[str]:
        """Those of the spooled ``ids`` this queue does not know (their notice from intake was
        lost, or is on its way)."""
        return [q for q in ids if not self.timetable.knows(q) and q not in self._inflight]

    def rescan(self, ids: list[str]) -> int:
        """Schedule the spooled messages this queue does not know (their notice was lost)."""
        missed = self.unknown(ids)
        for queue_id in missed:
            self.add_id(queue_id)
        return len(missed)

    def wake(self) -> None:
        """Look at the schedule now (it changed outside ``add``: an operator's flush)."""
        self._wake.set()

    def _schedule(self, queue_id: str, due: float) -> None:
        self.timetable.schedule(queue_id, due)
        self._wake.set()

    def recover(self, settle: float = 0.0, since: float | None = None) -> int:
        """Start-up scan: schedule everything (DUR-7), finish interrupted bounces (DSN-12), drop
        what is done; files the schedule snapshot vouches for unread (issue 23). ``settle``,
        ``since`` (the intake takes mail meanwhile): see ``recovery.recover``."""
        corrupt, hinted, read = recovery.recover(self, settle, since)
        queued = len(self.timetable)
        log.info("recovery: %d message(s) queued, %d corrupt moved aside; %d from the schedule "
                 "snapshot, %d file(s) read", queued, corrupt, hinted, read)
        return queued

    async def first_look(self, queue_id: str) -> bool:
        """Validate a message scheduled unread before its file is used or changed
        (``recovery.first_look``); False: it is gone."""
        return queue_id not in self.unverified or await recovery.first_look(self, queue_id)

    async def save_schedule(self) -> int:
        """Write the schedule snapshot (``recovery.save_schedule``): its entry count."""
        return await recovery.save_schedule(self)

    def unsaved(self, queue_id: str) -> bool:
        """Does ``queue_id`` have outcomes the disk refused (newer in memory than its file)?"""
        return queue_id in self._unsaved

    # --- the loop ---
    async def run(self) -> None:
        """Deliver due messages until ``stop()``."""
        while not self._stopping:
            now = self.clock()
            while len(self._inflight) < self._max_inflight:
                queue_id = self.timetable.pop_due(now, self._inflight)
                if queue_id is None:
                    break
                force = self.timetable.forced(queue_id)
                task = asyncio.create_task(self._process(queue_id, force),
                                           name=f"deliver-{queue_id}")
                self._inflight[queue_id] = task
                task.add_done_callback(functools.partial(self._done, queue_id))
            self._wake.clear()
            timeout = POLL_SECONDS
            first = self.timetable.first()
            if first is not None and len(self._inflight) < self._max_inflight:
                timeout = min(timeout, max(0.0, first - self.clock()))
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: no task per wake (issue 23)
                async with asyncio.timeout(max(timeout, 0.005)):
                    await self._wake.wait()

    async def run_once(self) -> int:
        """Deliver every message due now and wait for them (one scheduling pass; tests, tools)."""
        now = self.clock()
        due = []
        while (queue_id := self.timetable.pop_due(now, self._inflight)) is not None:
            due.append(queue_id)
        forced = {q for q in due if self.timetable.forced(q)}
        await asyncio.gather(*(self._process(q, q in forced) for q in due))
        return len(due)

    def _done(self, queue_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(queue_id, None)
        self.after_attempt.pop(queue_id, None)  # not run: the attempt was cancelled
        self.timetable.done(queue_id)
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Stop scheduling; let in-flight deliveries finish within ``timeout``, then cancel them.

        A cancelled delivery has persisted nothing for its recipients, so they stay
        pending and are retried after the restart (DUR-8: defer cleanly).
        """
        self._stopping = True
        self._wake.set()
        tasks = list(self._inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
                log.info("shutdown: %d delivery(ies) interrupted, left queued", len(pending))

    # --- one message ---
    async def _process(self, queue_id: str, force: bool) -> None:
        retry_in = self.settings.retry_min_seconds
        try:
            async with self.memory.holding(self.spool.size_of(queue_id)):
                await self._attempt(queue_id, force)
        except asyncio.CancelledError:
            raise
        except OSError as exc:  # the disk failed recording (ENOSPC, EIO): one line, no traceback
            log.error("%s: cannot record the attempt: %s; keeping the message, retrying in %ds",
                      queue_id, exc.strerror or exc, retry_in)
            self._schedule(queue_id, self.clock() + retry_in)
        except Exception:  # a bug: keep the message, try again later, say where
            log.exception("%s: delivery attempt failed; retrying in %ds", queue_id, retry_in)
            self._schedule(queue_id, self.clock() + retry_in)
        action = self.after_attempt.pop(queue_id, None)
        if action is not None:  # an operator's delete, hold or bounce that waited for the attempt
            try:
                await action()
            except Exception:
                log.exception("%s: operator action after the attempt failed", queue_id)

    async def _attempt(self, queue_id: str, force: bool) -> None:
        """Deliver what is due of ``queue_id`` (every pending recipient when ``force``d)."""
        if not await self.first_look(queue_id):
            return
        try:
            meta, message = await self.spool.aload(queue_id)
        except FileNotFoundError:
            log.info("%s: removed from the queue", queue_id)
            self._unsaved.pop(queue_id, None)
            return
        except CorruptFile as exc:
            self.spool.quarantine(queue_id, str(exc))
            return
        unsaved = self._unsaved.get(queue_id)
        if unsaved is not None:  # outcomes the disk could not record: delivered stays so (DUR-6)
            meta.recipients, meta.bounces = unsaved.recipients, unsaved.bounces
        if meta.held:  # never tried; due only when it expires (issue 15 B)
            await self._expire_held(meta, message)
            return
        now = self.clock()
        due, expired = self._unsuspended(meta, due_recipients(meta.pending, now, force), now)
        if expired:  # suspended until past their expiry: bounced, never tried
            await self._settle(meta, message, expired)
            return
        if not due:
            if unsaved is not None:  # nothing to send, only the state to write (or file to remove)
                await self._apply(meta, message, [])
                self._unsaved.pop(queue_id, None)
            self.add(meta)
            return
        await self._settle(meta, message, await self.dispatcher.deliver(meta, message, due))

    def _unsuspended(self, meta: MessageMeta, due: list[RecipientState],
                     now: float) -> tuple[list[RecipientState], list[RecipientResult]]:
        """``due`` without the recipients at suspended domains (not tried, no attempt counted),
        and a deferral for each suspended recipient whose message has expired: it settles as
        expired and is bounced."""
        if not self.suspensions.any():
            return due, []
        held_back = {d for d in {domain_of(r.address) for r in meta.pending}
                     if self.dispatcher.suspended(d, now) is not None}
        if not held_back:
            return due, []
        expired: list[RecipientResult] = []
        if now - meta.arrival >= self.timing.lifetime(meta.sender):
            expired = [RecipientResult(r.address, Disposition.DEFERRED, "4.4.7",
                                       f"451 4.4.7 delivery to {domain_of(r.address)} "
                                       f"suspended (mxroute queue suspend)")
                       for r in meta.pending if domain_of(r.address) in held_back]
        return [r for r in due if domain_of(r.address) not in held_back], expired

    async def _expire_held(self, meta: MessageMeta, message: bytes) -> None:
        """A held message at its expiry: bounced, as it would be after its last retry."""
        age = self.clock() - meta.arrival
        if age < self.timing.lifetime(meta.sender):
            self.add(meta)  # not yet (a flush or a stale wake-up): due again at its expiry
            return
        reason = (f"expired after {age / 86400:.1f} days in the queue, on hold "
                  f"(mxroute queue hold)")
        for rcpt in meta.pending:
            _log_decision(meta, rcpt, f"delay={age:.0f}, status=expired ({reason})")
        await self.discard(meta, message, "4.4.7", reason)

    async def discard(self, meta: MessageMeta, message: bytes, status: str, reason: str) -> None:
        """Bounce every pending recipient of ``meta`` with ``reason`` (a DSN to the sender, as
        after a failure), then remove the message: expiry on hold, ``mxroute queue bounce``."""
        await self.notices.bounce(meta, message, failures(meta, status, reason))
        self.held.discard(meta.queue_id)
        self.timetable.drop(meta.queue_id)
        await self.spool.remove(meta.queue_id)

    async def _settle(
        self, meta: MessageMeta, message: bytes, results: list[RecipientResult],
    ) -> None:
        """Apply and record the attempt's ``results``; keep in memory what the disk refused."""
        queue_id = meta.queue_id
        try:
            await self._apply(meta, message, results)
        except FileNotFoundError:
            log.info("%s: deleted while being delivered", queue_id)
            self._unsaved.pop(queue_id, None)
            return
        except MxrouteError as exc:  # the DSN could not be spooled: nothing marked, retried later
            log.error("%s: cannot enqueue the bounce: %s; retrying later", queue_id, exc.message)
            self._unsaved[queue_id] = meta
            self._schedule(queue_id, self.clock() + self.settings.retry_min_seconds)
            return
        except OSError:  # e.g. ENOSPC appending the state (DUR-4): kept, so no re-delivery on retry
            self._unsaved[queue_id] = meta
            raise
        self._unsaved.pop(queue_id, None)
        if not meta.done:
            self.add(meta)

    async def _route(self, domain: str, sender: str) -> Route:
        """The route for ``domain`` from ``sender``: ``route()``'s, or the plan cache's."""
        policy, settings = self.policy, self.settings

        def ask() -> Awaitable[Route]:
            return self.route_fn(self.resolver, domain, policy, self.rng, settings, sender)

        key = plan_key(domain, sender, settings.routes)
        return await (ask() if self.plans is None else self.plans.plan(key, policy, ask))

    async def _apply(
        self, meta: MessageMeta, message: bytes, results: list[RecipientResult],
    ) -> None:
        """Record one attempt's results; notify what failed, expired or asked; persist (DUR-6)."""
        now = self.clock()
        by_address = {r.address: r for r in meta.pending}
        failed: list[Item] = []
        delayed: list[Item] = []
        relayed: list[Item] = []  # DSN-9
        for result in results:
            rcpt = by_address.get(result.recipient)
            if rcpt is None:
                continue
            _record(rcpt, result)
            decision = settle(rcpt, result, sender=meta.sender, arrival=meta.arrival, now=now,
                              timing=self.timing, rng=self.rng)
            self._follow(meta, rcpt, decision)
            if decision.failed:
                failed.append((rcpt, result))
            elif decision.warn:
                delayed.append((rcpt, result))
            elif decision.relayed:
                relayed.append((rcpt, result))
        if failed:
            await self.notices.bounce(meta, message, failed)
        if delayed:
            await self.notices.warn(meta, message, delayed)
        if relayed:
            await self.notices.relayed(meta, message, relayed)
        if meta.done:
            await self.spool.remove(meta.queue_id)
            log.info("%s: removed", meta.queue_id)
        else:
            await self.spool.update(meta)

    def _follow(self, meta: MessageMeta, rcpt: RecipientState, decision: Settlement) -> None:
        """Write ``decision`` into the recipient's state (a bounce is marked once notified)."""
        rcpt.why = decision.why
        if decision.next is Next.DELIVERED:
            rcpt.state = DELIVERED
            self.stats["delivered"] += 1
        elif decision.next is Next.EXPIRED:
            age = f"{decision.age:.0f}"
            _log_decision(meta, rcpt, f"delay={age}, attempts={rcpt.attempts}, status=expired "
                                      f"(gave up after {age}s in the queue; last: {rcpt.reply})")
        elif decision.next is Next.RETRY:
            rcpt.next_try = decision.next_try
            self.stats["deferred"] += 1
            _log_decision(meta, rcpt, f"attempts={rcpt.attempts}, "
                                      f"next_try=+{decision.wait:.0f}s (retry scheduled)")


def _record(rcpt: RecipientState, result: RecipientResult) -> None:
    """Count the attempt and keep its reply, made safe (SEC-6), per host when a host said it."""
    rcpt.attempts += 1
    rcpt.status, rcpt.reply = result.status, safe_text(result.reply, LISTING)
    rcpt.remote_reply = bool(result.remote_mta and result.remote_reply)  # DSN-6
    if rcpt.remote_reply:  # hosts keeps what each host replied, never our reasons about it
        rcpt.hosts[safe_text(result.remote_mta or "", 200)] = rcpt.reply



def oldest_waiting(queue: QueueManager) -> float | None:
    """When the oldest message waiting for delivery in ``queue`` (scheduled or in flight; held
    ones aside) arrived, from its queue ID (the metrics' queue age, issue 20), or None."""
    waiting = (queue.timetable.ids() | queue._inflight.keys()) - queue.held
    return queue_id_time(min(waiting)) if waiting else None


def _log_decision(meta: MessageMeta, rcpt: RecipientState, decision: str) -> None:
    """The queue's decision after an attempt: a retry scheduled, or expiry (RTY-3).

    The courier logs the attempt itself (relay, reply, status=sent|deferred|bounced), one
    line per recipient; this line adds what only the queue knows, never a second attempt line.
    """
    log.info("%s: to=<%s>, %s", meta.queue_id, safe_text(rcpt.address, LISTING), decision)


__all__ = ["QueueManager", "RouteFn", "oldest_waiting", "timing_of"]
