"""The crash-state model and the strace reader (issue 21): pure test infrastructure, tested
directly (tests/support/crashmodel.py, tests/support/stracefs.py)."""

from __future__ import annotations

import random

from tests.support.crashmodel import Choice, Op, Trace, without
from tests.support.stracefs import parse

ROOT = "/sp"


def _hex(text: str) -> str:
    return "".join(f"\\x{b:02x}" for b in text.encode())


def _store(name: str, data: bytes, *, file_sync: bool = True, dir_sync: bool = True) -> list[Op]:
    """The spool's write of a new message: temp file, fsync, rename, directory fsync."""
    ops = [Op("create", f"tmp/{name}.tmp"), Op("write", f"tmp/{name}.tmp", offset=0, data=data)]
    if file_sync:
        ops.append(Op("fsync", f"tmp/{name}.tmp"))
    ops.append(Op("rename", f"tmp/{name}.tmp", dst=f"queue/{name}"))
    if dir_sync:
        ops.append(Op("fsync", "queue"))
    return ops + [Op("ack", "", text=name)]


def _states(trace: Trace, k: int) -> list[dict[str, bytes]]:
    return [trace.materialize(c).files for c in trace.choices(k, random.Random(1), 8)]


def _dirs() -> list[Op]:
    return [Op("mkdir", "queue"), Op("mkdir", "tmp"), Op("fsync", ".")]


def test_a_synced_store_is_in_queue_whole_in_every_state_after_its_ack() -> None:
    """Issue 21: file fsync + rename + directory fsync: after the ack, every allowed state has
    the file in queue/ with all its bytes."""
    trace = Trace(_dirs() + _store("A1", b"hello"))
    k = len(trace.ops)
    assert trace.acked(k + 1) == {"A1": 0.0}
    for files in _states(trace, k + 1):
        assert files.get("queue/A1") == b"hello"


def test_without_the_file_fsync_the_renamed_file_may_be_empty_torn_or_zeros() -> None:
    """Issue 21: data not ordered before the rename by an fsync: the rename may land first."""
    trace = Trace(_dirs() + _store("A1", b"hello", file_sync=False))
    seen = {files.get("queue/A1") for files in _states(trace, len(trace.ops))}
    assert b"" in seen and b"he" in seen and b"\0" * 5 in seen and b"hello" in seen


def test_without_the_directory_fsync_the_rename_may_not_have_happened() -> None:
    """Issue 21: an unsynced rename: the file may still be under its temporary name."""
    trace = Trace(_dirs() + _store("A1", b"hello", dir_sync=False))
    states = _states(trace, len(trace.ops))
    assert any("queue/A1" not in f and f.get("tmp/A1.tmp") == b"hello" for f in states)
    assert any(f.get("queue/A1") == b"hello" and "tmp/A1.tmp" not in f for f in states)
    assert all(not ("queue/A1" in f and "tmp/A1.tmp" in f) for f in states)  # rename atomic


def test_an_unsynced_append_may_be_torn_but_synced_bytes_stay() -> None:
    """Issue 21: after the fsync of the first append, only the second may be torn or lost."""
    ops = _dirs() + _store("A1", b"head") + [
        Op("write", "queue/A1", data=b"-s1"), Op("fsync", "queue/A1"),
        Op("write", "queue/A1", data=b"-s2"),
    ]
    trace = Trace(ops)
    seen = {f["queue/A1"] for f in _states(trace, len(ops))}
    assert seen <= {b"head-s1", b"head-s1-", b"head-s1-s2", b"head-s1\0\0\0"}
    assert {b"head-s1", b"head-s1-s2", b"head-s1-"} <= seen


def test_an_unsynced_unlink_may_be_undone_a_synced_one_not() -> None:
    """Issue 21: removal is unlink + directory fsync."""
    ops = _dirs() + _store("A1", b"x") + [Op("unlink", "queue/A1")]
    trace = Trace(ops)
    assert {("queue/A1" in f) for f in _states(trace, len(ops))} == {True, False}
    synced = Trace(ops + [Op("fsync", "queue")])
    assert all("queue/A1" not in f for f in _states(synced, len(synced.ops)))


def test_an_unsynced_mkdir_may_vanish_with_its_files() -> None:
    """Issue 21: a directory's entry needs its parent's fsync (the finding in Spool.prepare)."""
    ops = [Op("mkdir", "queue"), Op("mkdir", "tmp")] + _store("A1", b"x")
    trace = Trace(ops)
    assert any("queue" not in trace.materialize(c).dirs
               for c in trace.choices(len(ops), random.Random(1), 8))


def test_crash_points_and_the_switch_that_drops_an_fsync() -> None:
    """Issue 21: one crash point per change or sync; ``without`` removes ops (test switch)."""
    ops = _dirs() + _store("A1", b"x")
    trace = Trace(ops)
    assert trace.points() == list(range(1, len(ops)))  # the ack is not a crash point of its own
    assert trace.acked(len(ops) - 1) == {}
    dropped = without(ops, lambda op: op.kind == "fsync" and op.path == "queue")
    assert len(dropped) == len(ops) - 1
    bare = Choice(len(dropped), frozenset(), ())
    assert "queue/A1" not in Trace(dropped).materialize(bare).files


def test_stracefs_reads_writes_renames_fsyncs_and_acks() -> None:
    """Issue 21: strace -f -ttt -y -xx lines, one of them split across two threads."""
    tmp, final = _hex(f"{ROOT}/tmp/A1.tmp"), _hex(f"{ROOT}/queue/A1")
    lines = [
        (f'10 1.000001 openat(AT_FDCWD<{_hex("/")}>, "{tmp}", O_WRONLY|O_CREAT|O_EXCL, 0600)'
        f" = 5<{tmp}>"),
        f'11 1.000002 write(5<{tmp}>, "{_hex("hel")}", 3 <unfinished ...>',
        f'12 1.000003 write(7<{_hex("socket:[99]")}>, "{_hex("250 2.0.0 Ok: x")}", 3) = 3',
        "11 1.000004 <... write resumed>) = 3",
        f'11 1.000005 write(5<{tmp}>, "{_hex("lo")}", 2) = 2',
        f"11 1.000006 fsync(5<{tmp}>) = 0",
        f'11 1.000007 rename("{tmp}", "{final}") = 0',
        f"11 1.000008 fsync(6<{_hex(ROOT + '/queue')}>) = 0",
        (f'12 1.000009 sendto(7<{_hex("socket:[99]")}>, '
        f'"{_hex("250 2.0.0 Ok: queued as A1")}\\x0d\\x0a", 28, 0, NULL, 0) = 28'),
        (f'13 1.000010 openat(AT_FDCWD<{_hex("/")}>, "{_hex("/etc/x")}", O_RDONLY) = 3'
        f'<{_hex("/etc/x")}>'),
    ]
    ops = parse("\n".join(lines), ROOT)
    assert [(o.kind, o.path, o.dst, o.offset, o.data, o.text) for o in ops] == [
        ("create", "tmp/A1.tmp", "", -1, b"", ""),
        ("write", "tmp/A1.tmp", "", 0, b"hel", ""),
        ("write", "tmp/A1.tmp", "", 3, b"lo", ""),
        ("fsync", "tmp/A1.tmp", "", -1, b"", ""),
        ("rename", "tmp/A1.tmp", "queue/A1", -1, b"", ""),
        ("fsync", "queue", "", -1, b"", ""),
        ("ack", "", "", -1, b"", "A1"),
    ]
    assert ops[-1].at == 1.000009
