"""Start-up recovery from the schedule snapshot (issue 23; DUR-7).

The delivery process writes ``spool/schedule`` (``mxroute.relay.spool.schedulefile``) at a
clean stop and every ``SNAPSHOT_SECONDS``: per queued message its queue file's size and when it
is next due. At start, a listed file whose size is still the snapshot's is scheduled at the
snapshot's time without being read; every other file is read as before (new since the
snapshot, changed since: deferred, held, released, flushed, a torn state record; and the
files the snapshot leaves out: held messages, DSNs with an origin, messages in flight).
A trusted message is validated at its first look (``QueueManager.first_look``): its real state
then decides, a corrupt file goes to ``corrupt/`` with a log line.

Why a stale snapshot is safe: what happens to a message's file without a change of its size
cannot make it due earlier than the snapshot says; a change that makes it due earlier
(release, flush or resume written into the file) appends a state record, so the size differs
and the file is read; the queue manager takes a message out of its schedule while an operator
changes its file, and the sizes are taken before the due times are copied. The due times
also depend on the suspended domains: a snapshot written under other suspensions than those
at start is not used (``context_of``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from typing import TYPE_CHECKING, Any

from mxroute.relay.queue.notices import mark_bounced
from mxroute.relay.queue.suspensions import Suspensions, to_json
from mxroute.relay.spool import schedulefile
from mxroute.relay.spool.format import QUEUE_ID, queue_id_time
from mxroute.relay.spool.store import Spool

if TYPE_CHECKING:
    from mxroute.relay.queue.manager import QueueManager

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 60.0  # the delivery process rewrites the snapshot this often (and at stop)


def context_of(suspensions: Suspensions, now: float) -> str:
    """The snapshot's context: ``-`` without suspended domains, else a checksum of them."""
    current = sorted(json.dumps(to_json(e), sort_keys=True) for e in suspensions.current(now))
    return f"{zlib.crc32(chr(10).join(current).encode()):08x}" if current else "-"


def trusted(spool: Spool, listed: list[str], context: str) -> tuple[dict[str, float], list[str]]:
    """Of ``listed`` (queue IDs to recover), those the snapshot vouches for (ID -> due: the
    file has the size it had then) and the others, to read, in ``listed`` order."""
    found = schedulefile.load(spool.root)
    if found is None:
        return {}, listed
    entries, written = found
    if written != context:
        log.info("schedule snapshot not used: the suspended domains changed since it was "
                 "written; reading every queue file")
        return {}, listed
    sizes = schedulefile.sizes(spool.queue_dir, [q for q in listed if q in entries])
    hinted = {q: entries[q][1] for q, size in sizes.items() if entries[q][0] == size}
    return hinted, [q for q in listed if q not in hinted]


def recover(queue: QueueManager, settle: float = 0.0,
            since: float | None = None) -> tuple[int, int, int]:
    """``queue``'s start-up scan: schedule everything (DUR-7), finish interrupted bounces
    (DSN-12), drop what is done; what the snapshot vouches for is scheduled unread. ``settle``,
    ``since`` (the intake takes mail meanwhile): see ``young``. (Files moved to corrupt/,
    messages scheduled from the snapshot, files read)."""
    spool, timetable = queue.spool, queue.timetable
    listed = spool.ids()
    fresh = young(spool, listed, settle, since)
    corrupt: list[str] = []
    finished: list[str] = []
    origins: list[tuple[str, dict[str, Any]]] = []  # (DSN id, its bounce_of)
    for queue_id in fresh:  # the timetable keys by ID: a notice too is one entry
        timetable.schedule(queue_id, queue.clock() + settle)
    queue.unverified.update(fresh)  # a restarted one's may end in a torn state record
    hinted, unread = trusted(spool, [q for q in listed if q not in fresh],
                             context_of(queue.suspensions, queue.clock()))
    for queue_id, due in hinted.items():
        timetable.schedule(queue_id, due)
    queue.unverified.update(hinted)
    for meta in spool.recover_iter(corrupt, unread):
        if meta.bounce_of and meta.bounce_of.get("queue_id"):
            origins.append((meta.queue_id, meta.bounce_of))
        if meta.done:
            finished.append(meta.queue_id)
        else:
            queue.add(meta)
    for dsn_id, origin in origins:
        _finish_bounce(queue, dsn_id, origin, corrupt)
    for queue_id in finished:
        spool.remove_sync(queue_id)
    queue.wake()
    return len(corrupt), len(hinted), len(unread)


def _finish_bounce(queue: QueueManager, dsn_id: str, origin: dict[str, Any],
                   corrupt: list[str]) -> None:
    """Mark the original of a queued DSN bounced, if the crash came before that (DSN-12)."""
    original_id = str(origin["queue_id"])
    if not QUEUE_ID.match(original_id):
        return
    queue.unverified.discard(original_id)  # read now, whatever the snapshot said
    original = queue.spool.recover_one(original_id, corrupt)
    if original is None:
        return
    batch = int(origin.get("batch", 0))
    if original.bounces > batch:
        return  # already marked
    mark_bounced(original, set(origin.get("recipients", [])), batch + 1)
    if original.done:
        queue.spool.remove_sync(original.queue_id)
        queue.timetable.drop(original.queue_id)
    else:
        queue.spool.update_sync(original)
    log.info("%s: recovered an interrupted bounce (%s)", original.queue_id, dsn_id)


async def first_look(queue: QueueManager, queue_id: str) -> bool:
    """Validate a message scheduled unread (from the snapshot, or a young file) before its file
    is used or changed, as recovery does the files it reads: a torn state record cut off, a
    corrupt file moved to ``corrupt/`` (logged), a finished one removed. False: it is gone."""
    queue.unverified.discard(queue_id)
    bad: list[str] = []
    meta = await asyncio.get_running_loop().run_in_executor(
        None, queue.spool.recover_one, queue_id, bad)
    if meta is not None and not meta.done:
        return True
    if meta is None and not bad:
        log.info("%s: removed from the queue", queue_id)
    elif meta is not None:
        await queue.spool.remove(queue_id)
    queue.timetable.drop(queue_id)
    queue.held.discard(queue_id)
    return False


async def save_schedule(queue: QueueManager) -> int:
    """Write ``queue``'s schedule snapshot: the scheduled messages but the held ones, DSNs of
    an original, those in flight and those with outcomes the disk refused. The file sizes are
    taken before the due times are copied: a file changed after has another size at the next
    start. The entries written."""
    context = context_of(queue.suspensions, queue.clock())
    live = queue.timetable.ids()
    queue.reports &= live | {q for q in queue.reports if queue.busy(q)}
    ids = [q for q in live if q not in queue.held and q not in queue.reports]
    loop = asyncio.get_running_loop()
    sizes = await loop.run_in_executor(None, schedulefile.sizes, queue.spool.queue_dir, ids)
    entries = []
    for queue_id, size in sizes.items():
        due = queue.timetable.due_of(queue_id)
        if (due is None or queue_id in queue.held or queue_id in queue.reports
                or queue.busy(queue_id) or queue.unsaved(queue_id)):
            continue
        entries.append((queue_id, size, due))
    await loop.run_in_executor(None, schedulefile.save, queue.spool.root, entries, context)
    return len(entries)


def young(spool: Spool, listed: list[str], settle: float, since: float | None) -> set[str]:
    """The files recovery leaves unread, tried ``settle`` s later or at their intake's notice:
    with ``settle`` (issue 21), a file that young may be inside its rename -> directory fsync
    window (DUR-3); with ``since`` (issue 23, the intake listening during this recovery), those
    whose queue ID was made at or after ``since`` instead (no stat per file)."""
    if since is not None:
        return {q for q in listed if (queue_id_time(q) or 0.0) >= since}
    return spool.young(settle, listed)


__all__ = ["SNAPSHOT_SECONDS", "context_of", "first_look", "recover", "save_schedule", "trusted",
           "young"]
