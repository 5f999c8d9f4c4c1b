"""Delivery plans kept for a moment, so a burst of mail to one domain asks DNS once.

The caller that routes with the real ``route()`` owns a ``PlanCache`` and hands it to the queue
manager; without one, every delivery is routed afresh. Only what reusing cannot change is kept:
a deliverable plan whose order involved no shuffle of equal preferences (MX-3 shuffles on every
attempt), never longer than its MX records' TTL; a temporary or permanent verdict is asked
again each time (MX-18).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from mxroute.routing.plan import Plan, RoutingPolicy
from mxroute.routing.route import Route
from mxroute.routing.rules import sender_dependent
from mxroute.settingsrules import RouteRule

# how long a plan is reused at most (never past an MX TTL); 1 s re-routed each of relaybench's 50
# domains every ~15 messages, ~4 % of the delivery process's CPU (issue 23)
PLAN_CACHE_SECONDS = 5.0
MAX_DOMAINS = 10_000  # when full, the cache starts empty again (bounded memory)


def reuse_for(plan: Plan, seconds: float) -> float:
    """How long ``plan`` may be reused: at most ``seconds`` and its MX records' TTL; 0 unless it
    is deliverable and its order involved no shuffle (MX-3)."""
    if not plan.deliverable or any(d.rule == "MX-3" for d in plan.decisions):
        return 0.0
    return min([seconds, *(float(r.ttl) for r in plan.mx)])


PlanKey = tuple[str, str | None]  # (domain, envelope sender when ``routes`` depend on it)


def plan_key(domain: str, sender: str, routes: Sequence[RouteRule]) -> PlanKey:
    """What a plan is kept under: the domain, and the sender too when a ``routes`` rule names
    senders (issue 16: then two senders' mail to one domain may leave by two routes)."""
    return domain, sender if sender_dependent(routes) else None


class PlanCache:
    """Plans by domain (and sender, when routes depend on it), each valid for the routing policy
    it was made under and a short time."""

    def __init__(
        self, seconds: float = PLAN_CACHE_SECONDS, *, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self._plans: dict[PlanKey, tuple[float, RoutingPolicy, Route]] = {}  # key -> (expiry, ...)

    async def plan(
        self, key: PlanKey, policy: RoutingPolicy, route: Callable[[], Awaitable[Route]],
    ) -> Route:
        """The plan kept for ``key`` under ``policy`` if still fresh, else ``route()``'s (kept
        if reusing it changes nothing, for at most its MX records' TTL from when it was asked)."""
        asked = self.clock()
        hit = self._plans.get(key)
        if hit is not None and hit[0] > asked and hit[1] is policy:
            return hit[2]
        routed = await route()
        lifetime = reuse_for(routed.plan, self.seconds)
        if lifetime > 0:
            if len(self._plans) >= MAX_DOMAINS:
                self._plans.clear()
            self._plans[key] = (asked + lifetime, policy, routed)
        return routed

    def forget(self, domains: set[str]) -> None:
        """Route ``domains`` afresh at their next delivery (``mxroute queue requeue``)."""
        for key in [key for key in self._plans if key[0] in domains]:
            del self._plans[key]

    def __len__(self) -> int:
        return len(self._plans)


__all__ = ["PLAN_CACHE_SECONDS", "PlanCache", "PlanKey", "plan_key", "reuse_for"]
