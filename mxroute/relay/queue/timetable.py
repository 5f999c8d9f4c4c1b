"""When each queued message is next due: the queue manager's schedule, in memory only.

Only IDs and times are kept (the spool holds the rest, DUR-7). A heap with lazy deletion: an
entry whose time is no longer the message's is stale and skipped. A message that comes due while
it is being delivered waits until that delivery is done, then is due again.
"""

from __future__ import annotations

import heapq
from collections.abc import Container


class Timetable:
    """Queue IDs by the time they are next due; what came due while in flight; what was flushed."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}  # queue id -> when next due (the heap may hold stale ones)
        self._heap: list[tuple[float, str]] = []
        self._again: dict[str, float] = {}  # came due while being delivered
        self._forced: set[str] = set()  # flushed: every recipient due, whatever its next try

    def schedule(self, queue_id: str, due: float) -> None:
        """Make ``queue_id`` due at ``due``, unless it is due earlier already."""
        current = self._due.get(queue_id)
        if current is None or due < current:
            self._due[queue_id] = due
            heapq.heappush(self._heap, (due, queue_id))

    def force(self, queue_id: str) -> None:
        """Due now, with every recipient (``mxroute queue flush``)."""
        self._forced.add(queue_id)
        self._due.pop(queue_id, None)
        self.schedule(queue_id, 0.0)

    def forced(self, queue_id: str) -> bool:
        """Was ``queue_id`` flushed since it last came due? (Asked once: the answer is cleared.)"""
        if queue_id in self._forced:
            self._forced.discard(queue_id)
            return True
        return False

    def pop_due(self, now: float, busy: Container[str]) -> str | None:
        """The next message due by ``now`` that is not ``busy`` (being delivered), or None.

        A busy one is set aside, to be due again when ``done`` is told its delivery ended.
        """
        while self._heap and self._heap[0][0] <= now:
            due, queue_id = heapq.heappop(self._heap)
            if self._due.get(queue_id) != due:
                continue  # stale: rescheduled since
            del self._due[queue_id]
            if queue_id in busy:  # comes back when that delivery is done
                self._again[queue_id] = due
                continue
            return queue_id
        return None

    def done(self, queue_id: str) -> None:
        """The delivery of ``queue_id`` ended: due again if it came due meanwhile."""
        again = self._again.pop(queue_id, None)
        if again is not None:
            self.schedule(queue_id, again)

    def drop(self, queue_id: str) -> None:
        """Forget ``queue_id`` (its file is gone); a heap entry left behind is stale."""
        self._due.pop(queue_id, None)

    def due_of(self, queue_id: str) -> float | None:
        """When ``queue_id`` is due; None when it is not scheduled (or set aside meanwhile)."""
        return self._due.get(queue_id)

    def knows(self, queue_id: str) -> bool:
        """Is ``queue_id`` scheduled (or set aside until its delivery ends)?"""
        return queue_id in self._due or queue_id in self._again

    def ids(self) -> set[str]:
        """Every queue ID scheduled or set aside until its delivery ends."""
        return self._due.keys() | self._again.keys()

    def first(self) -> float | None:
        """The earliest time in the heap (perhaps stale: a wake-up that finds nothing), or None."""
        return self._heap[0][0] if self._heap else None

    def count(self, now: float) -> tuple[int, int]:
        """Scheduled messages: (due by ``now``, due later). O(scheduled)."""
        due = sum(1 for when in self._due.values() if when <= now)
        return due, len(self._due) - due

    def __len__(self) -> int:
        return len(self._due)


__all__ = ["Timetable"]
