"""The queue manager: when to try which recipients, and what to do with the outcome.

It owns the schedule, retries, expiry and bounces, and knows nothing of DNS or
SMTP beyond calling ``route()`` and the courier (the chasquid split). The spool
is the truth: every decision is persisted before it is acted on or forgotten.

RFC 5321 §4.5.4.1 (retry strategy), §6.1 (never lose, bounce to the reverse-path,
never bounce a bounce), RFC 3461/3464 (DSN), checklist RTY-1..5, DSN-1..3/7/8/10/12, DUR-6/7.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mxroute.address import parse_address
from mxroute.dns.resolver import Resolver
from mxroute.errors import MxrouteError
from mxroute.relay import dsn
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.relay.spool.format import (
    BOUNCED,
    DELIVERED,
    PENDING,
    CorruptFile,
    MessageMeta,
    RecipientState,
)
from mxroute.relay.spool.store import Spool
from mxroute.routing.plan import Plan
from mxroute.routing.route import policy_from_settings, route
from mxroute.settings import Settings
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)

PLAN_CACHE_SECONDS = 1.0  # a deliverable plan without a shuffle is reused this long (never past an MX TTL)
JITTER = 0.25  # the fraction of a delay drawn at random, so retries of many messages spread out
POLL_SECONDS = 1.0  # how often the spool is checked for `mxroute queue flush`


class CourierLike(Protocol):
    """What the queue needs of a courier (``mxroute.relay.courier.courier.Courier``; tests script their own)."""

    async def deliver(
        self, plan: Plan, envelope: Envelope, recipients: list[Recipient], message: bytes, *, queue_id: str | None = None
    ) -> list[RecipientResult]: ...

    def forget_unreachable(self) -> None: ...

    async def close(self) -> None: ...


RouteFn = Callable[[Resolver, str, Any, random.Random], Awaitable[Plan]]


def retry_delay(attempts: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed try (RTY-2).

    Exponential: ``minimum * 2**(attempts-1)``, capped at ``maximum``; the top
    ``JITTER`` part of it is random. Never below ``minimum`` nor above ``maximum``
    (RFC 5321 §4.5.4.1: a configurable interval, backing off).
    """
    if attempts < 1:
        return minimum
    base = min(maximum, minimum * 2.0 ** min(attempts - 1, 64))
    delay = base * (1.0 - JITTER * rng.random())
    return max(minimum, min(maximum, delay))


class QueueManager:
    """Schedules due messages, delivers them domain by domain, persists every outcome."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        resolver: Resolver,
        courier: CourierLike,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        route_fn: RouteFn = route,
        dsn_builder: Callable[..., bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.resolver = resolver
        self.courier = courier
        self.clock = clock
        self.rng = rng or random.Random()
        self.route_fn = route_fn
        self.policy = policy_from_settings(settings)
        self._dsn_builder = dsn_builder
        self._due: dict[str, float] = {}  # queue id -> when it is next due (the heap may hold stale entries)
        self._heap: list[tuple[float, str]] = []
        self._forced: set[str] = set()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, float] = {}  # came due while being delivered
        self._unsaved: dict[str, MessageMeta] = {}  # state the disk refused to take (DUR-4): newer than the file
        self._wake = asyncio.Event()
        self._stopping = False
        self._global = asyncio.Semaphore(settings.delivery_concurrency)
        self._per_dest: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.settings.destination_concurrency)
        )
        self._dest_users: defaultdict[str, int] = defaultdict(int)
        self._plans: dict[str, tuple[float, Any, Plan]] = {}  # domain -> (expiry, policy, plan)
        self._max_inflight = settings.delivery_concurrency * 4
        self.stats = {"delivered": 0, "deferred": 0, "bounced": 0, "dsn": 0}

    def reconfigure(self, settings: Settings) -> None:
        """Apply reloaded settings (SIGHUP): retry, lifetime and routing from the next decision on.

        A changed ``delivery_concurrency`` applies to deliveries that start from now on (those in
        flight finish under the old limit); ``destination_concurrency`` to destinations not busy now.
        """
        if settings.delivery_concurrency != self.settings.delivery_concurrency:
            self._global = asyncio.Semaphore(settings.delivery_concurrency)
            self._max_inflight = settings.delivery_concurrency * 4
        self.settings = settings
        self.policy = policy_from_settings(settings)
        self._wake.set()

    def sizes(self) -> dict[str, int]:
        """Messages by state, for STATUS= and metrics: active (being delivered), due (waiting for a
        delivery slot) and deferred (waiting for their retry time). O(queued): call it seldom."""
        now = self.clock()
        due = sum(1 for when in self._due.values() if when <= now)
        return {"active": len(self._inflight), "due": due, "deferred": len(self._due) - due}

    # --- feeding the schedule ---
    def add(self, meta: MessageMeta) -> None:
        """A message now in the spool (from intake, a DSN, or recovery)."""
        due = meta.next_due()
        if due is not None:
            self._schedule(meta.queue_id, due)

    def add_id(self, queue_id: str) -> None:
        """A message now in the spool, known by its ID only (from the intake process): due now.

        The attempt reads the file; what is not due yet is rescheduled from its recorded state.
        """
        self._schedule(queue_id, self.clock())

    def unknown(self, ids: list[str]) -> list[str]:
        """Those of the spooled ``ids`` this queue does not know (their notice from intake was lost, or is on its way)."""
        return [q for q in ids if q not in self._due and q not in self._inflight and q not in self._again]

    def rescan(self, ids: list[str]) -> int:
        """Schedule the spooled messages this queue does not know (their notice from intake was lost)."""
        missed = self.unknown(ids)
        for queue_id in missed:
            self.add_id(queue_id)
        return len(missed)

    def _schedule(self, queue_id: str, due: float) -> None:
        current = self._due.get(queue_id)
        if current is None or due < current:
            self._due[queue_id] = due
            heapq.heappush(self._heap, (due, queue_id))
        self._wake.set()

    def flush(self) -> None:
        """Make every queued message due now (``mxroute queue flush``), every host worth a try."""
        self.courier.forget_unreachable()
        for queue_id in self.spool.ids():
            self._forced.add(queue_id)
            self._due.pop(queue_id, None)
            self._schedule(queue_id, 0.0)

    def _pop_due(self, now: float) -> str | None:
        """The next message due by ``now`` that is not being delivered already, or None."""
        while self._heap and self._heap[0][0] <= now:
            due, queue_id = heapq.heappop(self._heap)
            if self._due.get(queue_id) != due:
                continue  # stale: rescheduled since
            if queue_id in self._inflight:  # comes back when that delivery is done
                self._due.pop(queue_id)
                self._again[queue_id] = due
                continue
            del self._due[queue_id]
            return queue_id
        return None

    def recover(self) -> int:
        """Start-up scan: schedule everything (DUR-7), finish interrupted bounces (DSN-12), drop what is done.

        One message at a time: only the schedule (ID and due time) stays in memory. A
        bounce's original is read again for the fix-up (bounces in flight at a crash are few).
        """
        corrupt: list[str] = []
        origins: list[tuple[str, dict[str, Any]]] = []  # (DSN id, its bounce_of)
        finished: list[str] = []
        for meta in self.spool.recover_iter(corrupt):
            if meta.bounce_of and meta.bounce_of.get("queue_id"):
                origins.append((meta.queue_id, meta.bounce_of))
            if meta.done:
                finished.append(meta.queue_id)
            else:
                self.add(meta)
        for dsn_id, origin in origins:
            try:
                original = self.spool.load_meta(str(origin["queue_id"]))
            except (FileNotFoundError, CorruptFile, MxrouteError):
                continue
            if original.bounces > int(origin.get("batch", 0)):
                continue  # already marked
            self._mark_bounced(original, set(origin.get("recipients", [])), int(origin.get("batch", 0)) + 1)
            if original.done:
                self.spool.remove_sync(original.queue_id)
                self._due.pop(original.queue_id, None)  # its heap entry is now stale
            else:
                self.spool.update_sync(original)
            log.info("%s: recovered an interrupted bounce (%s)", original.queue_id, dsn_id)
        for queue_id in finished:
            self.spool.remove_sync(queue_id)
        log.info("recovery: %d message(s) queued, %d corrupt moved aside", len(self._due), len(corrupt))
        return len(self._due)

    # --- the loop ---
    async def run(self) -> None:
        """Deliver due messages until ``stop()``."""
        next_poll = 0.0
        while not self._stopping:
            now = self.clock()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                await self._poll_flush()
            while len(self._inflight) < self._max_inflight:
                queue_id = self._pop_due(now)
                if queue_id is None:
                    break
                force = queue_id in self._forced
                self._forced.discard(queue_id)
                task = asyncio.create_task(self._process(queue_id, force), name=f"deliver-{queue_id}")
                self._inflight[queue_id] = task
                task.add_done_callback(functools.partial(self._done, queue_id))
            self._wake.clear()
            timeout = POLL_SECONDS
            if self._heap and len(self._inflight) < self._max_inflight:
                timeout = min(timeout, max(0.0, self._heap[0][0] - self.clock()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.005))
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Deliver every message due now and wait for them (a single scheduling pass; tests, tools)."""
        now = self.clock()
        due = []
        while (queue_id := self._pop_due(now)) is not None:
            due.append(queue_id)
        forced = {q for q in due if q in self._forced}
        self._forced -= forced
        await asyncio.gather(*(self._process(q, q in forced) for q in due))
        return len(due)

    def _done(self, queue_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(queue_id, None)
        again = self._again.pop(queue_id, None)
        if again is not None:
            self._schedule(queue_id, again)
        self._wake.set()

    async def _poll_flush(self) -> None:
        if self.spool.flush_requested_at() is None:
            return
        try:
            self.spool.flush_marker.unlink()
        except FileNotFoundError:
            pass
        log.info("flush requested: all deferred mail is due now")
        self.flush()

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
        try:
            await self._attempt(queue_id, force)
        except asyncio.CancelledError:
            raise
        except OSError as exc:  # the disk failed while recording (ENOSPC, EIO): one line, not a traceback
            log.error("%s: cannot record the attempt: %s; keeping the message, retrying in %ds",
                      queue_id, exc.strerror or exc, self.settings.retry_min_seconds)
            self._schedule(queue_id, self.clock() + self.settings.retry_min_seconds)
        except Exception:  # a bug: keep the message, try again later, say where
            log.exception("%s: delivery attempt failed; retrying in %ds", queue_id, self.settings.retry_min_seconds)
            self._schedule(queue_id, self.clock() + self.settings.retry_min_seconds)

    async def _attempt(self, queue_id: str, force: bool) -> None:
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
        if unsaved is not None:  # outcomes the disk could not record: delivered stays delivered (DUR-6)
            meta.recipients, meta.bounces = unsaved.recipients, unsaved.bounces
        now = self.clock()
        due = [r for r in meta.pending if force or r.next_try <= now]
        if not due:
            if unsaved is not None:  # nothing to send, only the state to write (or the file to remove)
                await self._apply(meta, message, [])
                self._unsaved.pop(queue_id, None)
            self.add(meta)
            return
        groups: dict[str, list[RecipientState]] = defaultdict(list)
        for rcpt in due:
            groups[_domain(rcpt.address)].append(rcpt)
        envelope = meta.envelope()
        if len(groups) == 1:  # the common case: no gather (a task per group) needed
            [(domain, rcpts)] = groups.items()
            batches = [await self._deliver_group(meta, envelope, message, domain, rcpts)]
        else:
            batches = await asyncio.gather(
                *(self._deliver_group(meta, envelope, message, domain, rcpts) for domain, rcpts in groups.items())
            )
        try:
            await self._apply(meta, message, [r for batch in batches for r in batch])
        except FileNotFoundError:
            log.info("%s: deleted while being delivered", queue_id)
            self._unsaved.pop(queue_id, None)
            return
        except MxrouteError as exc:  # the DSN could not be spooled: nothing marked, retried later
            log.error("%s: cannot enqueue the bounce: %s; retrying later", queue_id, exc.message)
            self._unsaved[queue_id] = meta
            self._schedule(queue_id, self.clock() + self.settings.retry_min_seconds)
            return
        except OSError:  # e.g. ENOSPC appending the state (DUR-4): remembered, so no re-delivery on the retry
            self._unsaved[queue_id] = meta
            raise
        self._unsaved.pop(queue_id, None)
        if not meta.done:
            self.add(meta)

    async def _deliver_group(
        self, meta: MessageMeta, envelope: Envelope, message: bytes, domain: str, rcpts: list[RecipientState]
    ) -> list[RecipientResult]:
        """One SMTP transaction's worth: every due recipient of ``domain`` (RFC 5321 §4.5.4.1 SHOULD)."""
        recipients = [r.recipient() for r in rcpts]
        self._dest_users[domain] += 1
        try:
            async with self._global, self._per_dest[domain]:
                return await self._deliver_locked(meta, envelope, message, domain, rcpts, recipients)
        finally:
            self._dest_users[domain] -= 1
            if not self._dest_users[domain]:  # forget idle destinations (bounded memory)
                del self._dest_users[domain], self._per_dest[domain]

    async def _deliver_locked(
        self, meta: MessageMeta, envelope: Envelope, message: bytes, domain: str,
        rcpts: list[RecipientState], recipients: list[Recipient],
    ) -> list[RecipientResult]:
        try:
            plan = await self._route(domain)
            results = await self.courier.deliver(plan, envelope, recipients, message, queue_id=meta.queue_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never crash the worker (SEC-12); the recipients stay queued
            log.exception("%s: delivery to %s failed internally", meta.queue_id, domain)
            reason = f"451 4.3.0 internal error: {type(exc).__name__}"
            return [RecipientResult(r.address, Disposition.DEFERRED, "4.3.0", reason) for r in rcpts]
        seen = {r.recipient for r in results}
        for rcpt in rcpts:  # a courier that forgot a recipient must not make it vanish
            if rcpt.address not in seen:
                results.append(RecipientResult(rcpt.address, Disposition.DEFERRED, "4.3.0", "451 4.3.0 no result"))
        return results

    async def _route(self, domain: str) -> Plan:
        """``route()`` for ``domain``, reused for up to ``PLAN_CACHE_SECONDS`` when that changes nothing.

        Only a deliverable plan whose order involved no shuffle of equal preferences (MX-3
        shuffles on every attempt) is reused, never longer than its MX records' TTL; a
        temporary or permanent verdict is asked again each time (MX-18).
        """
        now = time.monotonic()
        hit = self._plans.get(domain)
        if hit is not None and hit[0] > now and hit[1] is self.policy:
            return hit[2]
        plan = await self.route_fn(self.resolver, domain, self.policy, self.rng)
        if self.route_fn is route and plan.deliverable and not any(d.rule == "MX-3" for d in plan.decisions):
            lifetime = min([PLAN_CACHE_SECONDS, *(float(r.ttl) for r in plan.mx)])
            if lifetime > 0:
                if len(self._plans) >= 10000:
                    self._plans.clear()
                self._plans[domain] = (now + lifetime, self.policy, plan)
        return plan

    async def _apply(self, meta: MessageMeta, message: bytes, results: list[RecipientResult]) -> None:
        """Record one attempt's results; bounce what failed or expired; persist (DUR-6)."""
        now = self.clock()
        by_address = {r.address: r for r in meta.pending}
        failed: list[tuple[RecipientState, RecipientResult]] = []
        delayed: list[tuple[RecipientState, RecipientResult]] = []
        relayed: list[tuple[RecipientState, RecipientResult]] = []  # DSN-9
        lifetime = self.settings.bounce_lifetime_seconds if not meta.sender else self.settings.queue_lifetime_seconds
        for result in results:
            rcpt = by_address.get(result.recipient)
            if rcpt is None:
                continue
            rcpt.attempts += 1
            rcpt.status, rcpt.reply = result.status, safe_text(result.reply, LISTING)
            rcpt.remote_reply = bool(result.remote_mta and result.remote_reply)  # DSN-6
            if rcpt.remote_reply:  # hosts keeps what each host replied, never our reasons about it
                rcpt.hosts[safe_text(result.remote_mta or "", 200)] = rcpt.reply
            delay = now - meta.arrival
            if result.disposition is Disposition.DELIVERED:
                rcpt.state, rcpt.why = DELIVERED, None
                self.stats["delivered"] += 1
                if not result.next_hop_dsn and rcpt.recipient().wants("SUCCESS"):
                    relayed.append((rcpt, result))
            elif result.disposition is Disposition.BOUNCED:
                rcpt.why = "permanent failure"
                failed.append((rcpt, result))
            elif delay >= lifetime:  # RTY-3: give up with the last transient reason
                rcpt.why = f"expired after {delay / 86400:.1f} days in the queue"
                failed.append((rcpt, result))
                _log_decision(meta, rcpt, f"delay={delay:.0f}, attempts={rcpt.attempts}, status=expired "
                                          f"(gave up after {delay:.0f}s in the queue; last: {rcpt.reply})")
            else:
                wait = retry_delay(rcpt.attempts, self.settings.retry_min_seconds, self.settings.retry_max_seconds, self.rng)
                rcpt.next_try = now + wait
                rcpt.why = f"deferred ({rcpt.reply}); attempt {rcpt.attempts + 1} in {wait:.0f}s"
                self.stats["deferred"] += 1
                _log_decision(meta, rcpt, f"attempts={rcpt.attempts}, next_try=+{wait:.0f}s (retry scheduled)")
                if self._warn_due(meta, rcpt, now):
                    delayed.append((rcpt, result))
        if failed:
            await self._bounce(meta, message, failed)
        if delayed:
            await self._warn(meta, message, delayed)
        if relayed:
            await self._relayed(meta, message, relayed)
        if meta.done:
            await self.spool.remove(meta.queue_id)
            log.info("%s: removed", meta.queue_id)
        else:
            await self.spool.update(meta)

    # --- bounces (RFC 3464) ---
    def _build(self, **kwargs: Any) -> bytes:
        if self._dsn_builder is not None:
            return self._dsn_builder(**kwargs)
        return dsn.build_dsn(**kwargs)

    async def _bounce(self, meta: MessageMeta, message: bytes, failed: list[tuple[RecipientState, RecipientResult]]) -> None:
        """One DSN for everything that failed in this attempt (DSN-7), enqueued before marking (DSN-12)."""
        batch = meta.bounces
        addresses = {r.address for r, _ in failed}
        wanted = [(r, res) for r, res in failed if r.recipient().wants("FAILURE")]
        to = dsn.dsn_recipient(meta.sender)
        if to is None:  # DSN-3: never bounce a bounce
            log.info("%s: from=<>, failed recipient(s) %s: no bounce for a bounce, discarded",
                     meta.queue_id, ", ".join(f"<{safe_text(a, LISTING)}>" for a in sorted(addresses)))
        elif not wanted:  # DSN-8: NOTIFY=NEVER (or without FAILURE)
            log.info("%s: no DSN requested (NOTIFY) for %d failed recipient(s)", meta.queue_id, len(failed))
        else:
            await self._enqueue_dsn(meta, message, wanted, to, "failed", batch, addresses)
        self._mark_bounced(meta, addresses, batch + 1)
        self.stats["bounced"] += len(failed)

    def _mark_bounced(self, meta: MessageMeta, addresses: set[str], bounces: int) -> None:
        for rcpt in meta.recipients:
            if rcpt.address in addresses and rcpt.state == PENDING:
                rcpt.state = BOUNCED
        meta.bounces = max(meta.bounces, bounces)

    async def _enqueue_dsn(
        self, meta: MessageMeta, message: bytes, items: list[tuple[RecipientState, RecipientResult]],
        to: str, action: str, batch: int, marks: set[str],
    ) -> str:
        dsn_id = f"{meta.queue_id}B{batch}"
        if self.spool.exists(dsn_id):  # enqueued before a crash: notified once only (DSN-12)
            return dsn_id
        until = meta.arrival + self.settings.queue_lifetime_seconds if action == "delayed" else None
        body = self._build(
            reporting_mta=self.settings.helo_name, envelope=meta.envelope(), message=message,
            results=[res for _, res in items], action=action, arrival=meta.arrival,
            recipients=[r.recipient() for r, _ in items], will_retry_until=until,
        )
        notice = MessageMeta(
            queue_id=dsn_id, sender="", arrival=self.clock(), size=len(body), client="local",
            recipients=[RecipientState(address=to, notify=("NEVER",))],
            bounce_of={"queue_id": meta.queue_id, "batch": batch, "recipients": sorted(marks), "action": action},
        )
        await self.spool.store(notice, body)
        self.stats["dsn"] += 1
        kind = {"failed": "non-delivery", "delayed": "delay"}.get(action, "delivery status")  # DSN-9: relayed
        log.info("%s: sender %s notification: %s", meta.queue_id, kind, dsn_id)  # as Postfix's bounce(8)
        self.add(notice)
        return dsn_id

    def _warn_due(self, meta: MessageMeta, rcpt: RecipientState, now: float) -> bool:
        """DSN-10: one delay warning per recipient, when configured, requested and not for a bounce."""
        after = self.settings.delay_warning_seconds
        return bool(after and meta.sender and not rcpt.warned and now - meta.arrival >= after
                    and rcpt.recipient().wants("DELAY"))

    async def _warn(self, meta: MessageMeta, message: bytes, delayed: list[tuple[RecipientState, RecipientResult]]) -> None:
        to = dsn.dsn_recipient(meta.sender)
        if to is None:
            return
        await self._enqueue_dsn(meta, message, delayed, to, "delayed", meta.bounces, set())
        meta.bounces += 1
        for rcpt, _ in delayed:
            rcpt.warned = True

    async def _relayed(
        self, meta: MessageMeta, message: bytes, items: list[tuple[RecipientState, RecipientResult]],
    ) -> None:
        """DSN-9: NOTIFY=SUCCESS, handed to a hop without DSN → one ``relayed`` DSN (RFC 3461 §5.2.3).

        A DSN-capable hop got NOTIFY/ORCPT and is responsible instead (§5.2.2): no local notice.
        Enqueued before the recipients are recorded as delivered (DSN-12).
        """
        to = dsn.dsn_recipient(meta.sender)
        if to is None:  # DSN-3: nothing about a bounce
            return
        await self._enqueue_dsn(meta, message, items, to, "relayed", meta.bounces, set())
        meta.bounces += 1


def _domain(address: str) -> str:
    try:
        return parse_address(address).domain
    except MxrouteError:
        return address.rpartition("@")[2].lower()


def _log_decision(meta: MessageMeta, rcpt: RecipientState, decision: str) -> None:
    """The queue's decision after an attempt: a retry scheduled, or expiry (RTY-3).

    The courier logs the attempt itself (relay, reply, status=sent|deferred|bounced), one
    line per recipient; this line adds what only the queue knows, never a second attempt line.
    """
    log.info("%s: to=<%s>, %s", meta.queue_id, safe_text(rcpt.address, LISTING), decision)


__all__ = ["QueueManager", "retry_delay"]
