"""The schedule snapshot on disk, ``spool/schedule`` (issue 23): written, read, checked.

Written by the delivery process (``mxroute.relay.queue.recovery``): ``schedule.tmp`` in the
spool, fsync'd, renamed over ``schedule``, the spool directory fsync'd. A crash leaves the
previous snapshot or the new one, whole; a damaged one is refused by its checksum and every
queue file is read, as without one. The snapshot is a hint: deleting it is always safe (the
next start reads every queue file). The bytes: ``schedule``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from mxroute.relay.spool.schedule import ScheduleError, decode, encode

log = logging.getLogger(__name__)

NAME = "schedule"


def save(root: Path, entries: Iterable[tuple[str, int, float]], context: str) -> None:
    """Replace ``root``/schedule with ``entries`` (queue ID, file size, due), atomically."""
    data = encode(entries, context)
    tmp = os.path.join(root, NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(root, NAME))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(root: Path) -> tuple[dict[str, tuple[int, float]], str] | None:
    """(queue ID -> (file size, due), context) of ``root``'s snapshot; None when there is none
    or it cannot be used (said in the log: every queue file is then read)."""
    try:
        with open(os.path.join(root, NAME), "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the schedule snapshot: %s; reading every queue file", exc)
        return None
    try:
        return decode(data)
    except ScheduleError as exc:
        log.warning("schedule snapshot not used (%s); reading every queue file", exc)
        return None


def sizes(queue_dir: Path, ids: Iterable[str]) -> dict[str, int]:
    """The file size of each of ``ids`` in ``queue_dir`` (one ``stat`` each; a file gone is
    left out)."""
    found: dict[str, int] = {}
    fd = os.open(queue_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for queue_id in ids:
            try:
                found[queue_id] = os.stat(queue_id, dir_fd=fd).st_size
            except FileNotFoundError:
                continue
    finally:
        os.close(fd)
    return found


__all__ = ["NAME", "load", "save", "sizes"]
