"""What happens to a recipient after an attempt: pure decisions, clock and randomness injected.

Given the recipient's state, the attempt's result, the message's sender and arrival, the
settings' retry, lifetime and warning numbers, a clock value and a random source: delivered,
bounced, expired, or retried at a time; and whether a delay warning (DSN-10) or a ``relayed``
notice (DSN-9) is due. No I/O: the queue manager applies the decision and writes it down.

RFC 5321 §4.5.4.1 (retry strategy, give-up time), RFC 3461 §4.1 (NOTIFY), §5.2.3 (relayed),
RFC 3464 §2.3.3 (delayed); checklist RTY-2, RTY-3, DSN-9, DSN-10.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Protocol

from mxroute.relay.envelope import Disposition, Recipient, RecipientResult

JITTER = 0.25  # the fraction of a delay drawn at random, so retries of many messages spread out


@dataclass(frozen=True, slots=True)
class Timing:
    """The settings' numbers the decisions need, in seconds."""

    retry_min: float
    retry_max: float
    queue_lifetime: float
    bounce_lifetime: float  # for mail from the null reverse-path (RTY-3 MAY: shorter)
    delay_warning: float  # 0: no delay warnings (DSN-10)

    def lifetime(self, sender: str) -> float:
        """How long mail from ``sender`` may stay queued (RTY-3)."""
        return self.queue_lifetime if sender else self.bounce_lifetime

    def retry_until(self, arrival: float) -> float:
        """When retrying a message that arrived at ``arrival`` ends (DSN Will-Retry-Until)."""
        return arrival + self.queue_lifetime


class Tried(Protocol):
    """What the decisions read of a recipient's queue state (``RecipientState``)."""

    @property
    def attempts(self) -> int: ...  # attempts so far, the one just made included

    @property
    def reply(self) -> str | None: ...  # the last reply (or local reason), made safe

    @property
    def warned(self) -> bool: ...  # a delay warning was sent already

    def recipient(self) -> Recipient: ...


class Next(enum.Enum):
    """What becomes of a recipient after an attempt."""

    DELIVERED = "delivered"
    BOUNCED = "bounced"  # a permanent failure: notify (DSN-1)
    EXPIRED = "expired"  # a transient failure past the lifetime: notify (RTY-3)
    RETRY = "retry"  # a transient failure: try again at ``next_try`` (RTY-2)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The decision for one recipient, with what it records and what it owes the sender."""

    next: Next
    why: str | None  # why it is retried next, or why it ended (None: delivered)
    age: float  # seconds since the message arrived
    wait: float = 0.0  # RETRY: seconds until the next try
    next_try: float = 0.0  # RETRY: when
    warn: bool = False  # RETRY: a delay warning is due now (DSN-10)
    relayed: bool = False  # DELIVERED: a ``relayed`` notice is due (DSN-9)

    @property
    def failed(self) -> bool:
        """Does this end in a failure notice (a bounce or expiry)?"""
        return self.next in (Next.BOUNCED, Next.EXPIRED)


def retry_delay(attempts: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed try (RTY-2).

    Exponential: ``minimum * 2**(attempts-1)``, capped at ``maximum``; the top
    ``JITTER`` part of it is random. Never below ``minimum`` nor above ``maximum``
    (RFC 5321 §4.5.4.1: a configurable interval, backing off).
    """
    if attempts < 1:
        return minimum
    base = min(maximum, minimum * 2.0 ** min(attempts - 1, 64))
    delay = base * (1.0 - JITTER * rng.random())
    return max(minimum, min(maximum, delay))


def warning_due(rcpt: Tried, *, sender: str, arrival: float, now: float, timing: Timing) -> bool:
    """DSN-10: one delay warning per recipient, when configured, requested and not for a bounce."""
    after = timing.delay_warning
    return bool(after and sender and not rcpt.warned and now - arrival >= after
                and rcpt.recipient().wants("DELAY"))


def settle(
    rcpt: Tried, result: RecipientResult, *, sender: str, arrival: float, now: float,
    timing: Timing, rng: random.Random,
) -> Settlement:
    """The decision after ``result``, for a recipient whose state already counts this attempt.

    ``rng`` is drawn from only for a retry (the jitter of RTY-2).
    """
    age = now - arrival
    if result.disposition is Disposition.DELIVERED:
        relayed = not result.next_hop_dsn and rcpt.recipient().wants("SUCCESS")  # RFC 3461 §5.2.3
        return Settlement(Next.DELIVERED, None, age, relayed=relayed)
    if result.disposition is Disposition.BOUNCED:
        return Settlement(Next.BOUNCED, "permanent failure", age)
    if age >= timing.lifetime(sender):  # RTY-3: give up with the last transient reason
        return Settlement(Next.EXPIRED, f"expired after {age / 86400:.1f} days in the queue", age)
    wait = retry_delay(rcpt.attempts, timing.retry_min, timing.retry_max, rng)
    why = f"deferred ({rcpt.reply}); attempt {rcpt.attempts + 1} in {wait:.0f}s"
    warn = warning_due(rcpt, sender=sender, arrival=arrival, now=now, timing=timing)
    return Settlement(Next.RETRY, why, age, wait=wait, next_try=now + wait, warn=warn)


__all__ = ["JITTER", "Next", "Settlement", "Timing", "Tried", "retry_delay", "settle",
           "warning_due"]
