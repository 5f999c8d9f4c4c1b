"""``RedisLimiter``: ``relay.limiter``'s ``Limiter`` counted by the whole fleet (issue 19).

A connection slot is a lease in Redis (``scripts.LEASE_TAKE``: one round trip when it is free),
renewed by this node while the connection lives, given back in the background on ``release``;
a node that dies frees its slots when the leases expire (``LEASE_SECONDS``). A message token
is one ``scripts.GCRA`` call. Waiting for a slot polls with a bounded backoff
(``POLL_FIRST`` .. ``POLL_MOST`` seconds), never past the caller's timeout.

Every slot is also counted by a ``LocalLimiter`` in this process (``held`` is its count), with
the shared limit while Redis answers. Redis is never on the acceptance path, and delivery never
waits for it: when a call fails the limiter falls back to the local counts with the shared
limits divided by the live nodes it last saw (``nodes``), logs one warning for the outage and
counts it (``stats["fallbacks"]``); its ticker tries Redis every ``PROBE_SECONDS`` and rejoins
when it answers, recording the slots held meanwhile as leases (they are open connections) and
dropping those given back meanwhile. ``nodes`` is the most nodes the heartbeats counted within a
lease time, so a Redis that lost its state does not make the first node back count itself alone.
The ticker (every ``TICK_SECONDS``) renews this node's leases and heartbeat in one pipelined
round trip, and hears which keys another node waits for (``on_wanted``: the courier's pool
closes its idle connections of that key, as on one node). ``stats`` counts the round trips by
kind, for the metrics and the bench.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mxroute.relay.fleet import scripts
from mxroute.relay.fleet.connection import from_settings, shown
from mxroute.relay.limiter import LocalLimiter
from mxroute.settings import Settings
from mxroute.sharedstate import redact

log = logging.getLogger(__name__)

LEASE_SECONDS = 15.0  # a dead node's connection slots are free again within this
TICK_SECONDS = 1.0  # leases renewed, the heartbeat sent, "wanted" keys heard this often
WANTED_MS = 3000  # how long a refused node's "wanted" flag stays up
MAX_GIVEN_BACK = 10_000  # leases released while Redis is away, dropped on rejoin (else expire)
PROBE_SECONDS = 1.0  # while Redis is away: how often it is tried again
POLL_FIRST, POLL_MOST = 0.02, 0.5  # waiting for a slot: the first and the longest pause

T = TypeVar("T")


class RedisLimiter:
    """``Limiter`` shared through Redis, local when Redis is away (see the module docstring).
    ``start()`` begins renewing and heartbeats; ``close()`` gives everything back."""

    def __init__(self, conn: aioredis.Redis, *, shown: str = "shared_state",
                 node: str | None = None, lease_seconds: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.conn, self.shown = conn, shown
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease_ms = int(lease_seconds * 1000)
        self.tick_seconds = min(TICK_SECONDS, lease_seconds / 3)
        # called with a key another node waits for: close the idle connections holding its slots
        self.on_wanted: Callable[[str], object] | None = None
        self.local = LocalLimiter(clock=clock)
        self.shared = True  # False while Redis is away
        self.nodes = 1  # live nodes last counted (this one included)
        self.stats: dict[str, int] = {"lease_ops": 0, "rate_ops": 0, "renewals": 0,
                                      "fallbacks": 0, "rejoins": 0}
        self._leases: dict[str, list[str | None]] = {}  # key -> its slots (None: taken locally)
        self._background: set[asyncio.Task[Any]] = set()
        self._given_back: list[tuple[str, str]] = []  # leases released while Redis was away
        self._counts: deque[tuple[float, int]] = deque()  # (when, live nodes) heartbeats said
        self._ticker: asyncio.Task[None] | None = None
        self._take = conn.register_script(scripts.LEASE_TAKE)
        self._renew = conn.register_script(scripts.LEASE_RENEW)
        self._drop = conn.register_script(scripts.LEASE_DROP)
        self._gcra = conn.register_script(scripts.GCRA)
        self._beat = conn.register_script(scripts.HEARTBEAT)

    # --- the Limiter Protocol ------------------------------------------------------------------

    async def acquire(self, key: str, limit: int, *, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        if not await self.local.acquire(key, self._local_limit(limit), timeout=timeout):
            return False
        pause = POLL_FIRST
        try:
            while True:
                taken = await self._lease(key, limit)
                if taken is not False:
                    self._leases.setdefault(key, []).append(taken)
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                await asyncio.sleep(pause if left is None else min(pause, left))
                pause = min(pause * 2, POLL_MOST)
        except BaseException:
            self.local.release(key)
            raise
        self.local.release(key)
        return False

    def release(self, key: str) -> None:
        slots = self._leases.get(key)
        if not slots or self.local.held(key) <= 0:
            return
        lease = slots.pop(slots.index(None)) if None in slots else slots.pop()
        if not slots:
            del self._leases[key]
        self.local.release(key)
        if lease is not None and not self.shared:  # dropped when Redis is back (or expires)
            if len(self._given_back) < MAX_GIVEN_BACK:
                self._given_back.append((key, lease))
        elif lease is not None:
            self._later(self._call("lease_ops", self._drop(keys=[scripts.lease_key(key)],
                                                           args=[lease])))

    async def take(self, key: str, rate: float, burst: int) -> None:
        if self.shared:
            wait = await self._call("rate_ops", self._gcra(
                keys=[scripts.rate_key(key, rate, burst)], args=[1000.0 / rate, burst]))
            if wait is not None:
                if int(wait) > 0:
                    await asyncio.sleep(int(wait) / 1000.0)
                return
        await self.local.take(key, rate / self.nodes, max(1, burst // self.nodes))

    def held(self, key: str) -> int:
        return self.local.held(key)

    # --- leases, Redis and the fallback --------------------------------------------------------

    def _local_limit(self, limit: int) -> int:
        return limit if self.shared else max(1, limit // self.nodes)

    async def _lease(self, key: str, limit: int) -> str | None | Literal[False]:
        """A new lease id, None when taken locally (Redis away), False when all are taken."""
        if not self.shared:
            return self._locally(key, limit)
        lease = secrets.token_hex(8)
        call = self._take(keys=[scripts.lease_key(key), scripts.wanted_key(key)],
                          args=[lease, limit, self.lease_ms, WANTED_MS])
        try:
            taken = await self._call("lease_ops", call)
        except asyncio.CancelledError:  # it may have been taken all the same
            self._later(self._call("lease_ops", self._drop(keys=[scripts.lease_key(key)],
                                                           args=[lease])))
            raise
        if taken is None:  # Redis went away
            return self._locally(key, limit)
        return lease if int(taken) else False

    def _locally(self, key: str, limit: int) -> Literal[False] | None:
        """Without Redis the local count decides, at the divided limit (the slot being taken
        is already counted in it)."""
        return None if self.local.held(key) <= self._local_limit(limit) else False

    async def _call(self, kind: str, call: Awaitable[T]) -> T | None:
        """``call``'s answer (one round trip of ``kind``), or None when Redis failed: then
        the limiter is local until the ticker sees Redis again."""
        self.stats[kind] += 1
        try:
            return await call
        except (RedisError, OSError) as exc:
            self._fall_back(exc)
            return None

    def _fall_back(self, exc: BaseException) -> None:
        if not self.shared:
            return
        self.shared = False
        self.stats["fallbacks"] += 1
        log.warning("shared_state %s unreachable (%s): delivering on local limits (the shared "
                    "limits divided by %d node(s)) until it answers again", self.shown,
                    redact(str(exc)) or type(exc).__name__, self.nodes)

    def _later(self, call: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- renewal, heartbeats, rejoining --------------------------------------------------------

    async def start(self) -> None:
        """Register this node and begin renewing leases (an unreachable Redis: local limits)."""
        await self.tick()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(),
                                                              name="fleet-limiter")

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds if self.shared else PROBE_SECONDS)
            await self.tick()

    async def tick(self) -> None:
        """One heartbeat (counting the live nodes) and one renewal of every lease held; while
        Redis is away, one try to rejoin."""
        try:
            if not self.shared:  # the pool's connections are from before the outage: stale
                await self.conn.connection_pool.disconnect()
            nodes = await self._beat(keys=[scripts.NODES_KEY],
                                     args=[self.node, self.lease_ms])
            self.stats["renewals"] += 1
            async with self.conn.pipeline(transaction=False) as pipe:
                keys: list[str] = []
                for key, slots in list(self._leases.items()):
                    # the slots taken locally (Redis away) become leases: open connections
                    leases = [lease or secrets.token_hex(8) for lease in slots]
                    slots[:] = leases
                    if leases:
                        keys.append(key)
                        await self._renew(keys=[scripts.lease_key(key), scripts.wanted_key(key)],
                                          args=[self.lease_ms, *leases], client=pipe)
                given_back, self._given_back = self._given_back, []  # while Redis was away
                for key, lease in given_back:
                    await self._drop(keys=[scripts.lease_key(key)], args=[lease], client=pipe)
                results = await pipe.execute() if keys or given_back else []
                answers = list(zip(keys, results, strict=False))
                lost = sum(int(missing) for _, (missing, _) in answers)
        except (RedisError, OSError) as exc:
            self._fall_back(exc)
            return
        if self.on_wanted is not None:
            for key, (_, wanted) in answers:
                if int(wanted):
                    self.on_wanted(key)
        self._count(max(1, int(nodes)))
        if not self.shared:
            self.shared = True
            self.stats["rejoins"] += 1
            log.info("shared_state %s is back: limits shared again, by %d node(s)",
                     self.shown, self.nodes)
        elif lost:
            log.info("shared_state %s had lost %d lease(s) of open connections: recorded again",
                     self.shown, lost)

    def _count(self, live: int) -> None:
        """``nodes``: the most nodes counted within a lease time (after Redis lost its state,
        the nodes register again one by one: the first must not count itself alone)."""
        now = time.monotonic()
        self._counts.append((now, live))
        while self._counts and self._counts[0][0] < now - self.lease_ms / 1000:
            self._counts.popleft()
        nodes = max(count for _, count in self._counts)
        if nodes != self.nodes:
            self.nodes = nodes
            log.info("shared_state %s: %d node(s) live", self.shown, self.nodes)

    async def close(self) -> None:
        """Stop renewing, give back every lease and this node's registration (bounded: Redis
        may be gone), and close the connection."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._background:
            await asyncio.wait(set(self._background), timeout=1.0)
        try:
            if self.shared:
                async with self.conn.pipeline(transaction=False) as pipe:
                    for key, slots in self._leases.items():
                        for lease in slots:
                            if lease is not None:
                                await self._drop(keys=[scripts.lease_key(key)], args=[lease],
                                                 client=pipe)
                    await self._beat(keys=[scripts.NODES_KEY], args=[self.node, 0], client=pipe)
                    await asyncio.wait_for(pipe.execute(), timeout=2.0)
        except (RedisError, OSError, TimeoutError):
            pass  # the leases expire by themselves
        finally:
            self._leases.clear()
            await self.conn.aclose()


def shared_limiter(settings: Settings) -> RedisLimiter | None:
    """The fleet's limiter for ``settings.shared_state``; None when it is unset (one node).
    ``SharedStateError`` when its password file cannot be read."""
    conn = from_settings(settings)
    if conn is None:
        return None
    return RedisLimiter(conn, shown=shown(settings) or "")


__all__ = ["LEASE_SECONDS", "PROBE_SECONDS", "TICK_SECONDS", "RedisLimiter", "shared_limiter"]
