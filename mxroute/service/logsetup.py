"""Log set-up for both processes of ``serve``, and cheap output for the hot path.

``setup_logging`` gives one line per event on stdout (journald's, with each line's
syslog priority, when ``JOURNAL_STREAM`` is set); the daemon and the delivery process
both call it.

``logging.StreamHandler`` flushes after every record: one ``write(2)`` per log line,
about three per relayed message. ``BatchingStreamHandler`` writes a line at once when
nothing was written in the last ``interval`` seconds (0.1 s by default: a quiet relay's
lines appear as they happen), and otherwise leaves lines in the stream's buffer for a
small thread to flush every ``interval``; WARNING and above at once, and the rest on
close (``logging.shutdown`` at exit). A SIGKILL can lose at most the last ``interval`` of
INFO lines; mail is never affected (the spool, not the log, is the record of a message).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TextIO

# syslog priorities (sd-daemon(3) "<N>" prefixes) for journald
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler whose flushes are batched (see the module docstring)."""

    def __init__(self, stream: TextIO, interval: float = 0.1) -> None:
        super().__init__(stream)
        self.interval = interval
        self._dirty = False
        self._flushed = 0.0  # monotonic time of the last flush
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-flush", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Called by ``emit()`` after each line: only note that there is something to write."""
        self._dirty = True

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING or time.monotonic() - self._flushed >= self.interval:
            self.flush_now()

    def flush_now(self) -> None:
        self._dirty = False
        self._flushed = time.monotonic()
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._dirty:
                self.flush_now()

    def close(self) -> None:
        self._stop.set()
        self.flush_now()
        super().close()


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
            handler.flush_now()


__all__ = ["BatchingStreamHandler", "flush_log", "setup_logging"]
