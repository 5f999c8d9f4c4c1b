"""What delivery learns about each destination site (issue 18 §2). PURE: no I/O, a clock reading
is passed in.

Keyed by the site's name (the destination's MX host set, or a routed next hop), three things
are learnt and each is lifted on its own once its time is up:

- a **throttle** or **suspension** that a reply pattern (``patterns``) asked for;
- a **dead site** (Postfix's dead-destination detection): ``cohort`` deliveries in a row found
  every address of the site failing at connect or greeting, so the site is suspended for
  ``retry_min`` seconds instead of every queued message trying every address again;
- a **family preference** (per-family health): the site's IPv6 addresses all failed while an
  IPv4 one answered (or a 5xx blamed the IPv6 reverse DNS, Gmail's ``550 5.7.25``), so its
  IPv4 addresses go first for ``family_hold`` seconds; and the reverse.

Every change is returned as an ``Event`` once, for the caller to log and count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from mxroute.relay.courier.patterns import SHIPPED, ReplyPattern, match
from mxroute.routing.plan import Plan, Target

EVENT_KINDS = ("throttled", "suspended", "dead", "prefer-ipv4", "prefer-ipv6", "lifted")
LIMIT = 10000  # sites remembered: a bound, not a policy
MAX_WAIT = 60.0  # a throttled delivery waits at most this long for its turn, else is deferred
# a permanent reply blaming the sending address's reverse DNS (Gmail 550 5.7.25, "PTR")
_RDNS_BLAME = re.compile(r"^5\d\d[ -](5\.7\.25\b|.*\b(PTR|reverse DNS|rDNS)\b)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Event:
    """A change to a site's state, for the log and the metrics: ``kind`` is ``throttled``,
    ``suspended``, ``dead``, ``prefer-ipv4``/``prefer-ipv6`` or ``lifted``."""

    site: str
    kind: str
    text: str


@dataclass(slots=True)
class Hold:
    """A throttle (``rate`` per second) or a suspension (``rate`` None) until ``until``."""

    reason: str
    since: float
    until: float
    rate: float | None = None
    cause: str = "reply"  # "reply" (a pattern) or "dead-site"
    next_start: float = 0.0  # a throttle's next free start
    # a dead site's last failure: the address, its status and reply (what a deferral says)
    last: tuple[Target, str, str] | None = None

    def to_json(self, wall: float) -> dict[str, Any]:
        """``wall`` turns this clock's readings into Unix times (``wall - now``)."""
        return {"reason": self.reason, "cause": self.cause, "rate": self.rate,
                "since": round(self.since + wall, 3), "until": round(self.until + wall, 3)}


@dataclass(slots=True)
class Preference:
    """Prefer ``family`` (4 or 6) for this site until ``until``."""

    family: int
    reason: str
    since: float
    until: float

    def to_json(self, wall: float) -> dict[str, Any]:
        return {"family": self.family, "reason": self.reason,
                "since": round(self.since + wall, 3), "until": round(self.until + wall, 3)}


@dataclass(slots=True)
class Site:
    """What is known of one site now."""

    throttle: Hold | None = None
    suspension: Hold | None = None
    prefer: Preference | None = None
    dead_runs: int = 0  # deliveries in a row with every address failing at connect/greeting

    def idle(self) -> bool:
        return self.throttle is None and self.suspension is None and self.prefer is None \
            and not self.dead_runs


@dataclass(slots=True)
class Walk:
    """What one delivery saw at a site: per family, addresses tried, those that failed at
    connect or greeting, and sessions had; and a reply blaming a family's reverse DNS."""

    tried: dict[int, int] = field(default_factory=lambda: {4: 0, 6: 0})
    failed: dict[int, int] = field(default_factory=lambda: {4: 0, 6: 0})
    sessions: dict[int, int] = field(default_factory=lambda: {4: 0, 6: 0})
    rdns_blamed: dict[int, str] = field(default_factory=dict)
    last: tuple[Target, str, str] | None = None  # the last failure: address, status, reply

    def no_session(self, family: int, failure: tuple[Target, str, str] | None = None) -> None:
        self.tried[family] += 1
        self.failed[family] += 1
        self.last = failure or self.last

    def session(self, family: int) -> None:
        self.tried[family] += 1
        self.sessions[family] += 1

    def reply(self, family: int, reply: str) -> None:
        """A reply on a session of ``family``: noted when it blames the reverse DNS."""
        if _RDNS_BLAME.search(" ".join(reply.split())):
            self.rdns_blamed.setdefault(family, reply)


class SiteHealth:
    """The sites' throttles, suspensions and family preferences (see the module docstring)."""

    def __init__(self, patterns: tuple[ReplyPattern, ...] = SHIPPED, cohort: int = 1,
                 retry_min: float = 300.0, family_hold: float = 3600.0) -> None:
        self.patterns = patterns
        self.cohort = cohort
        self.retry_min = retry_min
        self.family_hold = family_hold
        self.sites: dict[str, Site] = {}
        self._swept = float("-inf")  # when lift() last looked at every site

    def configure(self, patterns: tuple[ReplyPattern, ...], cohort: int, retry_min: float,
                  family_hold: float) -> None:
        """New settings (a reload); what is in force stays until its time is up."""
        self.patterns, self.cohort = patterns, cohort
        self.retry_min, self.family_hold = retry_min, family_hold

    def _site(self, name: str) -> Site:
        site = self.sites.get(name)
        if site is None:
            if len(self.sites) >= LIMIT:
                self._drop_idle()
            site = self.sites[name] = Site()
        return site

    def _drop_idle(self) -> None:
        for name in [n for n, s in self.sites.items() if s.suspension is None]:
            del self.sites[name]
            if len(self.sites) < LIMIT // 2:
                return

    # --- what delivery asks before it starts --------------------------------------------------

    def lift(self, now: float, name: str | None = None) -> list[Event]:
        """Drop what has run its time at site ``name``, and at every site once a second (each
        call stays cheap however many sites are known); an Event for each."""
        names: list[str] = [name] if name is not None and name in self.sites else []
        if now - self._swept >= 1.0 or name is None:
            self._swept = now
            names = list(self.sites)
        events: list[Event] = []
        for each in names:
            site = self.sites[each]
            for attr in ("throttle", "suspension", "prefer"):
                held = getattr(site, attr)
                if held is not None and held.until <= now:
                    setattr(site, attr, None)
                    what = f"IPv{held.family} preference" if isinstance(held, Preference) \
                        else attr
                    events.append(Event(each, "lifted", f"{what} lifted ({held.reason})"))
            if site.idle():
                del self.sites[each]
        return events

    def suspended(self, name: str, now: float) -> Hold | None:
        """The suspension in force at site ``name``, or None."""
        site = self.sites.get(name)
        held = site.suspension if site is not None else None
        return held if held is not None and held.until > now else None

    def turn(self, name: str, now: float) -> float | None:
        """Seconds to wait before starting a delivery at throttled site ``name`` (0: now; None:
        longer than ``MAX_WAIT``: defer). A turn returned is taken."""
        site = self.sites.get(name)
        held = site.throttle if site is not None else None
        if held is None or held.until <= now or held.rate is None:
            return 0.0
        start = max(now, held.next_start)
        if start >= held.until:  # the throttle is over by then: no turn to take
            return held.until - now
        if start - now > MAX_WAIT:
            return None
        held.next_start = start + 1.0 / held.rate
        return start - now

    def order(self, name: str, plan: Plan, now: float) -> Plan:
        """``plan`` with the preferred family's addresses first at each MX preference (the
        MX order kept); unchanged when site ``name`` prefers none."""
        site = self.sites.get(name)
        prefer = site.prefer if site is not None else None
        if prefer is None or prefer.until <= now:
            return plan
        return reorder(plan, prefer.family)

    def forget_dead(self) -> int:
        """Lift every dead site's suspension (``mxroute queue flush``: every host is worth a try
        again); how many. What a reply pattern asked for stays."""
        dead = [s for s in self.sites.values()
                if s.suspension is not None and s.suspension.cause == "dead-site"]
        for site in dead:
            site.suspension, site.dead_runs = None, 0
        return len(dead)

    def adopt(self, name: str, kind: str, reason: str, now: float, until: float,
              rate: float | None = None, cause: str = "reply") -> Event | None:
        """A hold another node of the fleet learnt (issue 19): site ``name``'s ``suspension``
        or ``throttle`` (``rate`` per second) until ``until``, applied as if learnt here. The
        Event when it is new (or ends later than the one in force): one already known is not
        told twice."""
        if until <= now or kind not in ("suspension", "throttle"):
            return None
        site = self._site(name)
        held = getattr(site, kind)
        if held is not None and held.until >= until - 1.0:
            return None
        hold = Hold(reason, now, until, rate if kind == "throttle" else None, cause)
        if kind == "throttle":
            if rate is None or rate <= 0:
                return None
            hold.next_start = held.next_start if held is not None else now
        setattr(site, kind, hold)
        left = until - now
        if kind == "suspension":
            return Event(name, "dead" if cause == "dead-site" else "suspended",
                         f"suspended for {left:.0f}s: {reason}")
        return Event(name, "throttled", f"throttled to {rate:g}/s for {left:.0f}s: {reason}")

    def held(self, name: str, kind: str, now: float) -> Hold | None:
        """Site ``name``'s ``suspension`` or ``throttle`` in force at ``now``, or None."""
        site = self.sites.get(name)
        hold: Hold | None = getattr(site, kind) if site is not None else None
        return hold if hold is not None and hold.until > now else None

    # --- what delivery tells afterwards --------------------------------------------------------

    def replied(self, name: str, reply: str, now: float) -> Event | None:
        """A reply from site ``name``: the Event when it newly throttles or suspends the site
        (a pattern already in force is not extended: logged once, lifted on time)."""
        pattern = match(self.patterns, reply)
        if pattern is None:
            return None
        site = self._site(name)
        line = " ".join(reply.split())[:300]
        reason = f"{pattern.name}: {line}"
        hold = Hold(reason, now, now + pattern.duration, pattern.message_rate)
        if pattern.action == "suspend":
            if site.suspension is not None and site.suspension.until > now:
                return None
            site.suspension = hold
            return Event(name, "suspended", f"suspended for {pattern.duration:g}s: {reason}")
        if site.throttle is not None and site.throttle.until > now:
            return None
        hold.next_start = now + 1.0 / (pattern.message_rate or 1.0)
        site.throttle = hold
        return Event(name, "throttled", f"{pattern.describe()}: {reason}")

    def walked(self, name: str, walk: Walk, now: float) -> list[Event]:
        """One delivery's connections at site ``name``: dead-site and family health."""
        events: list[Event] = []
        tried = walk.tried[4] + walk.tried[6]
        if not tried:
            return events
        site = self._site(name)
        if walk.failed[4] + walk.failed[6] == tried:
            site.dead_runs += 1
            if site.dead_runs >= self.cohort and site.suspension is None:
                reason = (f"every address failed at connect or greeting "
                          f"({site.dead_runs} deliveries in a row)")
                site.suspension = Hold(reason, now, now + self.retry_min, cause="dead-site",
                                       last=walk.last)
                events.append(Event(name, "dead", f"suspended for {self.retry_min:g}s: {reason}"))
        else:
            site.dead_runs = 0
            if site.suspension is not None and site.suspension.cause == "dead-site":
                site.suspension = None
        for family in (6, 4):
            other = 10 - family
            if walk.rdns_blamed.get(family):
                why = f"IPv{family} blamed: {' '.join(walk.rdns_blamed[family].split())[:200]}"
            elif walk.tried[family] and walk.failed[family] == walk.tried[family] \
                    and walk.sessions[other]:
                why = (f"every IPv{family} address failed at connect or greeting, "
                       f"IPv{other} answered")
            else:
                continue
            held = site.prefer
            if held is None or held.family != other or held.until <= now:
                site.prefer = Preference(other, why, now, now + self.family_hold)
                events.append(Event(name, f"prefer-ipv{other}",
                                    f"IPv{other} preferred for {self.family_hold:g}s: {why}"))
            break
        if site.idle():
            del self.sites[name]
        return events

    def snapshot(self, now: float, wall: float) -> dict[str, dict[str, Any]]:
        """Site name -> what is in force there (``queue hosts --json``'s ``sites``)."""
        out: dict[str, dict[str, Any]] = {}
        offset = wall - now
        for name, site in sorted(self.sites.items()):
            shown = {
                "throttle": _shown(site.throttle, now, offset),
                "suspension": _shown(site.suspension, now, offset),
                "prefer": _shown(site.prefer, now, offset),
            }
            if any(shown.values()):
                out[name] = shown
        return out


def _shown(held: Hold | Preference | None, now: float, offset: float) -> dict[str, Any] | None:
    return held.to_json(offset) if held is not None and held.until > now else None


TOP_SITES = 10  # sites named in the metrics; the others are summed as "other"
NUMBERS = ("connections", "throttled_waits", "suspensions", "delivered", "deferred", "bounced")


class SiteNumbers:
    """Per-site numbers for the metrics (issue 18 §2): deliveries connected or connecting now
    (``connections``), waits for a throttled site's turn, suspensions (a pattern's or a dead
    site's), recipients delivered, deferred and bounced by each attempt (issue 20). Bounded:
    at ``LIMIT`` sites the idle ones are forgotten."""

    def __init__(self) -> None:
        self.sites: dict[str, dict[str, int]] = {}

    def add(self, site: str, number: str, by: int = 1) -> None:
        if site not in self.sites and len(self.sites) >= LIMIT:
            for name in [n for n, v in self.sites.items() if not v["connections"]]:
                del self.sites[name]
        counts = self.sites.setdefault(site, dict.fromkeys(NUMBERS, 0))
        counts[number] += by

    def top(self, top: int = TOP_SITES) -> dict[str, dict[str, int]]:
        """The ``top`` busiest sites by name, and the rest summed as ``other`` (bounded label
        cardinality, whatever the number of sites)."""
        ranked = sorted(self.sites.items(), key=lambda kv: (
            -kv[1]["connections"], -kv[1]["suspensions"],
            -kv[1]["deferred"] - kv[1]["bounced"], -kv[1]["throttled_waits"],
            -kv[1]["delivered"], kv[0]))
        out = {name: dict(counts) for name, counts in ranked[:top]}
        if len(ranked) > top:
            out["other"] = {n: sum(c[n] for _, c in ranked[top:]) for n in NUMBERS}
        return out


def reorder(plan: Plan, family: int) -> Plan:
    """``plan``'s targets with ``family``'s first within each MX preference, order otherwise
    kept (a backup MX never goes before a better one)."""
    def key(pair: tuple[int, Target]) -> tuple[int, int, int]:
        index, target = pair
        return (target.preference, target.family != family, index)
    targets = tuple(t for _, t in sorted(enumerate(plan.targets), key=key))
    if targets == plan.targets:
        return plan
    return replace(plan, targets=targets)


__all__ = ["EVENT_KINDS", "LIMIT", "MAX_WAIT", "NUMBERS", "TOP_SITES", "Event", "Hold",
           "Preference", "Site", "SiteHealth", "SiteNumbers", "Walk", "reorder"]
