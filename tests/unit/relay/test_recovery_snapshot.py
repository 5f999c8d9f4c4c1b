"""Start-up recovery with the schedule snapshot (issue 23, DUR-7): which files are trusted
unread, which are read, and the first look at a trusted one. In process, on real files."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from mxroute.relay.queue.manager import QueueManager
from mxroute.relay.spool.format import MessageMeta, RecipientState, new_queue_id
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
LATER = time.time() + 3600


def _settings(root: Path) -> Settings:
    return Settings(spool_dir=root, dns_servers=["127.0.52.53"], helo_name="relay.test")


def _queue(root: Path) -> QueueManager:
    spool = Spool(root, threads=2)
    spool.prepare()
    return QueueManager(_settings(root), spool, None, None)  # type: ignore[arg-type]


def _store(queue: QueueManager, rcpt: str, due: float = LATER, **kw: Any) -> MessageMeta:
    meta = MessageMeta(queue_id=new_queue_id(), sender="a@sender.test", arrival=time.time(),
                       recipients=[RecipientState(address=rcpt, next_try=due)], **kw)
    asyncio.run(queue.spool.store(meta, MESSAGE))
    return meta


def _restart(root: Path, old: QueueManager) -> QueueManager:
    """A clean stop (the snapshot written) and a new queue manager on the same spool."""
    asyncio.run(old.save_schedule())
    old.spool.close()
    queue = _queue(root)
    queue.recover()
    return queue


@pytest.fixture
def first(tmp_path: Path) -> QueueManager:
    return _queue(tmp_path)


def test_unchanged_files_come_from_the_snapshot_changed_ones_are_read(
        tmp_path: Path, first: QueueManager, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23: after a clean stop, unchanged files are scheduled unread at the snapshot's time
    (never later); a file changed since (a state record appended), a held one and a new one
    are read; a file gone since is dropped."""
    same, changed, gone, held = (_store(first, f"{n}@dest.test") for n in "abcd")
    first.recover()
    assert len(first.timetable) == 4
    asyncio.run(first.save_schedule())
    changed.recipients[0].next_try = 1.0  # due earlier: must be read, not taken from the snapshot
    asyncio.run(first.spool.update(changed))
    held.held = True
    asyncio.run(first.spool.update(held))
    asyncio.run(first.spool.remove(gone.queue_id))
    new = _store(first, "e@dest.test")
    first.spool.close()
    with caplog.at_level(logging.INFO):
        queue = _queue(tmp_path)
        assert queue.recover() == 4
    assert "1 from the schedule snapshot, 3 file(s) read" in caplog.text
    assert queue.unverified == {same.queue_id}
    due = queue.timetable.due_of(same.queue_id)
    assert due is not None and LATER - 0.01 < due <= LATER
    assert queue.timetable.due_of(changed.queue_id) == 1.0
    assert queue.held == {held.queue_id}
    assert queue.timetable.due_of(new.queue_id) == LATER
    assert not queue.timetable.knows(gone.queue_id)


def test_a_damaged_snapshot_is_not_used(tmp_path: Path, first: QueueManager,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23: a snapshot that fails its checksum is ignored with a log line: every file read."""
    for n in "ab":
        _store(first, f"{n}@dest.test")
    first.recover()
    asyncio.run(first.save_schedule())
    path = tmp_path / "schedule"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        queue = _queue(tmp_path)
        assert queue.recover() == 2
    assert "schedule snapshot not used (checksum mismatch" in caplog.text
    assert queue.unverified == set()


def test_snapshot_of_other_suspensions_is_not_used(tmp_path: Path, first: QueueManager) -> None:
    """Issue 23: due times depend on the suspended domains; a domain suspended since the
    snapshot (or lifted) makes the whole snapshot unused."""
    _store(first, "a@dest.test")
    first.recover()
    asyncio.run(first.save_schedule())
    first.suspensions.suspend(["dest.test"], "test", time.time(), None)
    first.suspensions.save()
    queue = _queue(tmp_path)
    queue.recover()
    assert queue.unverified == set()


def test_first_look_quarantines_a_damaged_file(
        tmp_path: Path, first: QueueManager, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23: a file trusted unread is validated at its first look: damaged (same size) ->
    corrupt/ with the log line, out of the schedule; a good one goes on, looked at once."""
    good, bad = (_store(first, f"{n}@dest.test") for n in "ab")
    first.recover()
    queue = _restart(tmp_path, first)
    assert queue.unverified == {good.queue_id, bad.queue_id}
    path = queue.spool.path(bad.queue_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        assert asyncio.run(queue.first_look(good.queue_id)) is True
        assert asyncio.run(queue.first_look(bad.queue_id)) is False
    assert f"{bad.queue_id}: corrupt queue file moved to corrupt/" in caplog.text
    assert (tmp_path / "corrupt" / bad.queue_id).exists()
    assert not queue.timetable.knows(bad.queue_id)
    assert queue.unverified == set()
    assert asyncio.run(queue.first_look(good.queue_id)) is True  # looked at once only


def test_first_look_cuts_a_torn_state_record(tmp_path: Path, first: QueueManager) -> None:
    """Issue 23 (DUR-6): a state record torn by a power cut after the snapshot's size was taken
    (the size matches, its tail is zeros) is cut at the first look, so the next one counts."""
    meta = _store(first, "a@dest.test")
    path = first.spool.path(meta.queue_id)
    with open(path, "ab") as file:
        file.write(b"\0" * 40)
    first.recover()  # recovery cuts it; put it back as the power cut left it
    with open(path, "ab") as file:
        file.write(b"\0" * 40)
    size = path.stat().st_size
    queue = _restart(tmp_path, first)
    assert meta.queue_id in queue.unverified
    assert asyncio.run(queue.first_look(meta.queue_id)) is True
    assert path.stat().st_size == size - 40
    meta.recipients[0].next_try = 5.0
    asyncio.run(queue.spool.update(meta))
    assert queue.spool.load_meta(meta.queue_id).recipients[0].next_try == 5.0
