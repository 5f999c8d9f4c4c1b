"""``mxroute queue summary --by site`` (issue 18 §2): each recipient domain's site, as delivery
computes it (``routing.shaping.site_of``: the MX host names, or a ``routes`` next hop), asked
of DNS a bounded number at a time. A domain DNS gives no answer for (in time) is its own site.
Rules naming an envelope sender do not apply here (the site of the domain's own route).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from mxroute.errors import MxrouteError
from mxroute.settings import Settings

AT_ONCE = 20  # domains looked up at the same time


def sites_of(settings: Settings) -> Callable[[set[str]], dict[str, str]]:
    """A function: recipient domains -> their sites (a domain not found: its own name)."""
    return lambda domains: asyncio.run(_sites(settings, domains))


async def _sites(settings: Settings, domains: set[str]) -> dict[str, str]:
    from mxroute.dns.configured import resolver_from_settings
    from mxroute.routing.route import policy_from_settings, route
    from mxroute.routing.shaping import site_of

    resolver = resolver_from_settings(settings)
    policy = policy_from_settings(settings)
    gate = asyncio.Semaphore(AT_ONCE)
    limit = settings.dns_timeout * (settings.dns_attempts + 1) * 4

    async def one(domain: str) -> tuple[str, str]:
        async with gate:
            try:
                routed = await asyncio.wait_for(
                    route(resolver, domain, policy, random.Random(0), settings), limit)
            except (TimeoutError, MxrouteError):
                return domain, domain
            return domain, site_of(routed.plan)

    return dict(await asyncio.gather(*(one(d) for d in sorted(domains))))


__all__ = ["AT_ONCE", "sites_of"]
