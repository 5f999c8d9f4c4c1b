"""Delivery slots: how many SMTP transactions run at once, in all and per shaping key (RTY-5).

RFC 5321 §4.5.4.1 asks a client to limit its simultaneous connections to one destination; the
limit is the destination's shaping rule's ``connection_limit`` (issue 18: by default
``destination_concurrency`` per site), so a transaction never waits for a connection the
courier could not open. A transaction waits for its key's slot first, then for one in all, so
those waiting for a busy site never hold slots the others could use. Routing a destination,
before its key is known, takes one of ``routing`` (as many as in all).
Only keys in use are remembered, so memory stays bounded however many destinations pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Slots:
    """A global limit and one per shaping key; a transaction holds one of each."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._global = asyncio.Semaphore(total)
        self.routing = asyncio.Semaphore(total)  # destinations being routed at once (DNS)
        self._per_key: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # key -> transactions holding or awaiting a slot

    def configure(self, total: int) -> None:
        """A new global limit, for transactions that start from now on (those in flight finish
        under the old one). A key's limit changes when it is next idle."""
        if total != self.total:
            self._global = asyncio.Semaphore(total)
            self.routing = asyncio.Semaphore(total)
            self.total = total

    @contextlib.asynccontextmanager
    async def slot(self, key: str, limit: int) -> AsyncIterator[None]:
        """Wait for one of ``limit`` slots of ``key``, then one in all; hold both until the
        block ends."""
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with self._gate(key, limit), self._global:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # forget idle keys (bounded memory)
                del self._users[key]
                self._per_key.pop(key, None)

    def _gate(self, key: str, limit: int) -> asyncio.Semaphore:
        gate = self._per_key.get(key)
        if gate is None:
            gate = self._per_key[key] = asyncio.Semaphore(limit)
        return gate

    def in_use(self) -> int:
        """Keys with a transaction running or waiting."""
        return len(self._users)


__all__ = ["Slots"]
