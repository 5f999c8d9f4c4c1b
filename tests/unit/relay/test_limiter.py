"""The local limiter (issue 18): connection slots by key and token buckets, with a scripted
clock for the buckets; bounded waits throughout."""

from __future__ import annotations

import asyncio

import pytest

from mxroute.relay.limiter import Limiter, LocalLimiter


def test_slots_queue_in_order_and_are_forgotten_when_idle() -> None:
    async def main() -> None:
        limiter: Limiter = LocalLimiter()
        assert await limiter.acquire("k", 2) and await limiter.acquire("k", 2)
        assert not await limiter.acquire("k", 2, timeout=0)
        assert not await limiter.acquire("k", 2, timeout=0.01)
        waiter = asyncio.ensure_future(limiter.acquire("k", 2, timeout=5))
        await asyncio.sleep(0)
        assert not waiter.done()
        limiter.release("k")
        assert await asyncio.wait_for(waiter, 5)
        assert limiter.held("k") == 2
        limiter.release("k")
        limiter.release("k")
        assert limiter.held("k") == 0
        assert not limiter._gates  # type: ignore[attr-defined]  # idle keys forgotten

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_cancelled_waiter_loses_nothing() -> None:
    async def main() -> None:
        limiter = LocalLimiter()
        assert await limiter.acquire("k", 1)
        waiter = asyncio.ensure_future(limiter.acquire("k", 1))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        limiter.release("k")
        assert limiter.held("k") == 0
        assert await limiter.acquire("k", 1, timeout=0)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_bucket_gives_burst_then_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket of burst 3 at 10/s: three at once, the fourth 0.1 s later (reserved)."""
    now = [100.0]
    slept: list[float] = []

    async def main() -> None:
        limiter = LocalLimiter(clock=lambda: now[0])
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds: float) -> None:
            slept.append(round(seconds, 6))
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", fake_sleep)
        for _ in range(3):
            await limiter.take("k", 10.0, 3)
        assert slept == []
        await limiter.take("k", 10.0, 3)
        await limiter.take("k", 10.0, 3)
        assert slept == [0.1, 0.2]
        now[0] += 10
        await limiter.take("k", 10.0, 3)
        assert slept == [0.1, 0.2]

    asyncio.run(asyncio.wait_for(main(), 10))
