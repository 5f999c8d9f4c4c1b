"""The durable spool: one self-validating queue file per message (DUR-1..7).

Layout under ``spool_dir`` (0700; files 0600)::

    queue/<ID>    committed messages
    tmp/<ID>.tmp  messages being written (never read as messages; cleaned at start-up)
    corrupt/<ID>  files that failed validation, moved aside with a log line
    serve.lock    one owner per spool (``lock``); control.sock: ``mxroute queue`` on a
                  running serve (mxroute/service/control.py)

The bytes of a queue file (E, M, Z records and appended S state snapshots) are
encoded and decoded by ``format``. A file is created complete (E, M, Z; a first S only for
a state beyond the envelope's) under ``tmp/`` in one ``writev``, fsync'd, renamed into
``queue/`` and the directory fsync'd (shared: group commit): only then is it a message
(RFC 5321 §6.1; Postfix ``mail_stream_finish_file``). State changes are appended S frames,
each fsync'd before the change is acted on (DUR-6, as Postfix ``deliver_completed``
rewrites a record in place). A torn trailing S frame (a crash mid-append) is ignored: that
change never happened. A file whose E/M/Z part is incomplete, out of order or fails its
checksum goes to ``corrupt/``
(DUR-2). Removing a message is ``unlink`` plus a directory fsync.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mxroute.errors import ConfigError, SpoolError
from mxroute.relay.budget import Budget
from mxroute.relay.spool.format import (
    QUEUE_ID,
    CorruptFile,
    MessageMeta,
    decode,
    encode_parts,
    encode_state,
    message_span,
)
from mxroute.relay.spool.lookup import resolve_id

log = logging.getLogger(__name__)

FRESH_BYTES = 32 << 20  # message bytes kept in memory between intake and the first delivery attempt
FRESH_MESSAGE = 256 << 10  # ... of messages up to this size only (larger: read from the file)
FRESH_COUNT = 20000
LOAD_HEAD = 64 << 10  # bytes read first: a larger message is then read on its own
TEMP_MAX_AGE = 86400.0  # DUR-5: temp files older than a day are removed (qmail: 36 h)


def unsafe_spool_dir(mode: int, owner: int, user: int) -> str | None:
    """Why a spool directory of ``mode`` owned by uid ``owner`` is unsafe for the service user
    ``user`` (DUR-3, issue 21), or None: writable by group or others, or another user's."""
    if mode & 0o022:
        return (f"is writable by {'others' if mode & 0o002 else 'its group'} (mode "
                f"{mode & 0o777:o}); it must be 700 and owned by the service user: "
                "chmod 700 it and check what it holds")
    if owner != user:
        return (f"is owned by uid {owner}, not by the service user (uid {user}); "
                "chown it to the service user")
    return None


class _GroupSync:
    """fsync of one directory, shared by everyone who asks while one is running (group commit).

    A caller returns only after an fsync that *started* after its request, so its
    rename or unlink is covered; requests that arrive during a sync share the next one.
    """

    def __init__(self, path: Path, executor: ThreadPoolExecutor,
                 before: Callable[[], None] | None = None) -> None:
        self._path = path
        self._executor = executor
        self._before = before  # run in the same job just before the fsync (batched unlinks)
        self._task: asyncio.Future[None] | None = None
        self._requested = 0
        self._synced = 0

    def _sync(self) -> None:
        if self._before is not None:
            self._before()
        fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        self._requested += 1
        mine = self._requested
        while self._synced < mine:
            task = self._task
            if task is None or task.done():
                target = self._requested
                task = self._task = loop.run_in_executor(self._executor, self._sync)
                try:
                    await asyncio.shield(task)
                finally:
                    if self._task is task:
                        self._task = None
                self._synced = max(self._synced, target)
            else:
                try:
                    await asyncio.shield(task)
                except OSError:
                    pass  # the next round runs our own sync and reports its error


class Spool:
    """The spool directory: store, update, load, remove queue files.

    Blocking file I/O runs on a thread pool so the event loop never waits on the
    disk (STYLE habit 5); concurrent fsyncs are batched by the filesystem's journal
    and directory fsyncs by ``_GroupSync``.
    """

    def __init__(self, root: Path, *, threads: int = 16, clock: Callable[[], float] = time.time,
                 keep_fresh: bool = True) -> None:
        self.root = Path(root)
        self.queue_dir = self.root / "queue"
        self.tmp_dir = self.root / "tmp"
        self.corrupt_dir = self.root / "corrupt"
        self._queue, self._tmp = str(self.queue_dir), str(self.tmp_dir)  # the hot path's
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spool")
        # removals for the next directory sync
        self._unlinks: collections.deque[str] = collections.deque()
        self._dirsync = _GroupSync(self.queue_dir, self._executor, self._unlink_batch)
        # Just stored: (meta, message) handed to the first aload() without reading the file
        # back (bounded; the oldest are dropped and read from disk when their turn comes).
        self._fresh: dict[str, tuple[MessageMeta, bytes]] = {}
        self._fresh_bytes = 0
        # False where nothing in this process delivers (the intake process)
        self._keep_fresh = keep_fresh
        # issue 22: the in-flight budget the kept messages count against (the intake's)
        self.budget: Budget | None = None

    # --- set-up and recovery ---
    def prepare(self) -> None:
        """Create the directories 0700, ours; never run on a spool others can read (DUR-3).

        A directory we own that others can only read (e.g. made by ``mkdir`` under umask
        022) is tightened to 0700 with a log line. One that group or others can write (they
        could plant or swap queue files) or that another user owns is refused (ConfigError,
        exit 78): a spool that was open so may already hold such files (issue 21).
        """
        for path in (self.root, self.queue_dir, self.tmp_dir, self.corrupt_dir):
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                st = path.stat()
            except OSError as exc:
                raise SpoolError(f"cannot prepare spool directory {path}: {exc.strerror}") from None
            problem = unsafe_spool_dir(st.st_mode, st.st_uid, os.geteuid())
            if problem is not None:
                raise ConfigError(f"setting spool_dir: {path} {problem}")
            mode = st.st_mode & 0o777
            if mode & 0o077:
                try:
                    path.chmod(0o700)
                except OSError as exc:
                    raise SpoolError(f"cannot chmod 700 spool directory {path}: "
                                     f"{exc.strerror}") from None
                log.warning("spool directory %s was mode %o; made it 700", path, mode)
        # issue 21: a directory's own entry is durable only once its parent is fsync'd; without
        # this a power cut after the first start could take queue/ and every message with it
        for path in (self.root.parent, self.root):
            try:
                _fsync_dir(path)
            except OSError as exc:
                raise SpoolError(f"cannot sync spool directory {path}: {exc.strerror}") from None

    def clean_temp(self, max_age: float = TEMP_MAX_AGE) -> list[str]:
        """Remove temp files older than ``max_age`` seconds: intakes that never got a 250
        (DUR-5)."""
        removed = []
        now = self.clock()
        for entry in os.scandir(self.tmp_dir):
            try:
                if now - entry.stat().st_mtime > max_age:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue
        return removed

    def ids(self) -> list[str]:
        """IDs of the committed messages, oldest first."""
        return sorted(e.name for e in os.scandir(self.queue_dir) if QUEUE_ID.match(e.name))

    def settled(self, ids: list[str], seconds: float) -> list[str]:
        """Those of ``ids`` whose file has not changed for ``seconds`` (and still exists).

        A younger file may be between its rename and the directory fsync: not yet
        acknowledged, and removed again if that fsync fails (see ``store``).
        """
        limit = time.time() - seconds
        found = []
        for queue_id in ids:
            try:
                if os.stat(self.path(queue_id)).st_mtime <= limit:
                    found.append(queue_id)
            except FileNotFoundError:
                continue
        return found

    def young(self, seconds: float, listed: list[str] | None = None) -> set[str]:
        """The committed-looking IDs (of ``listed``, else all) whose file changed in the last
        ``seconds`` (none for 0)."""
        if seconds <= 0:
            return set()
        if listed is None:
            listed = self.ids()
        return set(listed) - set(self.settled(listed, seconds))

    def recover(self) -> tuple[list[MessageMeta], list[str]]:
        """Scan ``queue/``: the valid messages, and the IDs moved to ``corrupt/`` (DUR-2, DUR-7).

        A torn trailing state record (a crash mid-append) is cut off, so that the
        next append is readable.
        """
        bad: list[str] = []
        good = list(self.recover_iter(bad))
        return good, bad

    def recover_iter(self, bad: list[str],
                     ids: list[str] | None = None) -> Iterator[MessageMeta]:
        """``recover()`` one message at a time (a large spool is never all in memory), of
        ``ids`` (listed by the caller) or of the whole queue; corrupt IDs go to ``bad``."""
        queue_dir = str(self.queue_dir)
        for queue_id, data in _read_ahead(queue_dir, self.ids() if ids is None else ids):
            meta = self._recovered(queue_id, data, bad)
            if meta is not None:
                yield meta

    def recover_one(self, queue_id: str, bad: list[str] | None = None) -> MessageMeta | None:
        """``recover_iter`` for one message (issue 23: a message scheduled from the schedule
        snapshot, at its first look): None when it is gone or was moved to ``corrupt/``."""
        path = os.path.join(self.queue_dir, queue_id)
        return self._recovered(queue_id, read_whole(path), [] if bad is None else bad)

    def _recovered(self, queue_id: str, data: bytes | OSError | None,
                   bad: list[str]) -> MessageMeta | None:
        """The message in ``data`` (its file's bytes) with a torn trailing state record cut off
        the file; a corrupt file moved aside (named in ``bad``); None for those and a file gone.
        """
        path = os.path.join(self.queue_dir, queue_id)
        try:
            if data is None:
                raise FileNotFoundError(path)
            if isinstance(data, OSError):
                raise data
            meta, _, end = decode(data, queue_id)
            if end < len(data):
                log.warning("%s: cut %d bytes of a torn state record", queue_id, len(data) - end)
                _truncate(Path(path), end)
        except FileNotFoundError:
            return None
        except CorruptFile as exc:
            self.quarantine(queue_id, str(exc))
            bad.append(queue_id)
            return None
        return meta

    def scan(self, bad: list[str] | None = None) -> Iterator[MessageMeta]:
        """The committed messages, oldest first, one at a time and read ahead as by
        ``recover_iter``, changing nothing (the queue tools): a file gone meanwhile is
        skipped, a corrupt one named in ``bad`` (the daemon moves it aside)."""
        for queue_id, data in _read_ahead(str(self.queue_dir), self.ids()):
            if data is None:
                continue
            if isinstance(data, OSError):
                raise data
            try:
                meta, _, _ = decode(data, queue_id)
            except CorruptFile:
                if bad is not None:
                    bad.append(queue_id)
                continue
            yield meta

    def resolve(self, typed: str) -> str:
        """The queue ID that ``typed`` is or uniquely begins (``lookup.resolve_id``: raises
        ``QueueIdError``, or ``NoSuchMessage`` when no message matches)."""
        return resolve_id(typed, (e.name for e in os.scandir(self.queue_dir)
                                  if QUEUE_ID.match(e.name)))

    def quarantine(self, queue_id: str, reason: str) -> None:
        log.error("%s: corrupt queue file moved to corrupt/: %s", queue_id, reason)
        self._forget(queue_id)
        try:
            os.replace(self.queue_dir / queue_id, self.corrupt_dir / queue_id)
        except FileNotFoundError:
            pass

    # --- reading ---
    def path(self, queue_id: str) -> Path:
        if not QUEUE_ID.match(queue_id):
            raise SpoolError(f"{queue_id!r} is not a queue ID", code=501, status="5.5.4")
        return self.queue_dir / queue_id

    def load(self, queue_id: str) -> tuple[MessageMeta, bytes]:
        """Read and validate one message; FileNotFoundError if it is gone, CorruptFile if bad.

        A large message's bytes are read into their own buffer, never sliced out of a copy of
        the whole file (issue 22)."""
        with open(self.path(queue_id), "rb") as file:
            head = file.read(LOAD_HEAD)
            span = message_span(head)
            if span is None or span[0] + span[1] <= len(head):
                meta, message, _ = decode(head + file.read(), queue_id)
                return meta, message
            start, length = span
            file.seek(start)
            message = file.read(length)
            data = head[:start] + file.read()
        meta, message, _ = decode(data, queue_id, message)
        return meta, message

    def load_meta(self, queue_id: str) -> MessageMeta:
        return self.load(queue_id)[0]

    async def aload(self, queue_id: str) -> tuple[MessageMeta, bytes]:
        fresh = self._forget(queue_id)
        if fresh is not None:  # stored by this process and not touched since: what the file holds
            return fresh
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.load, queue_id)

    def size_of(self, queue_id: str) -> int:
        """Bytes a load of ``queue_id`` brings into memory: its file's size (0 if gone)."""
        fresh = self._fresh.get(queue_id)
        if fresh is not None:
            return 0  # already in memory, counted where it was kept
        try:
            return os.stat(self.path(queue_id)).st_size
        except (OSError, SpoolError):
            return 0

    def keep(self, meta: MessageMeta, message: bytes | Sequence[bytes | bytearray]) -> bool:
        """Keep a small message, just committed, for its first attempt if the budget has room
        (issue 22): ``aload`` here, or ``take`` to hand it to the delivery process (issue 23).
        ``message``: its bytes or pieces (joined only when kept)."""
        parts = (message,) if isinstance(message, bytes) else message
        size = sum(len(part) for part in parts)
        if not self._keep_fresh or size > FRESH_MESSAGE:
            return False
        if self.budget is not None and not self.budget.fits(size):
            return False
        whole = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        if self.budget is not None:
            self.budget.force(size)
        self._forget(meta.queue_id)
        self._fresh[meta.queue_id] = (meta, whole)
        self._fresh_bytes += size
        while self._fresh and (self._fresh_bytes > FRESH_BYTES or len(self._fresh) > FRESH_COUNT):
            self._forget(next(iter(self._fresh)))
        return True

    def take(self, queue_id: str) -> tuple[MessageMeta, bytes] | None:
        """The kept message of ``queue_id`` (no longer kept), or None."""
        return self._forget(queue_id)

    def _forget(self, queue_id: str) -> tuple[MessageMeta, bytes] | None:
        fresh = self._fresh.pop(queue_id, None)
        if fresh is not None:
            self._fresh_bytes -= len(fresh[1])
            if self.budget is not None:
                self.budget.give(len(fresh[1]))
        return fresh

    # --- writing ---
    def _write_new(self, meta: MessageMeta, parts: Sequence[bytes | bytearray]) -> None:
        tmp = os.path.join(self._tmp, meta.queue_id + ".tmp")
        pieces = encode_parts(meta, parts)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, pieces)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self._queue, meta.queue_id))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    async def store(self, meta: MessageMeta,
                    message: bytes | bytearray | Sequence[bytes | bytearray]) -> None:
        """Make a new message durable: temp file, fsync, rename, directory fsync (DUR-1, DUR-3).

        ``message``: its bytes, or pieces written one after the other (never joined).
        Raises SpoolError (451 4.3.0, or 452 4.3.1 when the disk is full; DUR-4) and leaves no file.
        """
        parts = (message,) if isinstance(message, (bytes, bytearray)) else tuple(message)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write_new, meta, parts)
            await self._dirsync()
        except OSError as exc:
            try:  # renamed but the directory not synced: not acknowledged, so not a message
                os.unlink(self.queue_dir / meta.queue_id)
            except OSError:
                pass
            raise _storage_error(exc) from None
        self.keep(meta, parts)

    def _append_state(self, meta: MessageMeta) -> None:
        record = encode_state(meta)
        # never O_CREAT: deleted stays deleted
        fd = os.open(self.path(meta.queue_id), os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, record) != len(record):
                    raise OSError(errno.ENOSPC, "No space left on device (short write)")
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # no torn record in front of the next append
                raise
        finally:
            os.close(fd)

    def update_sync(self, meta: MessageMeta) -> None:
        """Persist ``meta``'s recipient state (append an S frame, fsync).

        FileNotFoundError if deleted.
        """
        self._forget(meta.queue_id)
        self._append_state(meta)

    async def update(self, meta: MessageMeta) -> None:
        self._forget(meta.queue_id)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._append_state, meta)

    def _unlink(self, queue_id: str) -> None:
        try:
            os.unlink(self.path(queue_id))
        except FileNotFoundError:
            pass

    async def remove(self, queue_id: str) -> None:
        """Remove a finished message; the directory fsync makes it stay removed after a crash."""
        self._forget(queue_id)
        # unlinked by the next directory sync's job, before its fsync
        self._unlinks.append(queue_id)
        await self._dirsync()

    def _unlink_batch(self) -> None:
        while self._unlinks:
            queue_id = self._unlinks.popleft()
            try:
                os.unlink(self.queue_dir / queue_id)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # stays queued; delivered already, so at worst sent again after a restart
                log.error("%s: cannot remove the delivered message: %s", queue_id, exc.strerror)

    def remove_sync(self, queue_id: str) -> bool:
        """Remove a message now (``mxroute queue delete``); False if there was none."""
        self._forget(queue_id)
        try:
            os.unlink(self.path(queue_id))
        except FileNotFoundError:
            return False
        _fsync_dir(self.queue_dir)
        return True

    def exists(self, queue_id: str) -> bool:
        return self.path(queue_id).exists()

    def queue_mtime(self) -> float:
        return self.queue_dir.stat().st_mtime_ns / 1e9

    def close(self) -> None:
        self._executor.shutdown(wait=True)


READ_AHEAD_CHUNK = 64  # queue files per read job at start-up
READ_AHEAD_JOBS = 8  # jobs in flight: a cold page cache is read by several threads at once


def _read_ahead(queue_dir: str, ids: list[str]) -> Iterator[tuple[str, bytes | OSError | None]]:
    """(ID, file bytes) in ``ids`` order, read by a few threads ahead of the caller (None: gone).

    Start-up recovery decodes on one thread (the GIL); reading ahead in parallel keeps a
    cold disk busy meanwhile (issue 6: 100,000 messages in under 10 s). Only files up to
    ``LOAD_HEAD`` are read ahead; a larger one is read when its turn comes, so that a spool of
    large messages is never all in memory at once (issue 22).
    """

    def read(chunk: list[str]) -> list[bytes | OSError | None]:
        out: list[bytes | OSError | None] = []
        for queue_id in chunk:
            data = read_whole(os.path.join(queue_dir, queue_id), LOAD_HEAD + 1)
            out.append(_LARGE if isinstance(data, bytes) and len(data) > LOAD_HEAD else data)
        return out

    def whole(queue_id: str, data: bytes | OSError | None) -> bytes | OSError | None:
        if data is not _LARGE:
            return data
        return read_whole(os.path.join(queue_dir, queue_id))

    chunks = [ids[i : i + READ_AHEAD_CHUNK] for i in range(0, len(ids), READ_AHEAD_CHUNK)]
    if len(chunks) <= 1:
        for chunk in chunks:
            yield from ((qid, whole(qid, data)) for qid, data in zip(chunk, read(chunk)))
        return
    with ThreadPoolExecutor(max_workers=READ_AHEAD_JOBS, thread_name_prefix="recover") as pool:
        jobs = collections.deque(pool.submit(read, c) for c in chunks[:READ_AHEAD_JOBS])
        for index, chunk in enumerate(chunks):
            results = jobs.popleft().result()
            if index + READ_AHEAD_JOBS < len(chunks):
                jobs.append(pool.submit(read, chunks[index + READ_AHEAD_JOBS]))
            yield from ((qid, whole(qid, data)) for qid, data in zip(chunk, results))


_LARGE = b""  # read_ahead's mark for a file read when its turn comes (never a file's bytes)


def read_whole(path: str, most: int = -1) -> bytes | OSError | None:
    """A file's bytes (its first ``most``, when given); None when it is gone, the OSError when
    it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(most)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc


IOV_MAX = 1024  # buffers one writev takes (Linux, POSIX's minimum is 16: more is split)


def _write_all(fd: int, pieces: Sequence[bytes | bytearray]) -> None:
    """Write ``pieces`` in order, each as it is (the message is never joined, issue 22): one
    ``writev`` for a file of a few pieces (issue 23), more only after a short write."""
    views = [memoryview(piece) for piece in pieces if piece]
    while views:
        done = os.writev(fd, views[:IOV_MAX])
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if views and done:
            views[0] = views[0][done:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError) -> SpoolError:
    """DUR-4: a full disk is 452 4.3.1 (RFC 3463 X.3.1), anything else 451 4.3.0."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolError("Insufficient system storage", code=452, status="4.3.1")
    return SpoolError("Local error in processing: cannot store the message",
                      code=451, status="4.3.0")
