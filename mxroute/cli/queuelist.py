"""``mxroute queue list`` (postqueue -p / -j, mailq) and ``queue summary`` (qshape, exiqsumm).

Both stream the spool (``Spool.scan``): a message is printed, or folded into its domains'
rows, and dropped before the next is read. Every peer-chosen value is printed through
``safe_text``; JSON is ASCII, so no escape sequence reaches a terminal either way.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable

from mxroute.errors import EX_OK
from mxroute.relay.spool.format import PENDING, MessageMeta
from mxroute.relay.spool.listing import (
    BUCKET_LABELS,
    Filter,
    Row,
    Summary,
    domain_of,
    entry,
    reason,
    recipient_state,
)
from mxroute.relay.spool.store import Spool
from mxroute.text import LISTING, safe_text


def when(ts: float | None) -> str:
    """A local time for a listing, ``-`` for none."""
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float) -> str:
    """A short age: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def listing(spool: Spool, wanted: Filter, as_json: bool) -> int:
    """Print the messages ``wanted`` matches, oldest first; text or one JSON object a line."""
    now = time.time()
    suspended = suspended_domains(spool, now)
    filtered = wanted != Filter()
    shown = seen = pending = 0
    bad: list[str] = []
    for meta in spool.scan(bad):
        seen += 1
        if not wanted.matches(meta, now):
            continue
        if as_json:
            print(json.dumps(entry(meta, now, suspended)))
        else:
            if not shown:
                print(f"{'QUEUE ID':<25} {'ARRIVED':<19} {'SIZE':>9}  SENDER / RECIPIENTS")
            _print_message(meta, now, suspended)
        shown += 1
        pending += len(meta.pending)
    if bad:
        print(f"mxroute: {len(bad)} corrupt queue file(s) skipped (serve moves them to "
              f"corrupt/): {', '.join(bad[:5])}", file=sys.stderr)
    if as_json:
        return EX_OK
    if not shown:
        print("no message matches" if filtered and seen else "queue is empty")
    else:
        of = f" (of {seen} in the queue)" if filtered else ""
        print(f"-- {shown} message(s), {pending} pending recipient(s){of}")
    return EX_OK


def suspended_domains(spool: Spool, now: float) -> frozenset[str]:
    """The recipient domains suspended now (``mxroute queue suspend``), as the spool says."""
    from mxroute.relay.queue.suspensions import Suspensions

    try:
        return frozenset(e.domain for e in Suspensions.load(spool.root).current(now))
    except ValueError as exc:
        print(f"mxroute: {exc}", file=sys.stderr)
        return frozenset()


def _print_message(meta: MessageMeta, now: float, suspended: frozenset[str]) -> None:
    bounce = " (a bounce)" if not meta.sender else ""
    print(f"{meta.queue_id:<25} {when(meta.arrival):<19} {meta.size:>9}  "
          f"<{safe_text(meta.sender, LISTING)}>{bounce}")
    for rcpt in meta.recipients:
        state = recipient_state(rcpt, now, meta.held, suspended)
        why = reason(rcpt)
        if rcpt.state == PENDING and not rcpt.attempts:
            detail = "not tried yet"
        else:
            tries = f"{rcpt.attempts} attempt(s)"
            if rcpt.state == PENDING:
                tries += ", due now" if rcpt.next_try <= now else f", next {when(rcpt.next_try)}"
            detail = f"{tries}: {safe_text(why, LISTING)}" if why else tries
        print(f"    {state:<9} <{safe_text(rcpt.address, LISTING)}>  {detail}")


def summary(spool: Spool, top: int | None, as_json: bool,
            sites: Callable[[set[str]], dict[str, str]] | None = None) -> int:
    """Pending mail by recipient domain (by site, with ``sites``: the recipient domains -> their
    sites, issue 18 §2) and age bucket, with the total."""
    bad: list[str] = []
    grouped = None
    if sites is not None:
        domains = {domain_of(r.address) for meta in spool.scan([]) for r in meta.pending}
        grouped = sites(domains)
    totals = Summary(time.time(), grouped)
    for meta in spool.scan(bad):
        totals.add(meta)
    if bad:
        print(f"mxroute: {len(bad)} corrupt queue file(s) skipped", file=sys.stderr)
    if as_json:
        print(json.dumps(totals.to_json(top)))
        return EX_OK
    rows = [totals.total, *totals.rows(top)]
    name = "SITE" if grouped is not None else "DOMAIN"
    table = [[name, "MSGS", "RCPTS", "VOLUME", "OLDEST", "NEWEST", *BUCKET_LABELS]]
    table += [_cells(row, totals.now) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        print("  ".join(cells).rstrip())
    print("(ages since arrival; a bucket column counts the messages younger than it, "
          "and older than the one before)")
    return EX_OK


def _cells(row: Row, now: float) -> list[str]:
    def ago(ts: float | None) -> str:
        return "-" if ts is None else age(now - ts)

    return [safe_text(row.domain, 80), str(row.messages), str(row.recipients),
            _volume(row.volume), ago(row.oldest), ago(row.newest), *map(str, row.buckets)]


def _volume(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return str(size)
