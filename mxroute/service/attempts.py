"""Delivery-attempt durations for the metrics histogram, kept by the delivery process.

``TimedCourier`` times each ``deliver()`` call (only when ``metrics_listen`` is set) and
``AttemptTimer`` counts the durations in the buckets of ``ATTEMPT_BUCKETS``; the
delivery process hands ``AttemptTimer.snapshot()`` to the parent, which renders it.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import Any

# Seconds: from a local sink's milliseconds to a slow remote MX's minutes
# (RFC 5321 §4.5.3.2 timeouts).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)


class AttemptTimer:
    """Delivery-attempt durations in buckets (the metrics histogram, without prometheus-client)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(ATTEMPT_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(ATTEMPT_BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class TimedCourier:
    """A courier whose ``deliver()`` calls are timed (only when metrics are on)."""

    def __init__(self, courier: Any, observe: Callable[[float], None]) -> None:
        self.courier = courier
        self._observe = observe

    async def deliver(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await self.courier.deliver(*args, **kwargs)
        finally:
            self._observe(time.monotonic() - started)

    async def close(self) -> None:
        await self.courier.close()

    def __getattr__(self, name: str) -> Any:  # stats, settings, forget_unreachable, ...
        return getattr(self.courier, name)


__all__ = ["ATTEMPT_BUCKETS", "AttemptTimer", "TimedCourier"]
