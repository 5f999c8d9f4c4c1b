"""Issue 19: ``RedisLimiter`` (mxroute/relay/fleet/limiter.py) against a real redis-server: two
limiters are two nodes sharing one limit; round trips counted (one lease operation to take a
free slot, one GCRA call a message); a dead holder's slots come back with its leases; Redis
killed: local limits divided by the nodes, one warning; Redis back: shared again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mxroute.relay.fleet import scripts
from mxroute.relay.fleet.connection import client
from mxroute.relay.fleet.limiter import RedisLimiter
from mxroute.sharedstate import parse_shared_state
from tests.support.redisserver import RedisServer, start_redis

KEY = "mx:*.fleet.test"


def node(server: RedisServer, name: str, lease_seconds: float = 15.0) -> RedisLimiter:
    conn = client(parse_shared_state(server.url))
    return RedisLimiter(conn, shown=server.url, node=name, lease_seconds=lease_seconds)


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    """``predicate`` true within ``timeout`` (bounded polling)."""
    for _ in range(int(timeout / 0.05) + 1):
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


def test_issue19_two_nodes_share_one_connection_limit(redis_server: RedisServer) -> None:
    """issue 19: limit 2 across two nodes: the third slot is refused (and the holders hear that
    a node waits), a waiting acquire gets the slot another node releases; one lease operation
    per free slot taken."""

    async def run() -> None:
        a, b = node(redis_server, "a"), node(redis_server, "b")
        await a.start()
        await b.start()
        try:
            assert await a.acquire(KEY, 2, timeout=0)
            assert await b.acquire(KEY, 2, timeout=0)
            assert a.stats["lease_ops"] == 1 and a.held(KEY) == 1
            assert not await b.acquire(KEY, 2, timeout=0)
            wanted: list[str] = []
            a.on_wanted = wanted.append  # the courier's pool.close_idle in serve
            await a.tick()
            assert wanted == [KEY]  # b waits: a closes its idle connections of KEY
            assert not await a.acquire(KEY, 2, timeout=0.2)
            waiting = asyncio.ensure_future(b.acquire(KEY, 2, timeout=10))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            a.release(KEY)
            assert await waiting and b.held(KEY) == 2 and a.held(KEY) == 0
            assert await redis_server_count(b) == 2
            assert a.nodes == 2  # the heartbeats counted both
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


async def redis_server_count(limiter: RedisLimiter) -> int:
    return int(await limiter.conn.zcard(scripts.lease_key(KEY)))


def test_issue19_dead_node_slots_expire_live_ones_renew(redis_server: RedisServer) -> None:
    """issue 19: a node that holds its slot and lives keeps it past the lease time (renewal); a
    node that dies without a word frees it when the lease expires."""

    async def run() -> None:
        live, dead, other = (node(redis_server, n, lease_seconds=0.3)
                             for n in ("live", "dead", "other"))
        for limiter in (live, dead, other):
            await limiter.start()
        try:
            assert await live.acquire(KEY, 2, timeout=0)
            assert await dead.acquire(KEY, 2, timeout=0)
            dead._ticker.cancel()  # type: ignore[union-attr]  # dies: no renewal, no release
            assert await other.acquire(KEY, 2, timeout=5)  # the dead node's slot came back
            assert not await other.acquire(KEY, 2, timeout=0.8)  # the live one's did not
        finally:
            await live.close()
            await other.close()
            await dead.conn.aclose()

    asyncio.run(run())


def test_issue19_one_gcra_call_per_message_shared_by_nodes(redis_server: RedisServer) -> None:
    """issue 19: two nodes draw on one bucket (burst 3): together only 3 messages pass at once;
    each take is one GCRA round trip."""

    async def run() -> None:
        a, b = node(redis_server, "a"), node(redis_server, "b")
        try:
            loop = asyncio.get_running_loop()
            for limiter in (a, b, a):
                await limiter.take(KEY, 5.0, 3)
            waited = loop.time()
            await b.take(KEY, 5.0, 3)  # the 4th: its turn is 1/5 s after the bucket emptied
            assert loop.time() - waited >= 0.1
            assert a.stats["rate_ops"] == 2 and b.stats["rate_ops"] == 2
            assert a.stats["lease_ops"] == 0
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_issue19_redis_away_local_limits_one_warning_then_rejoin(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """issue 19: Redis killed: acquiring goes on with the shared limit divided by the nodes last
    seen (4 / 2 = 2 here), one warning for the whole outage, counted; Redis back: the next tick
    rejoins and records the slots held meanwhile as leases."""
    server = start_redis(tmp_path / "redis", "127.0.19.3")

    async def run() -> None:
        a, b = node(server, "a"), node(server, "b")
        await b.start()
        await a.start()
        assert a.nodes == 2
        await b.close()
        server.kill()
        caplog.set_level(logging.WARNING, logger="mxroute.relay.fleet.limiter")
        try:
            assert await a.acquire(KEY, 4, timeout=0)
            assert await a.acquire(KEY, 4, timeout=0)
            assert not await a.acquire(KEY, 4, timeout=0.1)
            await a.take(KEY, 100.0, 2)
            await a.tick()
            assert a.held(KEY) == 2 and not a.shared
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and a.stats["fallbacks"] == 1, warnings
            assert server.url in warnings[0].getMessage()
            server.start()
            assert await eventually(lambda: _ticked(a))
            # the most nodes counted within a lease time: b (gone) is still reckoned with
            assert a.stats["rejoins"] == 1 and a.nodes == 2
            assert await a.conn.zcard(scripts.lease_key(KEY)) == 2
            a.release(KEY)
            assert await eventually(lambda: _count(a, 1))
            assert await a.acquire(KEY, 4, timeout=0) and a.stats["lease_ops"] >= 2
        finally:
            await a.close()
            server.stop()

    asyncio.run(run())


async def _ticked(limiter: RedisLimiter) -> bool:
    await limiter.tick()
    return limiter.shared


async def _count(limiter: RedisLimiter, expected: int) -> bool:
    return int(await limiter.conn.zcard(scripts.lease_key(KEY))) == expected
