"""The spool's on-disk format and its durability rules (checklist H: DUR-1..7)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mxroute.errors import ConfigError, SpoolError
from mxroute.relay.spool.format import (
    BOUNCED,
    DELIVERED,
    MAGIC,
    QUEUE_ID,
    CorruptFile,
    MessageMeta,
    RecipientState,
    decode,
    encode,
    frame,
    new_queue_id,
)
from mxroute.relay.spool.store import Spool, unsafe_spool_dir

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n.leading dot\r\n"


def _meta(queue_id: str | None = None, n: int = 2) -> MessageMeta:
    return MessageMeta(
        queue_id=queue_id or new_queue_id(),
        sender="a@example.com",
        arrival=1000.0,
        recipients=[
            RecipientState(f"r{i}@example.net", ("FAILURE",), f"rfc822;R{i}@example.net")
            for i in range(n)
        ],
        ret="HDRS",
        envid="ENV+1",
        body="8BITMIME",
        client="helo [127.0.0.1]",
        size=len(MESSAGE),
    )


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    yield s
    s.close()


def test_round_trip_keeps_envelope_dsn_parameters_and_bytes(spool: Spool) -> None:
    """DUR-1/DSN-8: the envelope with every DSN parameter and the exact bytes come back."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    loaded, message = spool.load(meta.queue_id)
    assert message == MESSAGE
    assert loaded.to_json() == meta.to_json()
    assert loaded.envelope().recipients[0].orcpt == "rfc822;R0@example.net"


def test_state_appends_win_and_survive_reload(spool: Spool) -> None:
    """DUR-6: per-recipient state is persisted as it changes; the last snapshot wins."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    meta.recipients[0].state = DELIVERED
    meta.recipients[1].attempts, meta.recipients[1].next_try = 1, 2000.0
    meta.recipients[1].hosts["mx1[127.0.0.2]:25"] = "451 4.3.0 try later"
    asyncio.run(spool.update(meta))
    meta.recipients[1].state = BOUNCED
    spool.update_sync(meta)
    loaded = spool.load_meta(meta.queue_id)
    assert [r.state for r in loaded.recipients] == [DELIVERED, BOUNCED]
    assert loaded.recipients[1].hosts == {"mx1[127.0.0.2]:25": "451 4.3.0 try later"}
    assert loaded.done


def test_dsn6_remote_reply_flag_persists_and_old_state_records_load(spool: Spool) -> None:
    """DSN-6: whether ``reply`` is the remote's own reply survives a reload; a state record written
    before the field existed still loads, as "not the remote's reply" (no claim made)."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    meta.recipients[0].reply, meta.recipients[0].remote_reply = "550 5.1.1 no such user", True
    meta.recipients[1].reply = "451 4.4.1 connect to mx1[127.0.0.2]:25: Connection refused"
    spool.update_sync(meta)
    loaded = spool.load_meta(meta.queue_id)
    assert [(r.reply, r.remote_reply) for r in loaded.recipients] == [
        ("550 5.1.1 no such user", True),
        ("451 4.4.1 connect to mx1[127.0.0.2]:25: Connection refused", False),
    ]
    old = {  # a recipient's state exactly as the spool wrote it before remote_reply existed
        "address": "r0@example.net", "notify": ["FAILURE"], "orcpt": None, "state": "pending",
        "attempts": 2,
        "next_try": 2000.0, "status": "4.4.1",
        "reply": "451 4.4.1 connect to mx1[127.0.0.2]:25: Connection refused",
        "why": "deferred", "hosts": {"mx1[127.0.0.2]:25": "451 4.4.1 try later"}, "warned": False,
    }
    with spool.path(meta.queue_id).open("ab") as f:
        f.write(frame(b"S", json.dumps({"recipients": [old], "bounces": 0}).encode()))
    [rcpt] = spool.load_meta(meta.queue_id).recipients
    assert (rcpt.attempts, rcpt.status, rcpt.remote_reply) == (2, "4.4.1", False)
    assert rcpt.hosts == {"mx1[127.0.0.2]:25": "451 4.4.1 try later"}


def test_torn_state_append_is_ignored_not_corrupt(spool: Spool) -> None:
    """A crash mid-append: that change never happened, the message is intact (DUR-6)."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    path = spool.path(meta.queue_id)
    good = path.read_bytes()
    meta.recipients[0].state = DELIVERED
    spool.update_sync(meta)
    full = path.read_bytes()
    for cut in range(len(good), len(full)):
        loaded, message, end = decode(full[:cut], meta.queue_id)
        assert loaded.recipients[0].state == "pending" and message == MESSAGE and end == len(good)


def test_truncation_at_every_offset_never_yields_a_message() -> None:
    """DUR-2: a file cut anywhere before END is corrupt, never a partial message."""
    meta = _meta("ABCDEF0123456789")
    data = encode(meta, MESSAGE)
    accepted = 0
    for cut in range(len(data)):
        try:
            _, message, _ = decode(data[:cut], meta.queue_id)
        except CorruptFile:
            continue
        assert message == MESSAGE  # only possible once E, M and Z are complete
        accepted += 1
    end_marker = data.index(b"Z\x00\x00\x00\x00") + 9
    assert accepted == len(data) - end_marker  # exactly the cuts after END decode


@hsettings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_detected_or_harmless(position: int, xor: int) -> None:
    """DUR-2: checksums catch a flipped byte in E/M/Z; a flip in the trailing S record only drops
    that record."""
    meta = _meta("ABCDEF0123456789")
    data = bytearray(encode(meta, MESSAGE))
    position %= len(data)
    data[position] ^= xor
    try:
        loaded, message, _ = decode(bytes(data), meta.queue_id)
    except CorruptFile:
        return
    assert message == MESSAGE
    assert [r.address for r in loaded.recipients] == [r.address for r in meta.recipients]


def test_recovery_moves_corrupt_files_aside_with_a_log_line(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """DUR-2/DUR-7: recovery keeps good messages and moves bad ones to corrupt/."""
    good, bad = _meta(), _meta()
    asyncio.run(spool.store(good, MESSAGE))
    asyncio.run(spool.store(bad, MESSAGE))
    path = spool.path(bad.queue_id)
    path.write_bytes(path.read_bytes()[:40])
    (spool.queue_dir / "notanid.x").write_bytes(b"junk")  # ignored: not a queue ID
    metas, corrupt = spool.recover()
    assert [m.queue_id for m in metas] == [good.queue_id]
    assert corrupt == [bad.queue_id]
    assert (spool.corrupt_dir / bad.queue_id).exists() and not path.exists()
    assert any(
        "corrupt" in r.getMessage() and bad.queue_id in r.getMessage() for r in caplog.records
    )


def test_old_temp_files_are_cleaned_young_ones_kept(tmp_path: Path) -> None:
    """DUR-5: an intake that crashed before its 250 leaves a temp file; it goes after a day."""
    now = [1_000_000.0]
    s = Spool(tmp_path / "sp", clock=lambda: now[0])
    s.prepare()
    old, young = s.tmp_dir / "A.tmp", s.tmp_dir / "B.tmp"
    old.write_bytes(b"partial")
    young.write_bytes(b"partial")
    os.utime(old, (now[0] - 90000, now[0] - 90000))
    os.utime(young, (now[0] - 60, now[0] - 60))
    assert s.clean_temp() == ["A.tmp"]
    assert young.exists() and not old.exists()
    assert s.recover() == ([], [])  # temp files are never messages
    s.close()


def test_spool_dirs_are_private_and_open_spool_is_refused(tmp_path: Path, spool: Spool) -> None:
    """DUR-3: directories 0700, files 0600; a world-readable spool is refused."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    assert stat.S_IMODE(spool.queue_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.path(meta.queue_id).stat().st_mode) == 0o600
    open_root = tmp_path / "open"
    open_root.mkdir(mode=0o755)
    open_root.chmod(0o755)  # as `mkdir` under umask 022 makes it (the benchmark does)
    Spool(open_root).prepare()  # ours: tightened, not refused
    assert stat.S_IMODE(open_root.stat().st_mode) == 0o700


def test_spool_that_cannot_be_made_private_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DUR-3: a spool owned by someone else is refused at start-up (issue 21: exit 78)."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    foreign.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: 123456)  # not the owner
    with pytest.raises(ConfigError, match="not by the service user") as caught:
        Spool(foreign).prepare()
    assert caught.value.exit_code == 78


@pytest.mark.parametrize(("mode", "owner", "word"), [
    (0o777, 0, "others"), (0o703, 0, "others"), (0o770, 0, "its group"), (0o720, 0, "its group"),
    (0o700, 5, "uid 5"),
])
def test_unsafe_spool_dir_names_the_problem(mode: int, owner: int, word: str) -> None:
    """DUR-3, issue 21: writable by group or others, or another user's: refused, saying which."""
    assert word in (unsafe_spool_dir(0o40000 | mode, owner, 0) or "")


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o711])
def test_a_spool_others_can_only_read_is_not_unsafe(mode: int) -> None:
    """DUR-3, issue 21: readable only: tightened by prepare(), not refused."""
    assert unsafe_spool_dir(mode, 7, 7) is None


def test_queue_ids_are_unique_and_sortable_even_with_a_stuck_clock() -> None:
    """DUR-3: 10k IDs from one instant never collide."""
    ids = [new_queue_id(lambda: 1234.5) for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert all(QUEUE_ID.match(i) for i in ids)
    assert new_queue_id(lambda: 1.0) < new_queue_id(lambda: 2.0)


def test_disk_full_gives_452_and_leaves_no_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DUR-4: ENOSPC during write → 452 4.3.1, no temp and no queue file (one writev since
    issue 23)."""
    real_write = os.writev

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(SpoolError) as info:
        asyncio.run(spool.store(_meta(), MESSAGE))
    monkeypatch.setattr(os, "writev", real_write)
    assert info.value.smtp_reply().startswith("452 4.3.1")
    assert list(spool.tmp_dir.iterdir()) == [] and spool.ids() == []
    asyncio.run(spool.store(_meta(), MESSAGE))  # space back: intake resumes without a restart
    assert len(spool.ids()) == 1


def test_eio_on_fsync_gives_451(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """DUR-4: EIO from fsync → 451 4.3.0, never a stored message."""
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(SpoolError) as info:
        asyncio.run(spool.store(_meta(), MESSAGE))
    assert info.value.smtp_reply().startswith("451 4.3.0")
    assert spool.ids() == [] and list(spool.tmp_dir.iterdir()) == []


def test_fsync_file_then_rename_then_fsync_dir(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DUR-1: fsync(file) < os.replace < fsync(queue dir) < store() returns (and so < the 250)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        real_fsync(fd)
        events.append(f"fsync-{kind}")

    def replace(src: object, dst: object) -> None:
        real_replace(src, dst)  # type: ignore[arg-type]
        events.append("replace")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    asyncio.run(spool.store(_meta(), MESSAGE))
    events.append("returned")
    assert events == ["fsync-file", "replace", "fsync-dir", "returned"]


def test_concurrent_stores_share_directory_fsyncs(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: 50 concurrent stores, every one covered by a dir fsync, fewer dir fsyncs than
    stores."""
    dir_syncs = [0]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            dir_syncs[0] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def many() -> None:
        await asyncio.gather(*(spool.store(_meta(), MESSAGE) for _ in range(50)))

    asyncio.run(many())
    assert len(spool.ids()) == 50
    assert 1 <= dir_syncs[0] <= 50


def test_deleted_message_is_not_recreated_by_a_state_update(spool: Spool) -> None:
    """`mxroute queue delete` while delivering: the daemon's append fails, nothing reappears."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    assert spool.remove_sync(meta.queue_id)
    with pytest.raises(FileNotFoundError):
        spool.update_sync(meta)
    assert not spool.exists(meta.queue_id)
    assert not spool.remove_sync(meta.queue_id)


def test_bad_magic_and_unknown_version_are_corrupt() -> None:
    data = encode(_meta("ABCDEF0123456789"), MESSAGE)
    with pytest.raises(CorruptFile):
        decode(b"MXQ9\n" + data[len(MAGIC):], "ABCDEF0123456789")
    with pytest.raises(CorruptFile):
        decode(b"", "ABCDEF0123456789")


def test_queue_id_paths_cannot_escape_the_spool(spool: Spool) -> None:
    with pytest.raises(SpoolError):
        spool.path("../../etc/passwd")


def test_recovery_cuts_a_torn_state_record_so_later_appends_count(spool: Spool) -> None:
    """DUR-6/DUR-7: after a crash mid-append, the torn bytes are cut at start-up; the next state
    append is read."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    path = spool.path(meta.queue_id)
    with open(path, "ab") as handle:
        handle.write(b"S\x00\x00\x01\x00{\"recipi")  # a crash in the middle of an append
    (recovered,), _ = spool.recover()
    assert recovered.recipients[0].state == "pending"
    meta.recipients[0].state = DELIVERED
    spool.update_sync(meta)
    assert spool.load_meta(meta.queue_id).recipients[0].state == DELIVERED


def test_failed_state_append_leaves_no_torn_record(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DUR-4/DUR-6: ENOSPC while appending state: the file is cut back, the old state stands."""
    meta = _meta()
    asyncio.run(spool.store(meta, MESSAGE))
    size = spool.path(meta.queue_id).stat().st_size
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    meta.recipients[0].state = DELIVERED
    with pytest.raises(OSError):
        spool.update_sync(meta)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert spool.path(meta.queue_id).stat().st_size == size
    spool.update_sync(meta)
    assert spool.load_meta(meta.queue_id).recipients[0].state == DELIVERED


def test_settled_leaves_out_files_that_may_still_be_uncommitted(spool: Spool) -> None:
    """DUR-3: a rescan must not take a file between its rename and the directory fsync.

    If that fsync fails the intake answers 4xx and removes the file; a delivery process that
    had picked it up meanwhile would deliver a message the client then sends again.
    """
    young, old = _meta(), _meta()
    asyncio.run(spool.store(young, MESSAGE))
    asyncio.run(spool.store(old, MESSAGE))
    an_hour_ago = os.stat(spool.path(old.queue_id)).st_mtime - 3600
    os.utime(spool.path(old.queue_id), (an_hour_ago, an_hour_ago))
    gone = new_queue_id()
    assert spool.settled([young.queue_id, old.queue_id, gone], 10.0) == [old.queue_id]
    assert spool.settled([young.queue_id, old.queue_id], 0.0) == [young.queue_id, old.queue_id]
