"""Power loss (issue 21 §1; DUR-1, DUR-3, DUR-5, DUR-6, DUR-7): the crash-state explorer.

The SIGKILL loop (test_crash.py) cannot see a power cut: the page cache survives a kill. Here
the real ``serve`` (intake and delivery process) runs under ``strace -f`` for a workload that
takes every spool path (tests/support/crashrecord.py); every crash point of the trace gets the
on-disk states an ALICE-style model allows (tests/support/crashmodel.py), each is recovered
by the spool's own start-up code in process and a sample by the real ``serve`` against a
loopback sink (tests/support/crashexplore.py). Every recipient of a message whose ``250`` was
written before the crash point must be delivered, still queued, or its failure notified or
owed: **lost 0**. Duplicates are counted; each must lie in the window between a remote
``250`` and the synced state record.

``FAULTS_CRASH_THOROUGH=1``: 24 random states per crash point instead of 4 and 12 ``serve``
runs instead of 3 (docs/guarantees.md has the command).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mxroute.service.link import SETTLE_SECONDS
from tests.faults.conftest import skip_or_fail
from tests.support.crashexplore import (
    Explorer,
    drop_dir_fsync,
    drop_file_fsync,
    explore,
    recover,
    sample,
    settings_for,
    write_disk,
)
from tests.support.crashmodel import Choice, Trace
from tests.support.crashrecord import (
    NET,
    RELAY_HOST,
    Recording,
    record,
    serve_state,
    strace_problem,
    zone,
)
from tests.support.dnsserver import DNSServer
from tests.support.relay import Relay, delivery_pid, free_port
from tests.support.smtpsink import Sink

pytestmark = pytest.mark.slow

THOROUGH = os.environ.get("FAULTS_CRASH_THOROUGH") == "1"
RANDOMS = 24 if THOROUGH else 4  # random states per crash point, besides the systematic ones
SERVE_SAMPLE = 12 if THOROUGH else 3  # states recovered by a real serve


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(host=f"{NET}.53") as server:
        yield server


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, dns: DNSServer) -> Recording:
    """One recorded run of serve under strace, shared by this module's tests."""
    problem = strace_problem()
    if problem is not None:
        skip_or_fail(problem)
    return record(tmp_path_factory.mktemp("record"), dns)


def test_power_loss_no_acknowledged_message_lost_in_any_explored_crash_state(
        recording: Recording, tmp_path: Path, dns: DNSServer,
        figures: Callable[..., None]) -> None:
    """Issue 21, DUR-1/3/6/7: every crash point, its allowed states recovered in process, a
    sample by the real serve: 0 lost, 0 recovery crashes, every unreadable file logged, no
    temporary file left, every duplicate inside the remote-250 -> state-record window."""
    started = time.monotonic()
    explorer = Explorer(recording, tmp_path / "scratch")
    report = explorer.run(randoms=RANDOMS)
    served, serve_missing = 0, []
    for n, choice in enumerate(sample(explorer, SERVE_SAMPLE)):
        disk = explorer.trace.materialize(choice)
        write_disk(disk, tmp_path / f"state{n}")
        write_disk(disk, tmp_path / "probe")
        got = recover(tmp_path / "probe", settings_for(tmp_path / "probe"))
        acked = explorer.trace.acked(choice.k)
        expect = {q: got.pending.get(q, set()) | got.owed.get(q, set())
                  for q in acked if q not in got.held}
        missing, log = serve_state(tmp_path / f"state{n}", tmp_path / f"serve{n}", dns, expect,
                                   got.held)
        served += 1
        serve_missing += sorted(missing)
        assert "Traceback" not in log, log[-3000:]
    trace = explorer.trace
    figures("power loss (crash-state explorer, issue 21)", ops=len(trace.ops),
            acknowledged=len(trace.acked(len(trace.ops) + 1)), **report.figures(),
            serve_states=served, serve_lost=len(serve_missing),
            seconds=round(time.monotonic() - started, 1))
    shown = [(f.point, f.op, f.lost[:3]) for f in report.findings[:5]]
    assert report.lost == 0, f"acknowledged recipients lost: {shown}"
    assert report.recovery_crashes == 0, report.crashes[:5]
    assert report.unlogged == 0 and report.unexplained_duplicates == 0
    assert report.temp_left == 0, "stale temporary files left after start-up"
    assert report.unscheduled == 0 and report.late == 0, report.figures()  # issue 23
    assert report.snapshot_states > 0, "no explored state recovered from spool/schedule"
    assert report.points > 100 and report.states > 500, report.figures()
    assert served >= 1 and serve_missing == [], serve_missing[:10]


@pytest.mark.parametrize(("switch", "name"), [(drop_file_fsync, "file"),
                                              (drop_dir_fsync, "directory")])
def test_the_explorer_sees_a_missing_fsync(
        recording: Recording, tmp_path: Path, switch: Callable[..., bool], name: str,
        figures: Callable[..., None]) -> None:
    """Issue 21: the explorer can see. With the new queue file's fsync (``file``) or the queue
    directory's fsync (``directory``) taken out of the recorded trace — a switch in this test,
    never in the product — it reports acknowledged messages lost."""
    report = explore(recording, tmp_path, switch, randoms=RANDOMS, stop_at_loss=True)
    first = report.findings[0] if report.findings else None
    figures(f"power loss without the {name} fsync (must lose)", states=report.states,
            lost=report.lost, unreadable=report.unreadable,
            first_loss=f"point {first.point} after `{first.op}`" if first else "none")
    assert report.lost > 0, f"the explorer did not see a missing {name} fsync"


def test_regression_queue_directory_durable_before_the_first_250(recording: Recording) -> None:
    """Issue 21 finding: ``queue/`` was created (mkdir) but its parent never fsync'd, so the
    explorer's state at the first ``250`` without the mkdir lost every message. Now the
    spool's parent directories are fsync'd at start: at every ``250`` the mkdir is durable."""
    trace = recording.trace()
    mkdirs = [e.index for e in trace.events if e.op.kind == "mkdir" and e.op.path == "queue"]
    acks = [e.index + 1 for e in trace.events if e.kind == "ack"]
    assert mkdirs and acks
    for k in acks:
        durable = trace.split(k)[0]
        assert durable & set(mkdirs), f"queue/ not durable at the 250 of crash point {k}"
    # and the state that showed it (no queue/ on disk) is no longer allowed there
    for choice in trace.choices(acks[0], random.Random(21), RANDOMS):
        assert "queue" in trace.materialize(choice).dirs


def _state_with_temp_file(trace: Trace) -> Choice:
    """A crash state with an intake's temporary file in tmp/ (a crash before its rename)."""
    for k in trace.points():
        for choice in trace.choices(k, random.Random(21), 0):
            if any(p.startswith("tmp/") for p in trace.materialize(choice).files):
                return choice
    raise AssertionError("the recording has no state with a temporary file")


def test_regression_serve_removes_temporary_files_left_by_a_crash(
        recording: Recording, tmp_path: Path, dns: DNSServer) -> None:
    """Issue 21 finding (DUR-5): a crash state with a young ``tmp/*.tmp`` (an intake cut off
    before its rename: never acknowledged) kept it for a day. ``serve`` holds the spool lock
    when it cleans, so every temporary file is a dead intake's: the real serve removes it at
    start and says so."""
    trace = recording.trace()
    choice = _state_with_temp_file(trace)
    write_disk(trace.materialize(choice), tmp_path / "state")
    temp = [p.name for p in (tmp_path / "state" / "tmp").iterdir()]
    missing, log = serve_state(tmp_path / "state", tmp_path / "serve", dns, {}, set())
    assert temp and missing == set()
    assert all(f"removed stale temporary file {name}" in log for name in temp), log[-2000:]
    assert not list((tmp_path / "serve" / "spool" / "tmp").iterdir())


def _state_inside_the_commit_window(trace: Trace) -> tuple[Choice, str]:
    """The explorer's state right after a new message's rename into queue/, before the directory
    fsync that commits it (everything persisted): the file is there, not yet acknowledged."""
    for e in trace.events:
        if e.op.kind == "rename" and e.op.dst.startswith("queue/"):
            choice = trace.choices(e.index + 1, random.Random(21), 0)[0]
            if e.op.dst in trace.materialize(choice).files:
                return choice, e.op.dst
    raise AssertionError("the recording has no rename into queue/")


def test_regression_restarted_delivery_process_leaves_an_uncommitted_file_alone(
        recording: Recording, tmp_path: Path, dns: DNSServer) -> None:
    """Issue 21 (DUR-3, DUR-5): a delivery process restarted while the intake runs used to take
    every file in queue/ at once, one inside its rename -> directory-fsync window too: delivered
    although the fsync may still fail (the intake then removes the file and answers 451, the
    client sends again: two copies) or the power go (never acknowledged). Now its recovery leaves
    files younger than SETTLE_SECONDS for later, and the intake resends the IDs it committed
    meanwhile. Here: the window's file appears, the delivery process is killed and restarted, the
    file is then removed as the intake does when its fsync fails: nothing is delivered."""
    trace = recording.trace()
    choice, name = _state_inside_the_commit_window(trace)
    data = trace.materialize(choice).files[name]
    port = free_port(f"{NET}.1")
    sink = Sink(f"{NET}.1", port)
    sink.start()
    zone(dns, {n: f"{NET}.1" for n in ("ok", "slow", "bad", "sender")})
    relay = Relay(tmp_path, dns, port, host=RELAY_HOST)
    try:
        relay.start()
        assert relay.proc is not None
        first = delivery_pid(relay.proc.pid)
        temp = relay.spool / "tmp" / "window.tmp"
        temp.write_bytes(data)
        os.replace(temp, relay.spool / name)  # renamed; its directory fsync not yet done
        os.kill(first, signal.SIGKILL)
        delivery_pid(relay.proc.pid, other_than=first)
        relay.logged("restarting it (1/5", "recovery: 1 message(s) queued")
        os.unlink(relay.spool / name)  # the fsync failed: the intake removes it, answers 451
        queue_id = name.split("/", 1)[1]
        log = relay.logged(f"{queue_id}: removed from the queue", timeout=SETTLE_SECONDS + 10)
        assert f"{queue_id}: removed from the queue" in log, log[-3000:]
        assert sink.messages == [], "a message never committed was delivered"
        assert relay.terminate() == 0
    finally:
        relay.kill()
        sink.stop()
