"""Explore the crash states of a recording: recover each, count what an acknowledged message
lost (issue 21).

``explore(rec, scratch)`` takes every crash point of the recorded trace (or, past
``max_points``, a fixed-seed sample), the allowed on-disk states there (``crashmodel``),
writes each distinct one into ``scratch`` and runs the spool's own start-up recovery on it in
this process (``Spool.prepare``, ``clean_temp``, ``QueueManager.recover``: what ``serve``
runs before it listens). Then, for every recipient of every message whose ``250`` was written
before the crash point: delivered before it (the sink said so), still pending in a queue file,
or its failure still owed by a queued DSN or already notified; otherwise **lost**. Also
counted: duplicates (delivered before the crash point and pending again: explained when the
synced state did not yet record it — the window between the remote ``250`` and the fsync'd
state record), files recovery could not read (moved to ``corrupt/``, and whether it logged
each), temporary files left behind, recovery crashes, and (issue 23) pending messages recovery
left out of its schedule or scheduled later than their file's next try (a stale
``spool/schedule`` snapshot may only make a message due earlier).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.crashmodel import Choice, Disk, Op, Trace, without
from tests.support.crashrecord import Recording


@dataclass
class Finding:
    """One state that lost something: enough to rebuild it as a regression test."""

    point: int
    op: str  # the last op before the crash
    choice: Choice
    lost: list[str]


@dataclass
class Report:
    points: int = 0
    sampled: bool = False
    states: int = 0  # distinct states recovered
    acked_checked: int = 0  # acknowledged recipients checked, summed over states
    lost: int = 0
    duplicated: int = 0
    unexplained_duplicates: int = 0
    unreadable: int = 0
    unlogged: int = 0
    temp_left: int = 0
    recovery_crashes: int = 0
    unscheduled: int = 0  # pending messages recovery did not schedule (issue 23)
    late: int = 0  # ... scheduled later than their file's next try (a stale snapshot)
    snapshot_states: int = 0  # states whose recovery took messages from spool/schedule
    findings: list[Finding] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {"crash_points": self.points, "sampled": self.sampled, "states": self.states,
                "acked_recipients_checked": self.acked_checked, "lost": self.lost,
                "duplicated": self.duplicated,
                "unexplained_duplicates": self.unexplained_duplicates,
                "unreadable": self.unreadable, "unreadable_unlogged": self.unlogged,
                "temp_files_left": self.temp_left, "recovery_crashes": self.recovery_crashes,
                "unscheduled": self.unscheduled, "scheduled_late": self.late,
                "states_with_snapshot_entries": self.snapshot_states}


class _Quarantined(logging.Handler):
    """The queue IDs the spool logged as moved to ``corrupt/``."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.ids: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if "corrupt queue file" in record.getMessage():
            self.ids.add(str(record.args[0]) if record.args else "")  # type: ignore[index]


def write_disk(disk: Disk, root: Path) -> None:
    """Materialize ``disk`` under ``root`` (emptied first)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, mode=0o700)
    for name in sorted(disk.dirs, key=len):
        (root / name).mkdir(mode=0o700, exist_ok=True)
    for name, data in disk.files.items():
        path = root / name
        path.write_bytes(data)
        os.chmod(path, 0o600)


@dataclass
class Recovered:
    """What the queue holds after start-up recovery."""

    pending: dict[str, set[str]]  # queue ID -> pending recipients
    owed: dict[str, set[str]]  # original queue ID -> recipients a queued DSN reports
    corrupt: set[str]
    logged: set[str]
    temp: int
    held: set[str] = field(default_factory=set)
    unscheduled: list[str] = field(default_factory=list)  # pending, not in the schedule
    late: list[str] = field(default_factory=list)  # scheduled after the file's next try
    hinted: int = 0  # scheduled from the schedule snapshot, unread (issue 23)


def recover(root: Path, settings: Any) -> Recovered:
    """``serve``'s start-up on ``root``: prepare, clean temporary files, recover the queue."""
    from mxroute.relay.queue.manager import QueueManager
    from mxroute.relay.spool.format import PENDING
    from mxroute.relay.spool.store import Spool

    handler = _Quarantined()
    logger = logging.getLogger("mxroute.relay.spool.store")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the lines we count, whatever the run's log level
    logger.addHandler(handler)
    spool = Spool(root, threads=2)
    try:
        spool.prepare()
        spool.clean_temp(max_age=0.0)  # as serve: under the lock
        queue = QueueManager(settings, spool, None, None)  # type: ignore[arg-type]
        queue.recover()
        pending: dict[str, set[str]] = {}
        owed: dict[str, set[str]] = {}
        held: set[str] = set()
        unscheduled: list[str] = []
        late: list[str] = []
        for meta in spool.scan():
            due, wanted = queue.timetable.due_of(meta.queue_id), meta.next_due()
            if meta.held:
                held.add(meta.queue_id)
            elif wanted is not None and due is None:
                unscheduled.append(meta.queue_id)
            elif wanted is not None and due is not None and due > wanted:
                late.append(meta.queue_id)
            pending[meta.queue_id] = {r.address.lower() for r in meta.recipients
                                      if r.state == PENDING}
            origin = meta.bounce_of or {}
            if origin.get("queue_id") and meta.pending:
                owed.setdefault(str(origin["queue_id"]), set()).update(
                    a.lower() for a in origin.get("recipients", []))
    finally:
        spool.close()
        logger.removeHandler(handler)
        logger.setLevel(level)
    corrupt = {p.name for p in (root / "corrupt").iterdir()}
    return Recovered(pending, owed, corrupt, handler.ids, len(os.listdir(root / "tmp")), held,
                     unscheduled, late, len(queue.unverified))


def settings_for(root: Path) -> Any:
    from mxroute.settings import Settings

    return Settings(spool_dir=root, dns_servers=["127.0.21.53"],  # never asked: no delivery
                    helo_name="relay.test", allow_private_destinations=True)


class Explorer:
    """The checks of one recording at its crash points (``run``)."""

    def __init__(self, rec: Recording, scratch: Path, ops: list[Op] | None = None) -> None:
        self.rec = rec
        self.trace = Trace(ops if ops is not None else rec.ops)
        self.scratch = scratch
        self.settings = settings_for(scratch / "spool")
        self.report = Report()
        self._seen: set[Any] = set()
        # (acknowledged recipients still queued, point, choice): states worth a real serve
        self.busiest: list[tuple[int, int, Choice]] = []

    def run(self, *, max_points: int = 0, randoms: int = 4, seed: int = 21,
            stop_at_loss: bool = False) -> Report:
        rng = random.Random(seed)
        points = self.trace.points()
        if max_points and len(points) > max_points:
            points = sorted(rng.sample(points, max_points))
            self.report.sampled = True
        self.report.points = len(points)
        for k in points:
            for choice in self.trace.choices(k, rng, randoms):
                self.check(choice)
                if stop_at_loss and self.report.lost:
                    return self.report
        return self.report

    def check(self, choice: Choice) -> Recovered | None:
        """Recover one state and count what it shows; None if the same state was seen."""
        k = choice.k
        disk = self.trace.materialize(choice)
        acked = self.trace.acked(k)
        key = (disk.key(), frozenset(acked))
        if key in self._seen:
            return None
        self._seen.add(key)
        root = self.scratch / "spool"
        write_disk(disk, root)
        self.report.states += 1
        try:
            got = recover(root, self.settings)
        except Exception as exc:  # noqa: BLE001 -- recovery must never crash: count, show it
            self.report.recovery_crashes += 1
            self.report.crashes.append(f"point {k}: {exc!r}")
            return None
        now = self.trace.ops[k - 1].at
        lost = self._lost(acked, now, got)
        self.report.lost += len(lost)
        if lost:
            op = self.trace.ops[k - 1]
            self.report.findings.append(Finding(k, f"{op.kind} {op.path} {op.dst}".strip(),
                                                choice, lost))
        self.report.unreadable += len(got.corrupt)
        self.report.unlogged += len(got.corrupt - got.logged)
        self.report.temp_left += got.temp
        self.report.unscheduled += len(got.unscheduled)
        self.report.late += len(got.late)
        self.report.snapshot_states += got.hinted > 0
        self._duplicates(k, now, got)
        queued = sum(len(got.pending.get(q, ())) for q in acked)
        if queued:
            self.busiest.append((queued, k, choice))
        return got

    def _lost(self, acked: dict[str, float], now: float, got: Recovered) -> list[str]:
        delivered = {r for at, r in self.rec.delivered if at < now}
        notified = {r for at, r in self.rec.notified if at < now}
        lost = []
        for queue_id in acked:
            if self.rec.deleted.get(queue_id, now) < now:
                continue  # `mxroute queue delete` removed it, as asked
            for rcpt in self.rec.recipients.get(queue_id, []):
                self.report.acked_checked += 1
                if (rcpt in delivered or rcpt in notified
                        or rcpt in got.pending.get(queue_id, ())
                        or rcpt in got.owed.get(queue_id, ())):
                    continue
                lost.append(f"{queue_id} {rcpt}")
        return lost

    def _duplicates(self, k: int, now: float, got: Recovered) -> None:
        delivered = Counter(r for at, r in self.rec.delivered if at < now)
        again = {r for rcpts in got.pending.values() for r in rcpts} & set(delivered)
        if not again:
            return
        self.report.duplicated += len(again)
        floor = self._floor(k)
        self.report.unexplained_duplicates += len(again - floor)

    def _floor(self, k: int) -> set[str]:
        """Recipients pending in the synced state at ``k`` (nothing unsynced persisted)."""
        from mxroute.relay.spool.format import PENDING, CorruptFile, decode

        bare = Choice(k, frozenset(), tuple((i, 0, "whole")
                                            for i in self.trace.split(k)[3]))
        found: set[str] = set()
        for path, data in self.trace.materialize(bare).files.items():
            if path.startswith("queue/"):
                try:
                    meta, _, _ = decode(data, path[6:])
                except CorruptFile:
                    continue
                found |= {r.address.lower() for r in meta.recipients if r.state == PENDING}
        return found


def sample(explorer: Explorer, count: int) -> list[Choice]:
    """``count`` states for a real ``serve``: the busiest at distinct crash points, spread over
    the trace (deterministic)."""
    best: dict[int, tuple[int, Choice]] = {}
    for queued, k, choice in explorer.busiest:
        if k not in best or queued > best[k][0]:
            best[k] = (queued, choice)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))
    if not ranked:
        return []
    step = max(1, len(ranked) // count)
    return [choice for _, (_, choice) in ranked[::step][:count]]


def drop_file_fsync(op: Op) -> bool:
    """The switch: a new queue file's fsync before its rename never happened."""
    return op.kind == "fsync" and op.path.startswith("tmp/")


def drop_dir_fsync(op: Op) -> bool:
    """The switch: the queue directory's fsync never happened."""
    return op.kind == "fsync" and op.path == "queue"


def explore(rec: Recording, scratch: Path, drop: Callable[[Op], bool] | None = None,
            **kw: Any) -> Report:
    ops = without(rec.ops, drop) if drop is not None else rec.ops
    return Explorer(rec, scratch, ops).run(**kw)


__all__ = [
    "Explorer",
    "Finding",
    "Recovered",
    "Report",
    "drop_dir_fsync",
    "drop_file_fsync",
    "explore",
    "recover",
    "sample",
    "settings_for",
    "write_disk",
]
