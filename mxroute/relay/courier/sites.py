"""The courier at a destination site (issue 18 §2): what the site's health (``health``) allows
before a delivery walks its plan, and what it learns afterwards.

Before: a suspended site's recipients are deferred untried (a dead site's with its hosts' own
last words); a throttled site's delivery waits its turn (at most ``health.MAX_WAIT``, else it is
deferred); the preferred address family goes first. After: the walk's sessions per family and
the replies heard feed dead-site detection, family health and the reply patterns. Each change
is logged once (``hosts.site_event``) and counted (``stats``, and ``numbers`` per site).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mxroute.relay.courier import hosts
from mxroute.relay.courier.attempt import Attempt
from mxroute.relay.courier.health import EVENT_KINDS, Event, SiteHealth, SiteNumbers
from mxroute.relay.courier.patterns import configured
from mxroute.relay.envelope import Recipient
from mxroute.routing.plan import Plan
from mxroute.routing.shaping import site_of
from mxroute.settings import Settings


class Sites:
    """The courier's sites: ``health`` (shared with ``Hosts``: ``queue hosts`` shows it),
    ``numbers`` for the metrics, the courier's ``stats`` counted in."""

    def __init__(self, health: SiteHealth, stats: dict[str, int], settings: Settings,
                 clock: Callable[[], float]) -> None:
        self.health, self.stats, self.clock = health, stats, clock
        self.numbers = SiteNumbers()
        # issue 19: told of each change learnt here (the fleet publishes holds)
        self.on_event: Callable[[Event], None] | None = None
        stats["throttled_waits"] = 0  # deliveries that waited for a throttled site's turn
        stats.update((f"site_{kind.replace('-', '_')}", 0) for kind in EVENT_KINDS)
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """The patterns, the cohort and the periods from ``settings`` (start, reload)."""
        self.health.configure(configured(settings.reply_patterns), settings.dead_site_cohort,
                              settings.retry_min_seconds, settings.family_hold_seconds)

    async def walk(self, plan: Plan, attempt: Attempt, valid: list[Recipient],
                   walk: Callable[[Plan], Awaitable[None]]) -> None:
        """``walk`` ``plan`` (the courier's walk for ``valid``) as its site's health allows,
        then learn from what it met."""
        health, site = self.health, site_of(plan)
        now = self.clock()
        self._note(health.lift(now, site), site)
        held = health.suspended(site, now)
        wait = health.turn(site, now) if held is None else None
        if held is not None or wait is None:
            if held is not None and held.last is not None:  # a dead site: its hosts' words
                target, status, said = held.last
                attempt.soft(valid, status, f"{said} (site {site} skipped until its retry time: "
                             f"{held.reason})", target, remote=False)
            else:
                why = (f"suspended for {held.until - now:.0f}s more: {held.reason}" if held
                       else "throttled: no turn within the next minute")
                attempt.soft(valid, "4.7.0", f"451 4.7.0 site {site} {why}", None, remote=False)
            for rcpt in valid:
                attempt.results[rcpt.address] = attempt.deferred(rcpt)
            self._count(site, attempt, valid)
            return
        if wait > 0:
            self.stats["throttled_waits"] += 1
            self.numbers.add(site, "throttled_waits")
            await asyncio.sleep(wait)
            now = self.clock()
            self._note(health.lift(now, site), site)
        self.numbers.add(site, "connections")
        try:
            await walk(health.order(site, plan, now))
        finally:
            self.numbers.add(site, "connections", -1)
        self._count(site, attempt, valid)
        self._learn(site, attempt)

    def _count(self, site: str, attempt: Attempt, valid: list[Recipient]) -> None:
        """Each recipient's outcome, per site (the metrics' ``mxroute_site_recipients``)."""
        for rcpt in valid:
            result = attempt.results.get(rcpt.address)
            if result is not None:
                self.numbers.add(site, result.disposition.value)

    def _learn(self, site: str, attempt: Attempt) -> None:
        now = self.clock()
        for target, reply in attempt.heard:
            attempt.walk.reply(target.family, reply)
        events = self.health.walked(site, attempt.walk, now)
        for _, reply in attempt.heard:
            found = self.health.replied(site, reply, now)
            if found is not None:
                events.append(found)
        self._note(events, site)

    def _note(self, events: list[Event], site: str) -> None:
        """A site's health changed: logged once, counted."""
        for event in events:
            self.stats[f"site_{event.kind.replace('-', '_')}"] += 1
            if event.kind in ("suspended", "dead") and event.site == site:
                self.numbers.add(site, "suspensions")
            hosts.site_event(event.site, event.text, lifted=event.kind == "lifted")
            if self.on_event is not None:
                self.on_event(event)


__all__ = ["Sites"]
