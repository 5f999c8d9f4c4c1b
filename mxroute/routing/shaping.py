"""Traffic shaping (issue 18 §1): which site a destination is, and which limits hold there. PURE.

A **site** is where a limit applies by default: the sorted set of MX host names of the recipient
domain (KumoMTA's ``site_name``), so the many domains one provider hosts share it; a ``routes``
next hop (issue 16) is its own site; a domain without MX records is the site of its own name.

The rules are tried in order, the first whose ``match`` covers the destination wins: the
operator's ``shaping`` setting, then the shipped provider rollups (``SHIPPED``), then the
default rule (``*``: ``destination_concurrency`` connections per site, no other limit: the
behaviour before shaping). ``match`` is ``domain:NAME`` (that recipient domain alone),
``mx:GLOB`` (every destination whose MX host names all match the glob: one limit shared by
them all, as KumoMTA's provider blocks) or ``*`` (per site). A shipped rollup may name several
globs; they share its one limit.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mxroute.routing.plan import Plan

if TYPE_CHECKING:  # the settings module loads ssl; the rules are only read here
    from mxroute.settings import Settings
    from mxroute.settingsrules import ShapingRule

MAX_SHAPES = 10_000  # cached shapes; when full the cache starts empty again (bounded memory)


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers of a rule; None: no such limit."""

    connection_limit: int | None = None  # connections open at once
    max_messages_per_connection: int | None = None
    connection_rate: float | None = None  # new connections per minute
    message_rate: float | None = None  # messages per second
    message_burst: int | None = None  # tokens a message bucket holds (default: the rate, >= 1)

    @classmethod
    def of_rule(cls, rule: ShapingRule) -> Limits:
        return cls(rule.connection_limit, rule.max_messages_per_connection,
                   rule.connection_rate, rule.message_rate, rule.message_burst)

    def to_json(self) -> dict[str, Any]:
        return {
            "connection_limit": self.connection_limit,
            "max_messages_per_connection": self.max_messages_per_connection,
            "connection_rate": self.connection_rate,
            "message_rate": self.message_rate,
            "message_burst": self.message_burst,
        }


@dataclass(frozen=True, slots=True)
class Provider:
    """A shipped rollup: MX host name globs that share one limit (KumoMTA's provider block)."""

    name: str
    globs: tuple[str, ...]
    limits: Limits


# Starting points for the big receivers (docs/shaping.md); an operator's rule matching first wins.
SHIPPED: tuple[Provider, ...] = (
    Provider("google", ("*.google.com", "*.googlemail.com"),
             Limits(connection_limit=20, max_messages_per_connection=100)),
    Provider("outlook", ("*.outlook.com", "*.protection.outlook.com"),
             Limits(connection_limit=10, max_messages_per_connection=100)),
    Provider("yahoo", ("*.yahoodns.net",),
             Limits(connection_limit=10, max_messages_per_connection=20)),
    Provider("icloud", ("*.icloud.com",),
             Limits(connection_limit=10, max_messages_per_connection=50)),
)


@dataclass(frozen=True, slots=True)
class Shape:
    """Where one destination's limits apply and what they are.

    ``site``: the destination's site; ``key``: what the limits are counted under (the site, or
    ``domain:NAME``, or the ``mx:`` rule / provider all its destinations share); ``source``:
    ``shaping`` (the setting, rule ``number``), ``shipped`` (provider ``rule``) or ``default``.
    """

    site: str
    key: str
    rule: str
    source: str
    number: int | None
    limits: Limits

    @property
    def connection_limit(self) -> int:
        """Connections open at once under ``key`` (the default rule's: set by the resolver)."""
        return self.limits.connection_limit or 1

    @property
    def message_burst(self) -> int:
        """Messages the bucket holds: ``message_burst``, else the rate per second (at least 1)."""
        if self.limits.message_burst is not None:
            return self.limits.message_burst
        return max(1, int(self.limits.message_rate or 1))

    def describe(self) -> str:
        """One line for logs and ``explain``: site, rule and limits in force."""
        where = {"shaping": f"shaping rule {self.number} ({self.rule})",
                 "shipped": f"shipped rule {self.rule}",
                 "default": "default rule (*)"}[self.source]
        parts = [f"{name} {value}" for name, value in self.limits.to_json().items()
                 if value is not None]
        shared = f", counted as {self.key}" if self.key != self.site else ""
        return f"site {self.site}: {where}{shared}: {', '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        """``explain --json``'s ``shaping``."""
        return {"site": self.site, "key": self.key, "rule": self.rule, "source": self.source,
                "number": self.number, "limits": self.limits.to_json()}


def site_names(plan: Plan) -> tuple[str, ...]:
    """The MX host names of ``plan``'s destination, sorted, lower case, without the root dot;
    for an implicit MX the domain's own name; () for a next hop or an address literal."""
    if plan.route is not None:
        return ()
    names = {r.exchange.lower().rstrip(".") for r in plan.mx}
    if not names and plan.implicit_mx:
        names = {t.exchange.lower().rstrip(".") for t in plan.targets} or {plan.domain}
    names.discard("")
    return tuple(sorted(names))


def site_of(plan: Plan) -> str:
    """``plan``'s site: its MX host names joined by commas, a next hop's ``host:port``, else
    the destination itself (a literal, or a domain DNS gave nothing usable for)."""
    if plan.route is not None:
        return str(plan.route.rule.next_hop)
    names = site_names(plan)
    return ",".join(names) if names else plan.domain


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _all_match(pattern: re.Pattern[str], names: tuple[str, ...]) -> bool:
    return bool(names) and all(pattern.match(name) for name in names)


class Shaper:
    """Resolves a destination's ``Shape`` from the rules (operator's, shipped, default); each
    answer kept for the destination's domain and site (a small, bounded cache: the per-message
    cost is a dictionary lookup)."""

    def __init__(
        self, rules: Sequence[ShapingRule], destination_concurrency: int,
        shipped: Sequence[Provider] = SHIPPED,
    ) -> None:
        self.rules = tuple(rules)
        self.default = Limits(connection_limit=destination_concurrency)
        self.shipped = tuple(shipped)
        self._mx = {i: _glob(r.match[3:]) for i, r in enumerate(self.rules)
                    if r.match.startswith("mx:")}
        self._providers = tuple((p, tuple(_glob(g) for g in p.globs)) for p in self.shipped)
        self._cache: dict[tuple[str, str], Shape] = {}
        # domain -> the plan last shaped for it and its shape: a plan reused from the plan cache
        # (``relay.queue.plans``) is the same object, and then costs one lookup
        self._last: dict[str, tuple[Plan, Shape]] = {}

    def shape(self, plan: Plan) -> Shape:
        """The shape of ``plan``'s destination (by its domain and site)."""
        last = self._last.get(plan.domain)
        if last is not None and last[0] is plan:
            return last[1]
        site = site_of(plan)
        shape = self._cache.get((plan.domain, site))
        if shape is None:
            shape = self.resolve(plan.domain, site, site_names(plan))
            if len(self._cache) >= MAX_SHAPES:
                self._cache.clear()
            self._cache[(plan.domain, site)] = shape
        if len(self._last) >= MAX_SHAPES:
            self._last.clear()
        self._last[plan.domain] = (plan, shape)
        return shape

    def resolve(self, domain: str, site: str, names: tuple[str, ...]) -> Shape:
        """The first rule covering ``domain`` at ``site`` (MX host ``names``)."""
        domain = domain.lower()
        for index, rule in enumerate(self.rules):
            number = index + 1
            if rule.match == "*":
                return self._made(site, site, rule, number)
            if rule.match.startswith("domain:") and rule.match[7:] == domain:
                return self._made(site, rule.match, rule, number)
            pattern = self._mx.get(index)
            if pattern is not None and _all_match(pattern, names):
                return self._made(site, rule.match, rule, number)
        for provider, patterns in self._providers:
            if any(_all_match(p, names) for p in patterns):
                return Shape(site, f"provider:{provider.name}",
                             f"{provider.name} (mx:{' mx:'.join(provider.globs)})",
                             "shipped", None, provider.limits)
        return Shape(site, site, "*", "default", None, self.default)

    def _made(self, site: str, key: str, rule: ShapingRule, number: int) -> Shape:
        limits = Limits.of_rule(rule)
        if limits.connection_limit is None:
            limits = Limits(self.default.connection_limit, *_rest(limits))
        return Shape(site, key, rule.match, "shaping", number, limits)


def shaper_of(settings: Settings) -> Shaper:
    """The shaper a relay with these settings applies (its ``shaping`` rules, then the shipped
    ones, then ``destination_concurrency`` per site)."""
    return Shaper(settings.shaping, settings.destination_concurrency)


def _rest(limits: Limits) -> tuple[int | None, float | None, float | None, int | None]:
    return (limits.max_messages_per_connection, limits.connection_rate, limits.message_rate,
            limits.message_burst)


__all__ = ["MAX_SHAPES", "SHIPPED", "Limits", "Provider", "Shape", "Shaper", "shaper_of",
           "site_names", "site_of"]
