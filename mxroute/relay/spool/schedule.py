"""PURE: the bytes of the schedule snapshot, ``spool/schedule`` (issue 23).

When each queued message is next due, as the delivery process's schedule held it, so that a
restart need not read every queue file (a cold disk reads 100,000 of them in 6-10 s)::

    b"MXS1 <count> <crc32 of the body, 8 hex> <context>\\n"     the header
    b"<queue ID> <file size> <due, milliseconds since the epoch>\\n" * count, by ID

A due time is rounded down to the millisecond, and one more (never later than the schedule
said). The file size is the queue file's when the snapshot was taken: queue files only grow
(appended S frames), so a file of another size has changed since and is read again.
``context``: what the due times depend on besides the queue files (the suspended domains), a
token without spaces. A snapshot whose header, count or checksum does not match is not used
at all (``ScheduleError``). How it is written and trusted: ``schedulefile`` and
``mxroute.relay.queue.recovery``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

from mxroute.relay.spool.format import QUEUE_ID

MAGIC = b"MXS1"


class ScheduleError(ValueError):
    """A snapshot that does not decode: not used (every queue file is read instead)."""


def encode(entries: Iterable[tuple[str, int, float]], context: str) -> bytes:
    """The snapshot of ``entries`` (queue ID, file size, due) under ``context``."""
    if not context or any(c.isspace() for c in context):
        raise ValueError(f"bad context {context!r}")
    lines = [f"{queue_id} {size} {_millis(due)}\n" for queue_id, size, due in sorted(entries)]
    body = "".join(lines).encode("ascii")
    head = b"%s %d %08x %s\n" % (MAGIC, len(lines), zlib.crc32(body), context.encode("ascii"))
    return head + body


def _millis(due: float) -> int:
    """``due`` in whole milliseconds, rounded down a millisecond more (float rounding can never
    make the decoded time later than ``due``)."""
    return max(0, math.floor(due * 1000) - 1)


def decode(data: bytes) -> tuple[dict[str, tuple[int, float]], str]:
    """(queue ID -> (file size, due), context) of a snapshot; ``ScheduleError`` if damaged."""
    head, newline, body = data.partition(b"\n")
    fields = head.split(b" ")
    if not newline or len(fields) != 4 or fields[0] != MAGIC:
        raise ScheduleError("not a schedule snapshot (bad header)")
    try:
        count, crc, context = int(fields[1]), int(fields[2], 16), fields[3].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ScheduleError("bad header fields") from None
    if zlib.crc32(body) != crc:
        raise ScheduleError("checksum mismatch (torn or damaged)")
    lines = body.split(b"\n")
    if lines.pop() != b"" or len(lines) != count:
        raise ScheduleError(f"{len(lines)} entries, the header says {count}")
    entries: dict[str, tuple[int, float]] = {}
    try:
        for line in lines:
            name, size, due = line.decode("ascii").split(" ")
            if not QUEUE_ID.match(name) or int(size) < 0 or int(due) < 0:
                raise ValueError(line)
            entries[name] = (int(size), int(due) / 1000)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"bad entry: {exc}") from None
    return entries, context


__all__ = ["MAGIC", "ScheduleError", "decode", "encode"]
