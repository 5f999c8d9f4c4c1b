"""The client's name as logs and ``Received:`` write it: its forward-confirmed reverse name, or
``unknown`` (issue 15 C5; iprev, RFC 8601 §3), never the HELO alone.

The lookup starts when the client connects, on the intake's shared resolver, bounded by
``LOOKUP_TIMEOUT``; nothing waits for it. A lookup not finished when the message is accepted
reads ``unknown``, as does any failure, as Postfix writes an unverified client.
"""

from __future__ import annotations

import asyncio

from mxroute.dns.resolver import Lookups
from mxroute.identity.rdns import iprev
from mxroute.text import safe_text

LOOKUP_TIMEOUT = 1.5  # seconds for PTR and the A/AAAA lookups back
UNKNOWN = "unknown"


async def verified_name(resolver: Lookups, ip: str) -> str:
    """The first PTR name of ``ip`` that resolves back to it, or ``unknown``."""
    try:
        result = await asyncio.wait_for(iprev(resolver, ip), LOOKUP_TIMEOUT)
    except (TimeoutError, ValueError):  # too slow, or not an IP address
        return UNKNOWN
    if not result.confirmed:
        return UNKNOWN
    return safe_text(result.confirmed[0], 255).replace(" ", "_") or UNKNOWN


def start(resolver: Lookups, ip: str) -> asyncio.Task[str] | None:
    """The lookup for a client that just connected from ``ip`` (None without an address)."""
    return asyncio.ensure_future(verified_name(resolver, ip)) if ip else None


def name_now(lookup: asyncio.Task[str] | None) -> str:
    """What the lookup found so far: its name once done, ``unknown`` until then."""
    if lookup is None or not lookup.done() or lookup.cancelled() or lookup.exception():
        return UNKNOWN
    return lookup.result()


__all__ = ["LOOKUP_TIMEOUT", "UNKNOWN", "name_now", "start", "verified_name"]
