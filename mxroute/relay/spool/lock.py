"""One owner per spool: ``serve.lock`` under ``spool_dir``, an exclusive ``flock`` (issue 13).

``mxroute serve`` takes it before it touches the spool (temporary files, recovery) and holds
it for its life; the delivery process inherits the descriptor, so both hold the one lock (an
``flock`` belongs to the open file description, not to a process): a restarted delivery
process is never refused by its parent's lock, and a delivery process that briefly outlives
a crashed parent keeps it until it dies too. The kernel releases it on any death, so a stale
file never blocks a restart. The file holds the owner's PID as text, for the message a second
instance prints.

``mxroute queue`` acting without a running ``serve`` (issue 15 A) takes the same lock for the
few milliseconds it rewrites queue files, writing ``PID queue-tool``: a ``serve`` that starts
then waits for it (at most ``TOOL_WAIT`` seconds) instead of failing, and refuses at once only
another live ``serve``. A lock whose named ``serve`` is gone is held by that serve's delivery
process in its last moments (killed parent): a starting ``serve`` waits for it the same way.
A tool that finds a ``serve`` holding the lock talks to its control socket.
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
TOOL = "queue-tool"  # the lock file's mark of a short-lived `mxroute queue` holder
TOOL_WAIT = 10.0  # seconds a starting serve waits for such a holder


class SpoolInUse(MxrouteError):
    """Another ``serve`` owns the spool: exit 75 (EX_TEMPFAIL) at once."""

    exit_code = EX_TEMPFAIL


class SpoolLock:
    """The exclusive lock on one spool, held through an open descriptor (``fd``)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, tool: bool = False) -> int:
        """Take the lock, write our PID (``tool``: marked as a queue tool's): the descriptor
        holding it.

        ``SpoolInUse`` at once when a ``serve`` has it (or, for a tool, anyone); a ``serve``
        waits up to ``TOOL_WAIT`` seconds for a queue tool to finish.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MxrouteError(f"cannot open the spool lock {self.path}: "
                               f"{exc.strerror or exc}") from None
        deadline = time.monotonic() + TOOL_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._holder()
                if not tool and time.monotonic() < deadline and (
                        holder.endswith(TOOL) or not _alive(holder)):
                    # `mxroute queue` rewriting files, or the delivery process of a serve that
                    # was killed (it holds the inherited lock until it notices, at once by
                    # PR_SET_PDEATHSIG once set, else at its socket's end of file): a moment
                    time.sleep(_PID_STEP)
                    continue
                os.close(fd)
                raise SpoolInUse(f"spool {self.path.parent} is in use by another mxroute "
                                 f"{'process' if tool else 'serve'} (PID {holder})"
                                 f"{'' if tool else '; not starting'}") from None
            except OSError as exc:
                os.close(fd)
                raise MxrouteError(f"cannot lock the spool {self.path}: "
                                   f"{exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}{' ' + TOOL if tool else ''}\n".encode("ascii"), 0)
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


def _alive(holder: str) -> bool:
    """Whether the process the lock file names still exists (unknown: assume it does)."""
    pid = holder.split()[0] if holder.split() else ""
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists under another user
        return True
    return True


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


__all__ = ["LOCK_NAME", "TOOL", "TOOL_WAIT", "SpoolInUse", "SpoolLock", "hold_inherited"]
