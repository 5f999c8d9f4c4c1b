"""What the queue tools show, from queue files already read: PURE (no I/O).

States are what the spool knows (issue 15 B), at the moment ``now``:

- a recipient is ``delivered`` or ``bounced`` once done; while pending it is ``active`` when
  it is due (its retry time has come, or it was never tried) and ``deferred`` while it waits
  for its retry time;
- a message takes the first state of ``MESSAGE_STATES`` whose test holds (``hold`` when it is
  held, ``active`` when any recipient is due, else ``deferred``), and a held message's pending
  recipients are ``hold`` too.

Ages count from the arrival. ``Summary`` folds messages one at a time into per-domain rows
(qshape's buckets: 5, 10, 20, ... 1280 minutes and older), so a spool of any size is shown in
the memory of its domains, never of its messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from mxroute.relay.spool.format import PENDING, MessageMeta, RecipientState

ACTIVE, DEFERRED, HOLD, SUSPENDED = "active", "deferred", "hold", "suspended"

# Message states, first match wins; each is also a ``queue list --state`` choice.
MESSAGE_STATES: dict[str, Callable[[MessageMeta, float], bool]] = {
    HOLD: lambda meta, now: meta.held,  # `mxroute queue hold`: never tried until released
    ACTIVE: lambda meta, now: any(r.next_try <= now for r in meta.pending),
    DEFERRED: lambda meta, now: True,
}

# qshape's age buckets, in minutes: under 5, 5-10, ... 640-1280, and 1280 or more
BUCKET_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
BUCKET_LABELS = tuple(f"{m}m" for m in BUCKET_MINUTES) + (f"{BUCKET_MINUTES[-1]}m+",)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``2h``, ``1d``, ``1h30m`` (s m h d w; a bare number is seconds);
    ValueError naming the text otherwise."""
    value = text.strip()
    if value.isdigit():
        return float(value)
    parts = re.findall(r"(\d+)([smhdw])", value, re.IGNORECASE)
    if not parts or "".join(n + u for n, u in parts).lower() != value.lower():
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 2h, 1d, 1h30m)")
    return float(sum(int(n) * _UNITS[u.lower()] for n, u in parts))


def recipient_state(rcpt: RecipientState, now: float, held: bool = False,
                    suspended: Collection[str] = ()) -> str:
    """``delivered``/``bounced`` when done, else ``hold`` (its message is held), ``suspended``
    (its domain is: ``mxroute queue suspend``), ``active`` (due) or ``deferred`` (waiting)."""
    if rcpt.state != PENDING:
        return rcpt.state
    if held:
        return HOLD
    if suspended and domain_of(rcpt.address) in suspended:
        return SUSPENDED
    return ACTIVE if rcpt.next_try <= now else DEFERRED


def message_state(meta: MessageMeta, now: float) -> str:
    """The first of ``MESSAGE_STATES`` that holds for ``meta``."""
    return next(name for name, holds in MESSAGE_STATES.items() if holds(meta, now))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def reason(rcpt: RecipientState) -> str | None:
    """The last reply (the remote's or mxroute's own), else why it waits; None if never tried."""
    return rcpt.reply or rcpt.why


@dataclass(frozen=True, slots=True)
class Filter:
    """``queue list`` filters; each one given must hold (None: not filtered)."""

    domain: str | None = None  # a pending recipient at this domain (any case)
    state: str | None = None  # one of MESSAGE_STATES
    older_than: float | None = None  # seconds since arrival, at least

    def matches(self, meta: MessageMeta, now: float) -> bool:
        if self.older_than is not None and now - meta.arrival < self.older_than:
            return False
        if self.domain is not None:
            wanted = self.domain.lower().rstrip(".")
            if not any(domain_of(r.address) == wanted for r in meta.pending):
                return False
        return self.state is None or message_state(meta, now) == self.state


def entry(meta: MessageMeta, now: float, suspended: Collection[str] = ()) -> dict[str, Any]:
    """One message as ``queue list --json`` prints it (one object per line)."""
    return {
        "queue_id": meta.queue_id, "arrival": meta.arrival, "size": meta.size,
        "sender": meta.sender, "state": message_state(meta, now),
        "pending": len(meta.pending), "next_try": meta.next_due(),
        "recipients": [
            {"address": r.address, "state": recipient_state(r, now, meta.held, suspended),
             "attempts": r.attempts,
             "next_try": r.next_try if r.state == PENDING and r.attempts else None,
             "status": r.status, "reason": reason(r), "remote_reply": r.remote_reply}
            for r in meta.recipients
        ],
    }


def bucket(age: float) -> int:
    """The index of ``age`` (seconds) in ``BUCKET_LABELS``."""
    minutes = age / 60
    return next((i for i, m in enumerate(BUCKET_MINUTES) if minutes < m), len(BUCKET_MINUTES))


@dataclass(slots=True)
class Row:
    """One recipient domain's queued mail (or the total)."""

    domain: str
    messages: int = 0
    recipients: int = 0
    volume: int = 0  # bytes of the messages with a pending recipient here
    oldest: float | None = None  # arrival times
    newest: float | None = None
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKET_LABELS))

    def add(self, meta: MessageMeta, recipients: int, age_bucket: int) -> None:
        self.messages += 1
        self.recipients += recipients
        self.volume += meta.size
        self.oldest = meta.arrival if self.oldest is None else min(self.oldest, meta.arrival)
        self.newest = meta.arrival if self.newest is None else max(self.newest, meta.arrival)
        self.buckets[age_bucket] += 1

    def to_json(self, by: str = "domain") -> dict[str, Any]:
        """``by``: what the row's name is (``domain``, or ``site`` for ``summary --by site``)."""
        return {by: self.domain, "messages": self.messages, "recipients": self.recipients,
                "volume": self.volume, "oldest": self.oldest, "newest": self.newest,
                "buckets": list(self.buckets)}


class Summary:
    """Pending mail by recipient domain and age (qshape, exiqsumm): messages are counted once
    per domain they still wait for, and once in the total."""

    def __init__(self, now: float, sites: dict[str, str] | None = None) -> None:
        self.now = now
        self.total = Row("TOTAL")
        self._rows: dict[str, Row] = {}
        # issue 18 §2 (``summary --by site``): recipient domain -> its site; rows are sites then
        self.sites = sites

    def add(self, meta: MessageMeta) -> None:
        domains: dict[str, int] = {}
        for rcpt in meta.pending:
            name = domain_of(rcpt.address)
            if self.sites is not None:
                name = self.sites.get(name, name)
            domains[name] = domains.get(name, 0) + 1
        if not domains:
            return
        age_bucket = bucket(self.now - meta.arrival)
        for name, count in domains.items():
            self._rows.setdefault(name, Row(name)).add(meta, count, age_bucket)
        self.total.add(meta, sum(domains.values()), age_bucket)

    def rows(self, top: int | None = None) -> list[Row]:
        """The domains, most messages first (then most recipients, then by name); ``top`` of
        them when given."""
        ranked = sorted(self._rows.values(), key=lambda r: (-r.messages, -r.recipients, r.domain))
        return ranked if top is None else ranked[:top]

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        if self.sites is not None:
            return {"now": self.now, "buckets": list(BUCKET_LABELS), "by": "site",
                    "sites": [r.to_json("site") for r in self.rows(top)],
                    "total": self.total.to_json("site")}
        return {"now": self.now, "buckets": list(BUCKET_LABELS),
                "domains": [r.to_json() for r in self.rows(top)], "total": self.total.to_json()}
