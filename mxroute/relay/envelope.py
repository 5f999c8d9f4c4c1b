"""The envelope of a message and the outcome of delivering to a recipient.

Plain data shared by intake, spool, queue, courier and bounces (RFC 5321 §2.3.1;
DSN parameters of RFC 3461 §4).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(slots=True)
class Recipient:
    """One forward-path with its RFC 3461 parameters."""

    address: str
    # () = not given (FAILURE by default); ("NEVER",) or some of SUCCESS/FAILURE/DELAY
    notify: tuple[str, ...] = ()
    orcpt: str | None = None  # "rfc822;user@example.com" as given (xtext-decoded)

    def wants(self, kind: str) -> bool:
        """Does this recipient want a DSN of ``kind`` (SUCCESS, FAILURE, DELAY)? (RFC 3461 §4.1)."""
        if not self.notify:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


@dataclass(slots=True)
class Envelope:
    """Reverse-path, forward-paths and the message-wide parameters."""

    sender: str  # "" is the null reverse-path <> (a bounce)
    recipients: list[Recipient] = field(default_factory=list)
    ret: str | None = None  # FULL or HDRS (RFC 3461 §4.3)
    envid: str | None = None  # RFC 3461 §4.4
    body: str | None = None  # 7BIT or 8BITMIME (RFC 6152)
    smtputf8: bool = False  # RFC 6531


class Disposition(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(slots=True)
class RecipientResult:
    """What one delivery attempt did for one recipient."""

    recipient: str
    disposition: Disposition
    status: str  # enhanced status code, e.g. "2.0.0", "4.4.1", "5.1.1" (RFC 3463)
    reply: str  # the remote reply as received ("550 5.1.1 no such user"), or the local reason
    remote_mta: str | None = None  # "mx1.example.com[192.0.2.1]:25": the host the result concerns
    # DSN-9: the host that took the message advertised DSN and was given NOTIFY/ORCPT, so it
    # (not this relay) sends any success notice; False → a "relayed" DSN is due (RFC 3461 §5.2.3)
    next_hop_dsn: bool = False
    # RFC 3464 §2.3.5/§2.3.6: ``reply`` is the reply ``remote_mta`` sent (a DSN says "Remote-MTA"
    # and "smtp;"), not a reason this relay made itself (connect, TLS policy, timeouts...:
    # "X-mxroute;")
    remote_reply: bool = False


@dataclass(slots=True)
class Times:
    """When a message came and when this attempt began: the delivery line's ``delay`` and
    ``delays`` (issue 15 D). Wall-clock times (``time.time()``)."""

    arrival: float  # the end of the client's DATA
    intake: float  # seconds from its MAIL FROM to arrival (delays a: before the queue)
    started: float  # this attempt began (routing first)
    routing: float = 0.0  # seconds routing took (DNS): part of the set-up (delays c)
