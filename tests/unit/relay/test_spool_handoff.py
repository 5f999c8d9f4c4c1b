"""Issue 23 (handoff): the spool's write path in fewer system calls, and files of earlier
versions still read (DUR-1, DUR-2, DUR-6)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from mxroute.relay.spool.format import (
    DELIVERED,
    MAGIC,
    MessageMeta,
    RecipientState,
    decode,
    encode,
    frame,
    new_queue_id,
)
from mxroute.relay.spool.store import Spool

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def _meta(n: int = 2) -> MessageMeta:
    return MessageMeta(
        queue_id=new_queue_id(), sender="a@example.com", arrival=1000.0,
        recipients=[RecipientState(f"r{i}@example.net", ("FAILURE",), None) for i in range(n)],
        client="helo [127.0.0.1]", size=len(MESSAGE),
    )


def _frames(data: bytes) -> list[bytes]:
    """The frame types of a queue file, in order."""
    kinds, offset = [], len(MAGIC)
    while offset < len(data):
        kind, length = data[offset : offset + 1], int.from_bytes(data[offset + 1 : offset + 5])
        kinds.append(kind)
        offset += 5 + length + 4
    return kinds


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    yield s
    s.close()


def test_a_new_message_is_written_with_one_write_and_one_fsync(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, DUR-1: the new queue file reaches the disk in one write (``writev`` of its
    pieces, the message never joined) and one file fsync, then the directory's."""
    calls: list[str] = []
    real = {name: getattr(os, name) for name in ("write", "writev", "fsync")}
    for name, call in real.items():
        def traced(*args: object, _name: str = name, _call: object = call) -> object:
            calls.append(_name)
            return _call(*args)  # type: ignore[operator]
        monkeypatch.setattr(os, name, traced)
    asyncio.run(spool.store(_meta(), (b"Received: x\r\n", MESSAGE)))
    assert calls == ["writev", "fsync", "fsync"]


def test_a_new_message_has_no_state_record_until_its_state_changes(spool: Spool) -> None:
    """Issue 23: a new message's state is its envelope's (every recipient pending): no S record
    is written (nor serialised) until an attempt changes it; then the appended record wins."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    data = spool.path(meta.queue_id).read_bytes()
    assert _frames(data) == [b"E", b"M", b"Z"]
    loaded, message = spool.load(meta.queue_id)
    assert message == MESSAGE and loaded.to_json() == meta.to_json()
    meta.recipients[0].state = DELIVERED
    spool.update_sync(meta)
    assert _frames(spool.path(meta.queue_id).read_bytes()) == [b"E", b"M", b"Z", b"S"]
    assert [r.state for r in spool.load_meta(meta.queue_id).recipients] == [DELIVERED, "pending"]


def test_a_message_stored_with_state_keeps_it(spool: Spool) -> None:
    """Issue 23: a message stored with state beyond the envelope's (e.g. a notice held, or
    retried later) still gets its S record at once."""
    meta = _meta()
    meta.held, meta.recipients[1].next_try = True, 5000.0
    asyncio.run(spool.store(meta, MESSAGE))
    assert _frames(spool.path(meta.queue_id).read_bytes()) == [b"E", b"M", b"Z", b"S"]
    assert spool.load_meta(meta.queue_id).to_json() == meta.to_json()


def test_a_file_written_before_issue_23_is_read_and_delivered_state_kept(
        spool: Spool) -> None:
    """Issue 23 (upgrade with a queue): a file as the spool wrote it before, E, M, Z and a first
    S record, then an appended S, loads with the last state; a new append after it wins."""
    meta = _meta()
    envelope = meta.envelope_json()
    first = {"bounces": 0, "held": False, "recipients": [r.to_json() for r in meta.recipients]}
    later = json.loads(json.dumps(first))
    later["recipients"][0]["state"], later["recipients"][0]["attempts"] = "delivered", 1
    old = (MAGIC + frame(b"E", json.dumps(envelope, separators=(",", ":")).encode())
           + frame(b"M", MESSAGE) + frame(b"Z", b"")
           + frame(b"S", json.dumps(first, separators=(",", ":")).encode())
           + frame(b"S", json.dumps(later, separators=(",", ":")).encode()))
    spool.path(meta.queue_id).write_bytes(old)
    (loaded,), bad = spool.recover()
    assert bad == [] and [r.state for r in loaded.recipients] == [DELIVERED, "pending"]
    assert loaded.recipients[0].attempts == 1 and loaded.pending[0].address == "r1@example.net"
    loaded.recipients[1].state = DELIVERED
    spool.update_sync(loaded)
    assert spool.load_meta(meta.queue_id).done
    assert decode(encode(meta, MESSAGE), meta.queue_id)[0].to_json() == meta.to_json()


def test_short_writes_are_resumed_where_they_stopped(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, DUR-1: a ``writev`` that writes only part of its buffers (a signal, a nearly
    full disk) is continued from the byte where it stopped: the file is the whole message."""
    real = os.writev

    def short(fd: int, buffers: list[memoryview]) -> int:
        return real(fd, [bytes(b"".join(bytes(b) for b in buffers)[:7])])

    monkeypatch.setattr(os, "writev", short)
    meta = _meta()
    asyncio.run(spool.store(meta, (b"Received: x\r\n", MESSAGE, b"tail\r\n")))
    monkeypatch.undo()
    assert spool.path(meta.queue_id).read_bytes() == encode(meta, b"Received: x\r\n"
                                                             + MESSAGE + b"tail\r\n")


def test_a_kept_message_counts_in_the_budget_until_taken(spool: Spool) -> None:
    """Issue 23 (issue 22's bound): a message kept for its first attempt, in the intake or
    handed to the delivery process, counts in the budget until taken; a large one, or one the
    budget has no room for, is not kept (its attempt reads the file)."""
    from mxroute.relay.budget import Budget
    from mxroute.relay.spool.store import FRESH_MESSAGE

    spool.budget = Budget(100)
    spool.budget.force(1)  # something else is held: only what fits is kept
    meta, other = _meta(), _meta()
    assert spool.keep(meta, b"x" * 60)
    assert spool.budget.used == 61
    assert not spool.keep(other, b"y" * 60)
    assert not spool.keep(other, [b"z" * FRESH_MESSAGE, b"z"])
    assert spool.take(meta.queue_id) == (meta, b"x" * 60)
    assert spool.take(meta.queue_id) is None and spool.budget.used == 1
