"""`mxroute serve` as two processes (delivery_processes = 1): intake here, delivery in a child.

The child is supervised: killed, it is restarted and mail keeps flowing; killed too often, the
relay exits 70 (systemd restarts the service) rather than accept mail it cannot deliver. A
SIGKILL of the parent takes the child with it (PR_SET_PDEATHSIG, socket EOF): no orphan
goes on delivering beside the next instance. ``delivery_processes = 0`` is one process.
"""

from __future__ import annotations

import os
import signal
import time

from tests.support.relay import MSG, World, alive, children, delivery_pid, wait_for


def test_one_child_delivers_and_the_relay_process_does_not(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay()
    assert relay.proc is not None
    child = delivery_pid(relay.proc.pid)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert wait_for(lambda: relay.queued() == [])
    lines = relay.logged("status=sent", "status=accepted").splitlines()
    assert any(f"mxroute[{child}]" in line and "status=sent" in line for line in lines)
    assert any(f"mxroute[{relay.proc.pid}]" in line and "status=accepted" in line for line in lines)
    assert relay.terminate() == 0
    assert wait_for(lambda: not alive(child), timeout=5)


def test_killed_delivery_process_is_restarted_and_mail_flows(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay()
    assert relay.proc is not None
    first = delivery_pid(relay.proc.pid)
    os.kill(first, signal.SIGKILL)
    second = delivery_pid(relay.proc.pid, other_than=first)
    assert wait_for(
        lambda: "delivery process exited unexpectedly (code -9); restarting it (1/5" in relay.log()
    )
    for n in range(5):
        relay.send(f"a{n}@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: len(sink.messages) == 5, timeout=20), relay.log()
    assert wait_for(lambda: relay.queued() == [])
    assert relay.proc.poll() is None and alive(second)
    assert relay.terminate() == 0


def test_mail_accepted_while_delivery_is_down_is_delivered_once(world: World) -> None:
    """The spool is the truth: what intake committed while no child listened is found by the
    next one."""
    sink = world.sink(1)
    relay = world.relay()
    assert relay.proc is not None
    first = delivery_pid(relay.proc.pid)
    os.kill(first, signal.SIGSTOP)  # deaf: the notices pile up, nothing is delivered
    try:
        for n in range(3):
            relay.send(f"a{n}@sender.test", ["u@dest.test"], MSG)
        time.sleep(0.3)
        assert sink.messages == []
    finally:
        os.kill(first, signal.SIGKILL)
    delivery_pid(relay.proc.pid, other_than=first)
    assert wait_for(lambda: len(sink.messages) == 3, timeout=20), relay.log()
    time.sleep(1.0)
    assert len(sink.messages) == 3  # exactly once
    assert relay.terminate() == 0


def test_delivery_process_crash_loop_makes_the_relay_exit_70(world: World) -> None:
    relay = world.relay()
    assert relay.proc is not None
    pid = delivery_pid(relay.proc.pid)
    for _ in range(6):  # 5 restarts allowed per minute; the 6th death is one too many
        os.kill(pid, signal.SIGKILL)
        if _ == 5:
            break
        pid = delivery_pid(relay.proc.pid, other_than=pid)
    assert relay.proc.wait(timeout=15) == 70
    assert "6 times within 60s; stopping so that the service is restarted" in relay.log()
    assert children(relay.proc.pid) == []


def test_sigkill_of_the_relay_takes_the_delivery_process_with_it(world: World) -> None:
    relay = world.relay()
    assert relay.proc is not None
    child = delivery_pid(relay.proc.pid)
    relay.kill()
    assert wait_for(lambda: not alive(child), timeout=5), "orphaned delivery process"


def test_one_process_mode(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay(delivery_processes=0)
    assert relay.proc is not None
    time.sleep(0.3)
    assert children(relay.proc.pid) == []
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert wait_for(lambda: relay.queued() == [])
    assert relay.terminate() == 0
    assert "stopped: accepted=1 delivered=1 deferred=0 bounced=0" in relay.log()


def test_last_log_line_counts_both_processes(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay()
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert wait_for(lambda: relay.queued() == [])
    assert relay.terminate() == 0
    assert "stopped: accepted=1 delivered=1 deferred=0 bounced=0" in relay.log()
