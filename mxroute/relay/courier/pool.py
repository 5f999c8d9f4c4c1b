"""Idle connections kept for the next message to the same address (SESS-17, RSET between
transactions), closed after an idle timeout."""

from __future__ import annotations

import asyncio

from mxroute.relay.courier.hosts import Endpoint
from mxroute.relay.courier.session import HostFailure, Session
from mxroute.settings import Settings


class Pool:
    """A few idle sessions per destination address.

    ``reuse`` off: every session is QUIT after its message. ``max_idle_per_destination``:
    by default as many as may be busy with one destination at once
    (``destination_concurrency``, as reloaded: ``settings`` may be replaced), so a steady
    load never closes and reopens them. ``stats["reused"]`` counts sessions taken from it.
    """

    def __init__(
        self,
        settings: Settings,
        stats: dict[str, int],
        *,
        reuse: bool = True,
        idle_timeout: float = 30.0,
        max_idle_per_destination: int | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.reuse = reuse
        self.idle_timeout = idle_timeout
        self._max_idle = max_idle_per_destination
        self._idle: dict[Endpoint, list[Session]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def max_idle(self) -> int:
        """Idle sessions kept per destination address."""
        return self.settings.destination_concurrency if self._max_idle is None else self._max_idle

    def __len__(self) -> int:
        """How many idle sessions are kept now, over every address."""
        return sum(len(idle) for idle in self._idle.values())

    async def checkout(self, key: Endpoint) -> Session | None:
        """An idle session with this address that still answers RSET (SESS-17), or None."""
        idle = self._idle.get(key)
        while idle:
            session = idle.pop()
            if session.idle_timer:
                session.idle_timer.cancel()
            if not session.client.is_connected:
                continue
            if session.pipelining:  # RSET goes with the next transaction's group (SESS-16/17)
                session.rset_due = True
            else:
                try:
                    await session.rset(self.settings.mail_timeout)
                except HostFailure:
                    continue
            session.transactions = 0
            self.stats["reused"] += 1
            return session
        return None

    def uncount(self) -> None:
        """A session ``checkout`` gave was not reused after all (stale, or not good enough for a
        TLS policy)."""
        self.stats["reused"] -= 1

    def release(self, session: Session) -> None:
        """Keep a healthy session for the next message, or QUIT it."""
        idle = self._idle.setdefault(session.key, [])
        if not self.reuse or not session.client.is_connected or len(idle) >= self.max_idle:
            self.discard(session)
            return
        idle.append(session)
        session.idle_timer = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._expire, session
        )

    def _expire(self, session: Session) -> None:
        idle = self._idle.get(session.key, [])
        if session in idle:
            idle.remove(session)
            self.discard(session)

    def discard(self, session: Session) -> None:
        """Close a session: QUIT in the background when it is still connected."""
        if not session.client.is_connected:
            session.client.close()
            return
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every idle session (QUIT, bounded) and wait for closings in progress."""
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        for session in sessions:
            if session.idle_timer:
                session.idle_timer.cancel()
        await asyncio.gather(*(s.quit() for s in sessions), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


__all__ = ["Pool"]
