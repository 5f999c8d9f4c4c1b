"""Cheap log output for the daemon's hot path: one write per batch of lines, not per line.

``logging.StreamHandler`` flushes after every record: one ``write(2)`` per log line,
about three per relayed message. ``BatchingStreamHandler`` writes a line at once when
nothing was written in the last ``interval`` seconds (0.1 s by default: a quiet relay's
lines appear as they happen), and otherwise leaves lines in the stream's buffer for a
small thread to flush every ``interval``; WARNING and above at once, and the rest on
close (``logging.shutdown`` at exit). A SIGKILL can lose at most the last ``interval`` of INFO lines; mail is
never affected (the spool, not the log, is the record of a message).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO


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


__all__ = ["BatchingStreamHandler"]
