"""Log set-up for both processes of ``serve``, and cheap output for the hot path.

``setup_logging`` gives one line per event on stdout (journald's, with each line's
syslog priority, when ``JOURNAL_STREAM`` is set); the daemon and the delivery process
both call it.

``logging.StreamHandler`` flushes after every record: one ``write(2)`` per log line,
about three per relayed message. ``BatchingStreamHandler`` keeps its own buffer of whole
lines and writes them to the stream's file descriptor itself, so neither the stream's
buffering nor the environment (``PYTHONUNBUFFERED``, a TTY or not, a pipe, a file, journald's
socket) changes when a line appears: at once when nothing was written in the last
``interval`` seconds (0.1 s by default: a quiet relay's lines appear as they happen),
otherwise within ``interval``, written by a small thread that sleeps while nothing waits;
WARNING and above at once, and the rest on ``flush()`` and close (``logging.shutdown`` at
exit). Each ``write(2)`` carries whole lines, at most ``PIPE_BUF`` bytes of them, so the two
processes sharing stdout never cut into each other's lines. A SIGKILL can lose at most the
last ``interval`` of INFO lines; mail is never affected (the spool, not the log, is the
record of a message).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

# syslog priorities (sd-daemon(3) "<N>" prefixes) for journald
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
MAX_PENDING = 65536  # bytes of lines held at most: a burst is written before it grows past this


class BatchingStreamHandler(logging.Handler):
    """Lines written to ``stream``'s file descriptor in batches (see the module docstring)."""

    def __init__(self, stream: TextIO, interval: float = 0.1) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            stream.flush()  # whatever the stream holds goes first
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # no descriptor (a StringIO): the stream's own write and flush
        self._pending: list[bytes] = []
        self._size = 0
        self._written = 0.0  # monotonic time of the last write
        self._due = threading.Event()  # lines wait for the thread
        self._thread = threading.Thread(target=self._run, name="log-flush", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode(self.encoding, "backslashreplace")
        except Exception:  # noqa: BLE001 - logging's own report of a bad record
            self.handleError(record)
            return
        self._pending.append(line)  # under self.lock (Handler.handle)
        self._size += len(line)
        if (record.levelno >= logging.WARNING or self._size >= MAX_PENDING
                or time.monotonic() - self._written >= self.interval):
            self.flush()
        elif not self._due.is_set():  # the thread is told once per batch, not per line
            self._due.set()

    def flush(self) -> None:
        """Write the pending lines now."""
        with self.lock:  # type: ignore[union-attr]
            self._due.clear()
            if not self._pending:
                return
            self._written = time.monotonic()
            lines, self._pending, self._size = self._pending, [], 0
            try:
                for chunk in _chunks(lines):
                    self._write(chunk)
            except (AttributeError, OSError, ValueError):
                pass  # stdout closed or gone: the spool, not the log, is the record of a message

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self.stream.write(data.decode(self.encoding))
            self.stream.flush()
            return
        view = memoryview(data)
        while view:  # a pipe or socket may take part of it
            view = view[os.write(self._fd, view):]

    def _run(self) -> None:
        while True:
            self._due.wait()
            delay = self._written + self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.flush()

    def close(self) -> None:
        self.flush()
        super().close()


def _chunks(lines: list[bytes]) -> Iterator[bytes]:
    """Whole lines joined up to PIPE_BUF bytes: each write(2) is atomic on a pipe, so the lines
    of the two processes sharing stdout never interleave within a line."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > select.PIPE_BUF:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield b"".join(chunk)


class _JournalFormatter(logging.Formatter):
    """``<N>logger: message``: journald adds the time and the process and keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        # each line of a traceback keeps its priority
        return prefix + text.replace("\n", "\n" + prefix)


def setup_logging(level: str) -> None:
    """One line per event on stdout, as a foreground service under systemd/journald expects."""
    handler = BatchingStreamHandler(sys.stdout)  # one write per 0.1 s of lines, not per line
    if os.environ.get("JOURNAL_STREAM"):  # stdout is journald's (systemd.exec(5))
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s mxroute[%(process)d] %(levelname)s %(name)s: %(message)s"))
    # issue 23: the formats show no caller, thread or multiprocessing name, so no record looks
    # them up (the caller lookup walks the stack: ~7 % of the intake's CPU per message); the
    # optimisation the logging documentation names
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd's per-command chatter (AUTH lines too)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def flush_log() -> None:
    """Write the lines still buffered by a ``BatchingStreamHandler`` now."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchingStreamHandler):
            handler.flush()


__all__ = ["BatchingStreamHandler", "flush_log", "setup_logging"]
