"""Delivery slots: how many SMTP transactions run at once, in all and per destination (RTY-5).

RFC 5321 §4.5.4.1 asks a client to limit its simultaneous connections to one destination.
Only destinations in use are remembered, so memory stays bounded however many domains pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Slots:
    """A global limit and one per destination domain; a transaction holds one of each."""

    def __init__(self, total: int, per_destination: int) -> None:
        self.total = total
        self.per_destination = per_destination
        self._global = asyncio.Semaphore(total)
        self._per_dest: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # destination -> transactions holding or awaiting a slot

    def configure(self, total: int, per_destination: int) -> None:
        """New limits: ``total`` for transactions that start from now on (those in flight finish
        under the old one), ``per_destination`` for destinations not in use now."""
        if total != self.total:
            self._global = asyncio.Semaphore(total)
            self.total = total
        self.per_destination = per_destination

    @contextlib.asynccontextmanager
    async def slot(self, domain: str) -> AsyncIterator[None]:
        """Wait for a slot in all and one for ``domain``; hold both until the block ends."""
        self._users[domain] = self._users.get(domain, 0) + 1
        try:
            async with self._global, self._gate(domain):
                yield
        finally:
            self._users[domain] -= 1
            if not self._users[domain]:  # forget idle destinations (bounded memory)
                del self._users[domain]
                self._per_dest.pop(domain, None)  # never made if cancelled waiting for _global

    def _gate(self, domain: str) -> asyncio.Semaphore:
        gate = self._per_dest.get(domain)
        if gate is None:
            gate = self._per_dest[domain] = asyncio.Semaphore(self.per_destination)
        return gate

    def in_use(self) -> int:
        """Destinations with a transaction running or waiting."""
        return len(self._users)


__all__ = ["Slots"]
