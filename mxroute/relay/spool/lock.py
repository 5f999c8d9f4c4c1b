"""One owner per spool: ``serve.lock`` under ``spool_dir``, an exclusive ``flock`` (issue 13).

``mxroute serve`` takes it before it touches the spool (temporary files, recovery) and holds
it for its life; the delivery process inherits the descriptor, so both hold the one lock (an
``flock`` belongs to the open file description, not to a process): a restarted delivery
process is never refused by its parent's lock, and a delivery process that briefly outlives
a crashed parent keeps it until it dies too. The kernel releases it on any death, so a stale
file never blocks a restart. The file holds the owner's PID as text, for the message a second
instance prints. ``mxroute queue`` never takes it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from mxroute.errors import EX_TEMPFAIL, MxrouteError

LOCK_NAME = "serve.lock"
_PID_WAIT = 1.0  # seconds to wait for a new owner to write its PID, in _PID_STEP steps
_PID_STEP = 0.05


class SpoolInUse(MxrouteError):
    """Another ``serve`` owns the spool: exit 75 (EX_TEMPFAIL) at once."""

    exit_code = EX_TEMPFAIL


class SpoolLock:
    """The exclusive lock on one spool, held through an open descriptor (``fd``)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> int:
        """Take the lock (never waits), write our PID: the descriptor holding it.

        ``SpoolInUse`` when another process has it.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MxrouteError(f"cannot open the spool lock {self.path}: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUse(f"spool {self.path.parent} is in use by another mxroute serve "
                             f"(PID {self._holder()}); not starting") from None
        except OSError as exc:
            os.close(fd)
            raise MxrouteError(f"cannot lock the spool {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return fd

    def _holder(self) -> str:
        """The holder's PID as its file says (it may be a moment from writing it)."""
        for _ in range(int(_PID_WAIT / _PID_STEP)):
            try:
                text = self.path.read_text(encoding="ascii", errors="replace").strip()
            except OSError:
                text = ""
            if text:
                return text
            time.sleep(_PID_STEP)
        return "unknown"

    def release(self) -> None:
        """Close our descriptor (the lock goes once every process holding it has closed it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def hold_inherited(fd: int) -> None:
    """In the delivery process: check that ``fd`` (from the parent) is the held spool lock.

    On the parent's own open file description ``LOCK_EX`` is granted again at once; anything
    else (no lock, a lock another process holds) refuses to deliver.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise SpoolInUse(f"the delivery process does not hold the spool lock: "
                         f"{exc.strerror or exc}") from None


__all__ = ["LOCK_NAME", "SpoolInUse", "SpoolLock", "hold_inherited"]
