"""PURE: the in-flight memory budget (issue 22): bytes of mail held in memory, bounded.

``max_inflight_bytes`` (``Settings.inflight_budget()``) is shared out once at start-up: the
delivery side gets ``delivery_share()`` for the messages it holds during attempts, the intake
the rest for every DATA being received (and, with ``delivery_processes = 0``, the messages kept
for their first attempt). A ``Budget`` only counts: ``take`` says yes or no at once (the intake
replies ``452 4.3.1`` on a no), ``give`` returns bytes. Waiting for room is the caller's.
"""

from __future__ import annotations


class Budget:
    """A count of bytes in flight against a limit, with the refusals counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0  # takes that did not fit (each is a 452 4.3.1 at the intake)

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    def fits(self, size: int) -> bool:
        """Would ``take(size)`` succeed now (nothing taken). Anything fits an empty budget:
        a message larger than the whole share is never refused for ever."""
        return not self.used or self.used + size <= self.limit

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes if they fit; False (and one refusal) if not."""
        if size < 0:
            raise ValueError("a negative size")
        if not self.fits(size):
            self.refused += 1
            return False
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    def force(self, size: int) -> None:
        """Count bytes that are held whatever the limit (a message larger than a whole share
        when nothing else is held: it must still be delivered)."""
        self.used += size
        self.peak = max(self.peak, self.used)

    def give(self, size: int) -> None:
        """Return bytes taken earlier."""
        self.used -= size
        if self.used < 0:
            raise ValueError(f"budget released {-self.used} bytes more than it held")


__all__ = ["Budget"]
