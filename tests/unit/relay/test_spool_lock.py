"""``serve.lock``: one owner per spool (issue 13 item 1; DUR-7). The e2e test with two real
`serve` processes is tests/e2e/test_spool_owner.py; these pin the flock semantics it relies on."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from mxroute.errors import EX_TEMPFAIL
from mxroute.relay.spool.lock import SpoolInUse, SpoolLock, hold_inherited


def test_second_lock_on_the_spool_is_refused_naming_the_spool_and_the_pid(tmp_path: Path) -> None:
    first = SpoolLock(tmp_path)
    fd = first.acquire()
    assert (tmp_path / "serve.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(SpoolInUse) as refused:
        SpoolLock(tmp_path).acquire()  # another open file description: flock conflicts
    assert refused.value.exit_code == EX_TEMPFAIL
    assert refused.value.message == (f"spool {tmp_path} is in use by another mxroute serve "
                                     f"(PID {os.getpid()}); not starting")
    hold_inherited(fd)  # the owner's own description (what the delivery process inherits)
    first.release()
    again = SpoolLock(tmp_path)
    again.acquire()  # released: the next owner takes it, stale PID or not
    again.release()


def test_a_descriptor_without_the_lock_cannot_deliver(tmp_path: Path) -> None:
    owner = SpoolLock(tmp_path)
    owner.acquire()
    other = os.open(tmp_path / "serve.lock", os.O_RDWR)
    try:
        with pytest.raises(SpoolInUse):
            hold_inherited(other)
    finally:
        os.close(other)
        owner.release()


def test_a_starting_serve_waits_for_a_queue_tool_and_a_tool_never_waits(tmp_path: Path) -> None:
    """issue 15 A: `mxroute queue` acting without serve holds the lock for a moment, marked as a
    tool's; a serve starting then waits for it (bounded) instead of exiting 75; a second tool
    is refused at once (it retries through the control socket or the lock itself)."""
    tool = SpoolLock(tmp_path)
    tool.acquire(tool=True)
    assert (tmp_path / "serve.lock").read_text() == f"{os.getpid()} queue-tool\n"
    with pytest.raises(SpoolInUse):
        SpoolLock(tmp_path).acquire(tool=True)
    releaser = threading.Timer(0.3, tool.release)
    releaser.start()
    try:
        serve = SpoolLock(tmp_path)
        serve.acquire()  # waits for the tool, then owns the spool
        assert (tmp_path / "serve.lock").read_text() == f"{os.getpid()}\n"
        serve.release()
    finally:
        releaser.join(timeout=5)


def test_a_starting_serve_waits_for_the_delivery_process_of_a_killed_serve(
        tmp_path: Path) -> None:
    """DUR-7: a serve SIGKILLed leaves its delivery process holding the inherited lock for a
    moment (until PR_SET_PDEATHSIG or its socket's end of file ends it). The lock file names
    the dead serve: a serve restarted then waits for the lock (bounded) instead of exiting 75,
    as the SIGKILL loop in tests/faults/test_crash.py restarts it. A live serve is still
    refused at once (the first test)."""
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    orphan = SpoolLock(tmp_path)
    fd = orphan.acquire()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{gone.pid}\n".encode(), 0)  # the killed serve's PID, as it wrote it
    releaser = threading.Timer(0.3, orphan.release)
    releaser.start()
    try:
        restarted = SpoolLock(tmp_path)
        restarted.acquire()
        assert (tmp_path / "serve.lock").read_text() == f"{os.getpid()}\n"
        restarted.release()
    finally:
        releaser.join(timeout=5)
