"""The limits of traffic shaping (issue 18): connection slots and token buckets, by key.

Callers (the queue's dispatch, the courier) speak only to ``Limiter``; ``LocalLimiter`` keeps
the counts in this process (one node). A shared back-end (issue 19: every node's connections
and messages counted together) implements the same Protocol; its ``release`` may do its I/O in
the background, and it must let a slot go by itself when its holder vanishes (a lease). Keys
are ``Shape.key`` (``mxroute.routing.shaping``): a site, ``domain:NAME``, an ``mx:`` rule or a
provider; message buckets are ``KEY`` and connection buckets ``KEY#connections``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

MAX_BUCKETS = 10_000  # when more are kept, the full ones (nothing to remember) are dropped


class Limiter(Protocol):
    """Connection slots and rate tokens, counted under a key (see the module docstring)."""

    async def acquire(self, key: str, limit: int, *, timeout: float | None = None) -> bool:
        """One of ``limit`` connection slots of ``key``; False when none was free within
        ``timeout`` seconds (0: do not wait; None: wait as long as it takes)."""
        ...

    def release(self, key: str) -> None:
        """Give back a slot ``acquire`` gave (once per slot)."""
        ...

    async def take(self, key: str, rate: float, burst: int) -> None:
        """One token of the bucket ``key`` (``rate`` tokens a second, ``burst`` at most kept):
        returns at once when one is there, else when it is due."""
        ...

    def held(self, key: str) -> int:
        """Slots of ``key`` held now (by this node, for a shared back-end)."""
        ...


class _Gate:
    """One key's slots: how many are held and who waits for one, in order."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class LocalLimiter:
    """``Limiter`` in this process: no lock is held across an await, a free slot or a token
    that is there costs no allocation beyond the key's first use, and idle keys are forgotten
    (bounded memory however many destinations pass)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._gates: dict[str, _Gate] = {}
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, when counted, rate, burst]

    async def acquire(self, key: str, limit: int, *, timeout: float | None = None) -> bool:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if gate.held < limit and not gate.waiters:
            gate.held += 1
            return True
        if timeout is not None and timeout <= 0:
            self._forget(key, gate)
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():  # handed a slot as we gave up
                self.release(key)
            else:
                waiter.cancel()
                if waiter in gate.waiters:
                    gate.waiters.remove(waiter)
                self._forget(key, gate)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False

    def release(self, key: str) -> None:
        gate = self._gates.get(key)
        if gate is None or gate.held <= 0:
            return
        while gate.waiters:  # the slot goes straight to the next waiter still waiting
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        gate.held -= 1
        self._forget(key, gate)

    def held(self, key: str) -> int:
        gate = self._gates.get(key)
        return 0 if gate is None else gate.held

    def _forget(self, key: str, gate: _Gate) -> None:
        if not gate.held and not gate.waiters:
            self._gates.pop(key, None)

    async def take(self, key: str, rate: float, burst: int) -> None:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._sweep(now)
            bucket = self._buckets[key] = [float(burst), now, rate, float(burst)]
        tokens = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
        bucket[0], bucket[1], bucket[2], bucket[3] = tokens - 1.0, now, rate, float(burst)
        if tokens < 1.0:  # reserved: this caller's token is due when the debt is paid
            await asyncio.sleep((1.0 - tokens) / rate)

    def _sweep(self, now: float) -> None:
        full = [key for key, (tokens, when, rate, burst) in self._buckets.items()
                if tokens + (now - when) * rate >= burst]
        for key in full:
            del self._buckets[key]


__all__ = ["MAX_BUCKETS", "Limiter", "LocalLimiter"]
