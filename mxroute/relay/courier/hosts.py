"""The hosts the courier talks to: where a connection goes (``Endpoint``), the memory of hosts
that did not answer (RTY-4) and the log of per-host events (connect failures, skips, TLS
fallbacks), under this module's logger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import NamedTuple

from mxroute.relay.courier.health import SiteHealth
from mxroute.text import safe_text

log = logging.getLogger(__name__)  # per-host events: connect failures, skips, TLS fallbacks

LIMIT = 10000  # entries kept of each kind: a bound, not a policy


class Endpoint(NamedTuple):
    """Where a session goes: the host's address and port, the egress address it leaves from
    (None: the system's choice) and who it authenticates as. Hosts are remembered, and sessions
    pooled, by it."""

    address: str
    port: int
    source: str | None
    # who the session is at a routed next hop (issue 16): "rule 2 AUTH user"; None: anonymous
    identity: str | None = None


class Unreachable(NamedTuple):
    """A host that failed at connect, greeting or EHLO: skipped ``until`` (a clock reading),
    since it failed ``since``; ``name`` as the log names it (``mx.example[192.0.2.1]:25``)."""

    until: float
    status: str
    reply: str
    since: float = 0.0
    name: str = ""


class Hosts:
    """Hosts that failed at connect/greeting/EHLO, skipped until their retry time (RTY-4, as
    Exim's host retry records), so N messages for a dead host cost O(1) connections per retry
    cycle, not O(N). Hosts that last gave a session are ``answering``; to any other, one
    connection at a time until it answers (N messages arriving together for a dead host must
    not open N connections first). ``clock``: monotonic seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._unreachable: dict[Endpoint, Unreachable] = {}
        self._answering: set[Endpoint] = set()
        self._probes: dict[Endpoint, asyncio.Future[None]] = {}
        # issue 18 §2: what delivery learnt per site (throttles, suspensions, family health)
        self.sites = SiteHealth()
        # issue 19: hosts another node of the fleet found unreachable, by address and port
        self._shared: dict[tuple[str, int], Unreachable] = {}
        # issue 19: told of each host found unreachable here (the fleet publishes it)
        self.on_failed: Callable[[Endpoint, Unreachable], None] | None = None

    def skip(self, key: Endpoint) -> Unreachable | None:
        """The record ruling ``key`` out now, or None (an expired one is forgotten)."""
        known = self._unreachable.get(key)
        if known is not None and known.until <= self.clock():
            del self._unreachable[key]
            known = None
        if known is None and self._shared:
            known = self._shared.get((key.address, key.port))
            if known is not None and known.until <= self.clock():
                del self._shared[(key.address, key.port)]
                return None
        return known

    def learn(self, address: str, port: int, status: str, reply: str, pause: float,
              name: str = "") -> bool:
        """Another node of the fleet found ``address``:``port`` unreachable (issue 19): skipped
        here too for ``pause`` seconds, whatever the egress address. False when it is already
        known (not new: not told twice)."""
        now = self.clock()
        known = self._shared.get((address, port))
        if known is not None and known.until >= now + pause - 1.0:
            return False
        if len(self._shared) >= LIMIT:
            self._shared.clear()
        self._shared[(address, port)] = Unreachable(now + pause, status, reply, now, name)
        return True

    @asynccontextmanager
    async def contact(self, key: Endpoint) -> AsyncIterator[Unreachable | None]:
        """Yields the record ruling ``key`` out, or None: go ahead, and tell ``failed`` or
        ``answered``. At first contact, while one connection finds out, the rest wait for it."""
        known = self.skip(key)
        probe: asyncio.Future[None] | None = None
        if known is None and key not in self._answering:
            waiting = self._probes.get(key)
            if waiting is not None:
                await asyncio.shield(waiting)
                known = self.skip(key)
            else:
                probe = self._probes[key] = asyncio.get_running_loop().create_future()
        try:
            yield known
        finally:
            if probe is not None:
                del self._probes[key]
                probe.set_result(None)

    def failed(self, key: Endpoint, status: str, reply: str, pause: float, name: str = "") -> None:
        """``key`` gave no session: skip it for ``pause`` seconds."""
        if len(self._unreachable) >= LIMIT:
            self._unreachable.clear()
        now = self.clock()
        known = self._unreachable.get(key)
        since = known.since if known is not None else now  # failing since its first failure
        record = self._unreachable[key] = Unreachable(now + pause, status, reply, since, name)
        self._answering.discard(key)
        if self.on_failed is not None:
            self.on_failed(key, record)

    def answered(self, key: Endpoint) -> None:
        """``key`` gave a session."""
        if len(self._answering) >= LIMIT:
            self._answering.clear()
        self._answering.add(key)

    def forget(self, host: str | None = None) -> int:
        """Try again at the next delivery every host (``mxroute queue flush``), or those whose
        address or name is ``host`` (``mxroute queue hosts --forget``): how many."""
        if host is None:
            count = len(self._unreachable) + len(self._shared)
            self._unreachable.clear()
            self._shared.clear()
            self.sites.forget_dead()  # a dead site is its hosts failing (issue 18 §2)
            return count
        keys = [k for k, v in self._unreachable.items() if host in (k.address, v.name)
                or v.name.startswith(f"{host}[")]
        for key in keys:
            del self._unreachable[key]
        shared = [k for k, v in self._shared.items() if host in (k[0], v.name)
                  or v.name.startswith(f"{host}[")]
        for pair in shared:
            del self._shared[pair]
        return len(keys) + len(shared)

    def skipping(self, shared: bool = True) -> list[tuple[Endpoint, Unreachable]]:
        """The hosts skipped now, soonest retried first (``mxroute queue hosts``, exinext);
        ``shared`` False: only those found unreachable here."""
        now = self.clock()
        mine = [(k, v) for k, v in self._unreachable.items() if v.until > now]
        if not shared:
            return sorted(mine, key=lambda kv: kv[1].until)
        known = {(k.address, k.port) for k, _ in mine}
        others = [(Endpoint(a, p, None), v) for (a, p), v in self._shared.items()
                  if v.until > now and (a, p) not in known]
        return sorted(mine + others, key=lambda kv: kv[1].until)

    def __len__(self) -> int:
        """How many hosts are remembered as unreachable."""
        return len(self._unreachable)


# --- per-host events --------------------------------------------------------------------------


def moving_on(host: object, reply: str, rule: str) -> None:
    """A host ruled out for this attempt by ``rule`` (TLS-3, TLS-7): the next address is tried."""
    log.warning("%s: %s: trying the next address (%s)", host, reply, rule)


def policy_skip(host: object, refusal: str, rule: str) -> None:
    """A host not contacted at all: MTA-STS enforce (TLS-6) or a failed TLSA lookup (TLS-7)."""
    log.warning("%s: %s: skipped (%s)", host, refusal, rule)


def testing(host: object, note: str) -> None:
    """What an MTA-STS ``enforce`` policy would have refused; ``testing`` only logs it (TLS-6)."""
    log.warning("%s: %s (TLS-6 testing)", host, note)


def connect_failed(host: object, why: str) -> None:
    log.info("connect to %s: %s", host, why)


def greeted_with(host: object, reply: str) -> None:
    """A 4xx/5xx greeting: the next address is tried (MX-17)."""
    log.info("%s greeted with %s: trying the next address (MX-17)", host, reply)


def plain_text(host: object, what: str, then: str) -> None:
    """Opportunistic TLS failed (``what``) and delivery goes on in plain text (TLS-1)."""
    log.warning("%s: %s: %s in plain text (TLS-1, opportunistic)", host, what, then)


def site_event(site: str, text: str, *, lifted: bool) -> None:
    """A site's health changed (issue 18 §2): throttled, suspended, a family preferred, lifted."""
    log.log(logging.INFO if lifted else logging.WARNING, "site %s: %s", safe_text(site, 300),
            safe_text(text, 400))


def session_limit(domain: str, limit: int, left: int) -> None:
    log.info(
        "%s: mx_session_limit=%d reached, %d address(es) left untried (MX-16)", domain, limit, left
    )


__all__ = [
    "Endpoint", "Hosts", "Unreachable", "connect_failed", "greeted_with", "moving_on", "plain_text",
    "policy_skip", "session_limit", "site_event", "testing",
]
