"""One `mxroute serve` per spool (issue 13 item 1; DUR-6, DUR-7, DUR-5).

`serve` takes an exclusive ``flock`` on ``<spool>/serve.lock`` before it touches the spool
(temporary files, recovery); its intake and its delivery process hold it for their lives and
the kernel lets it go on any death. A second `serve` on the same spool exits 75 at once with
one line naming the spool and the PID holding it (../shared/CONTRACT.md) and delivers nothing;
`mxroute queue` works beside the running one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.relay import MSG, ROOT, Relay, World, free_port, rcpt_script, wait_for

RCPTS = ["u@dest.test", "v@dest.test"]


def delivered(world: World) -> list[str]:
    """Every recipient the sinks accepted a message for, once per delivery."""
    return sorted(rcpt for sink in world.sinks for message in sink.messages
                  for rcpt in message.rcpt_to)


def second_serve(world: World, spool: Path, name: str) -> Relay:
    """A relay with its own listen port and log, configured for ``spool``."""
    other = world.tmp / name
    other.mkdir()
    relay = Relay(other, world.dns, world.sink_port, spool_dir=str(spool),
                  metrics_listen=f"127.0.0.1:{free_port()}")
    relay.spool = spool
    return relay


def test_second_serve_on_a_spool_in_use_exits_75_and_mail_is_delivered_once(
    world: World,
) -> None:
    """issue 13: with a message queued (deferred) by a running `serve`, a second `serve` with
    other listen and metrics ports on the same spool_dir exits 75 at once with one line naming
    the spool and the holder's PID; `queue list` works meanwhile; once the sink accepts, every
    recipient is delivered exactly once (DUR-6, DUR-7). Killed, the owner leaves no stale lock."""
    sink = world.sink(1, replies={"RCPT": {"*": "451 4.3.0 not yet"}})
    first = world.relay(metrics_listen=f"127.0.0.1:{free_port()}")
    assert first.proc is not None
    first.send("a@sender.test", RCPTS, MSG)
    assert wait_for(lambda: len(sink.connections) >= 1), first.log()
    (queue_id,) = first.queued()

    listed = first.queue("list")
    assert listed.returncode == 0, listed.stderr
    assert queue_id in listed.stdout

    second = second_serve(world, first.spool, "second")
    with open(second.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mxroute", "serve"], cwd=ROOT,
                                env=second.env, stdout=log, stderr=subprocess.PIPE, text=True)
    second.proc = proc  # type: ignore[assignment]
    world.relays.append(second)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"a second serve on the same spool kept running:\n{second.log()}")
    assert proc.returncode == 75, (err, second.log())
    assert len(err.splitlines()) == 1, err
    assert str(first.spool) in err and f"PID {first.proc.pid}" in err, err

    rcpt_script(sink, "*", None)
    assert wait_for(lambda: delivered(world) == RCPTS, timeout=20), first.log()
    assert wait_for(lambda: first.queued() == [])
    assert delivered(world) == RCPTS  # once each, and nothing left to deliver again
    assert "status=sent" not in second.log()

    os.kill(first.proc.pid, signal.SIGKILL)  # its delivery process dies with it
    first.proc.wait(timeout=10)
    third = second_serve(world, first.spool, "third").start()  # the kernel freed the lock
    world.relays.append(third)
    third.send("a@sender.test", ["w@dest.test"], MSG)
    assert wait_for(lambda: "w@dest.test" in delivered(world), timeout=20), third.log()
    assert third.terminate() == 0


def test_lock_file_names_the_owner_and_queue_commands_ignore_it(world: World) -> None:
    """issue 13: ``serve.lock`` holds the owner's PID as text; `queue list --json` on the
    running spool succeeds and lists no lock file as a message (DUR-7)."""
    world.sink(1)
    relay = world.relay()
    assert relay.proc is not None
    assert (relay.spool / "serve.lock").read_text().strip() == str(relay.proc.pid)
    listed = relay.queue("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "serve.lock" not in listed.stdout
    assert relay.terminate() == 0
