"""PURE: the intake's abuse bounds that are plain bookkeeping (issue 21, SEC-8, SEC-10).

* ``SessionCaps``: one session's whole life (``max_session_seconds``) and its commands without a
  completed transaction (Postfix ``smtpd_junk_command_limit``); past either, the ``421 4.7.0``
  that ends the session.
* ``AuthFailures``: failed AUTH attempts per client address in a sliding window (Postfix
  ``smtpd_client_auth_rate_limit``), in a table of bounded size: the least recently failing
  address is forgotten first, so many addresses never grow it past ``capacity``.

Clocks are passed in (monotonic seconds); nothing here waits or does I/O.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

# commands that move no mail (Postfix counts NOOP, VRFY, ETRN, RSET; we add the rest that a
# client can repeat for ever without a transaction)
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "HELO", "EHLO", "ETRN"})
SESSION_TOO_LONG = "421 4.7.0 Session too long, closing the connection"
TOO_MANY_JUNK = "421 4.7.0 Too many commands without a message, closing the connection"
AUTH_TOO_MANY = "421 4.7.0 Too many failed authentication attempts, try again later"
AUTH_TABLE_SIZE = 10000  # client addresses remembered (the oldest failure forgotten first)


@dataclass(slots=True)
class SessionCaps:
    """The bounds of one SMTP session, from its start (``started``, monotonic seconds)."""

    started: float
    max_seconds: float
    junk_limit: int
    junk: int = 0

    def refusal(self, command: str, now: float) -> str | None:
        """None if ``command`` may run at ``now``, else the 421 that ends the session.

        QUIT always runs (its 221 is the polite end either way)."""
        if command == "QUIT":
            return None
        if now - self.started >= self.max_seconds:
            return SESSION_TOO_LONG
        if command in JUNK_COMMANDS:
            self.junk += 1
            if self.junk > self.junk_limit:
                return TOO_MANY_JUNK
        return None

    def transaction_done(self) -> None:
        """A message was accepted: the junk count starts again (as Postfix)."""
        self.junk = 0


class AuthFailures:
    """Failed AUTH attempts per client address within ``window`` seconds, at most ``capacity``
    addresses (least recently failing dropped first)."""

    def __init__(self, limit: int, window: float, capacity: int = AUTH_TABLE_SIZE) -> None:
        self.limit = limit
        self.window = window
        self.capacity = capacity
        # address -> times of its recent failures (at most ``limit`` kept), LRU order
        self._table: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def __len__(self) -> int:
        return len(self._table)

    def configure(self, limit: int, window: float) -> None:
        """New bounds (a reload); what was counted stays."""
        self.limit, self.window = limit, window

    def count(self, address: str, now: float) -> int:
        """Failures of ``address`` within the window ending at ``now``."""
        times = self._table.get(address)
        if times is None:
            return 0
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._table[address]
            return 0
        return min(len(times), self.limit)

    def blocked(self, address: str, now: float) -> bool:
        """Has ``address`` used up its failures? (then its next AUTH is refused unchecked)"""
        return self.count(address, now) >= self.limit

    def failed(self, address: str, now: float) -> int:
        """Record one failure; the address's count within the window, this one included."""
        times = self._table.pop(address, None)
        if times is None or times.maxlen != self.limit:
            times = collections.deque(times or (), maxlen=self.limit)
        times.append(now)
        self._table[address] = times  # most recent last
        while len(self._table) > self.capacity:
            self._table.popitem(last=False)
        return self.count(address, now)

    def succeeded(self, address: str, now: float) -> int:
        """A login from ``address`` worked: its failures within the window (for the log line),
        then forgotten."""
        failures = self.count(address, now)
        self._table.pop(address, None)
        return failures
