"""Idle connections kept for the next message to the same address (SESS-17, RSET between
transactions), closed after an idle timeout.

A connection opened under a shaping key (issue 18) holds one of its connection slots in the
limiter for as long as it is open, idle in here included; the pool gives the slot back when the
connection ends (QUIT answered, or closed), and hands a kept connection only to a delivery
under the same key.
"""

from __future__ import annotations

import asyncio

from mxroute.relay.courier.hosts import Endpoint
from mxroute.relay.courier.session import HostFailure, Session
from mxroute.relay.limiter import Limiter, LocalLimiter
from mxroute.settings import Settings


class Pool:
    """A few idle sessions per destination address and shaping key.

    ``reuse`` off: every session is QUIT after its message. ``max_idle_per_destination``:
    by default as many as may be busy with one destination at once
    (``destination_concurrency``, as reloaded: ``settings`` may be replaced), so a steady
    load never closes and reopens them; counted per address and shaping key, as the sessions
    of one key are only for that key's deliveries (several sites whose MX records name one
    host each keep theirs, issue 23). ``stats["reused"]`` counts sessions taken from it.
    """

    def __init__(
        self,
        settings: Settings,
        stats: dict[str, int],
        *,
        reuse: bool = True,
        idle_timeout: float = 30.0,
        max_idle_per_destination: int | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.limiter: Limiter = limiter if limiter is not None else LocalLimiter()
        self.stats = stats
        self.reuse = reuse
        self.idle_timeout = idle_timeout
        self._max_idle = max_idle_per_destination
        self._idle: dict[tuple[Endpoint, str | None], list[Session]] = {}  # (address, lease)
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def max_idle(self) -> int:
        """Idle sessions kept per destination address."""
        return self.settings.destination_concurrency if self._max_idle is None else self._max_idle

    def __len__(self) -> int:
        """How many idle sessions are kept now, over every address."""
        return sum(len(idle) for idle in self._idle.values())

    async def checkout(self, key: Endpoint, lease: str | None = None) -> Session | None:
        """An idle session with this address, opened under the shaping key ``lease``, that still
        answers RSET (SESS-17), or None."""
        idle = self._idle.get((key, lease))
        while idle:
            session = idle.pop()  # the most recently kept
            if not idle:  # only addresses and keys with idle sessions are remembered
                del self._idle[key, lease]
            if session.idle_timer:
                session.idle_timer.cancel()
            if not session.client.is_connected:
                self.ended(session)
                continue
            if session.pipelining:  # RSET goes with the next transaction's group (SESS-16/17)
                session.rset_due = True
            else:
                try:
                    await session.rset(self.settings.mail_timeout)
                except HostFailure:
                    self.discard(session)
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
        slot = (session.key, session.lease)
        idle = self._idle.get(slot, ())
        if not self.reuse or not session.client.is_connected or len(idle) >= self.max_idle:
            self.discard(session)
            return
        self._idle.setdefault(slot, []).append(session)
        session.idle_timer = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._expire, session
        )

    def _expire(self, session: Session) -> None:
        slot = (session.key, session.lease)
        idle = self._idle.get(slot, [])
        if session in idle:
            idle.remove(session)
            if not idle:
                del self._idle[slot]
            self.discard(session)

    def discard(self, session: Session) -> None:
        """Close a session: QUIT in the background when it is still connected; its connection
        slot is given back once it has ended."""
        if not session.client.is_connected:
            session.client.close()
            self.ended(session)
            return
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(lambda _: self.ended(session))

    def ended(self, session: Session) -> None:
        """``session``'s connection is over: give its connection slot back (once)."""
        if session.lease is not None:
            self.limiter.release(session.lease)
            session.lease = None

    def close_idle(self, lease: str) -> int:
        """Close the idle sessions opened under the shaping key ``lease`` (a delivery under it
        waits for a connection slot they hold); how many."""
        closed = 0
        for slot in [slot for slot in self._idle if slot[1] == lease]:
            for session in self._idle.pop(slot):
                if session.idle_timer:
                    session.idle_timer.cancel()
                self.discard(session)
                closed += 1
        return closed

    async def close(self) -> None:
        """Close every idle session (QUIT, bounded) and wait for closings in progress."""
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        for session in sessions:
            if session.idle_timer:
                session.idle_timer.cancel()
        await asyncio.gather(*(s.quit() for s in sessions), return_exceptions=True)
        for session in sessions:
            self.ended(session)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


__all__ = ["Pool"]
