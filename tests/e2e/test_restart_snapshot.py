"""Issue 23: a restart takes the schedule from ``spool/schedule`` (the snapshot the delivery
process writes at a clean stop and periodically) instead of reading every queue file; a STALE
snapshot only ever makes a message looked at earlier, never later, never lost, never twice
(DUR-6, DUR-7).

Six messages queued by an earlier instance (tests/support/spoolfill.py), due DUE seconds
later. serve #1 stops cleanly: the snapshot is written. serve #2 starts from it, then: a message
is deferred again, one held, one delivered, one new accepted (deferred); SIGKILL (the snapshot
stays as #1 wrote it). Offline, a message held before the snapshot is released, and one file
the snapshot lists is damaged without changing its size. serve #3 starts from the stale
snapshot with a sink taking everything: each message ends right.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxroute.relay.spool.format import decode
from tests.support.dnsserver import DNSServer
from tests.support.relay import Relay, World, alive, delivery_pid, rcpt_script, wait_for
from tests.support.spoolfill import fill

DUE = 30.0  # the filled messages' first try, from the fill: after serve #1 and #2 are done
RETRY = 12  # serve #2's retry: a message deferred there is due this much later
NAMES = ("same", "defer", "hold", "release", "deliver", "corrupt")


@pytest.fixture
def world52(tmp_path: Path, dns_server: DNSServer) -> Iterator[World]:
    """A world on 127.0.52.x (this change's loopback range)."""
    with World.running(tmp_path, dns_server, net=52, base="127.0") as w:
        w.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {w.ip(1)}\n")
        yield w


def phase(world: World, n: int) -> Relay:
    """serve on the world's spool, its log in ``serve{n}.log`` (not started)."""
    relay = Relay(world.tmp, world.dns, world.sink_port, retry_min_seconds=RETRY,
                  retry_max_seconds=RETRY)
    relay.log_path = world.tmp / f"serve{n}.log"
    world.relays.append(relay)
    return relay


def next_try(spool: Path, queue_id: str) -> float:
    meta, _, _ = decode((spool / "queue" / queue_id).read_bytes(), queue_id)
    return min(r.next_try for r in meta.pending)


def arrivals(world: World) -> dict[str, list[float]]:
    """Recipient -> when the sink took it (each delivery)."""
    found: dict[str, list[float]] = {}
    for message in world.sinks[0].messages:
        for rcpt in message.rcpt_to:
            found.setdefault(rcpt.split("@")[0], []).append(message.wall)
    return found


def test_stale_snapshot_each_message_ends_right(world52: World) -> None:
    """Issue 23, DUR-6/7: deferred, held, delivered and new after the snapshot, released and
    damaged offline: after the restart each is delivered once at or after its recorded next
    try (the untouched one from the snapshot), the held one stays held, the damaged one goes
    to corrupt/ with a log line when due."""
    sink = world52.sink(1)
    spool = world52.tmp / "spool"
    due = time.time() + DUE
    ids = {name: fill(spool, 1, f"{name}@dest.test", due=due)[0] for name in NAMES}
    first = phase(world52, 1)
    assert first.queue("hold", ids["release"]).returncode == 0  # held before the snapshot
    first.start()
    first.logged("recovery: 6 message(s) queued")
    # The intake hears the delivery process's "ready" just after that line; a stop before it
    # ends a process still recovering, which writes no snapshot (the next start reads the
    # files): give the message a moment, bounded, so this stop is a clean one (CI hit it).
    time.sleep(1.0)
    assert first.terminate() == 0
    assert (spool / "schedule").exists(), first.log()[-2000:]

    second = phase(world52, 2)
    for name in ("defer", "new"):
        rcpt_script(sink, f"{name}@dest.test", "451 4.3.0 later")
    second.start()
    log = second.logged("recovery: 6 message(s) queued")
    assert "5 from the schedule snapshot" in log, log[-2000:]
    assert second.queue("hold", ids["hold"]).returncode == 0
    assert second.queue("flush", ids["defer"], ids["deliver"]).returncode == 0
    second.send("a@sender.test", ["new@dest.test"], b"Subject: new\r\n\r\nnew\r\n")
    assert wait_for(lambda: "deliver" in arrivals(world52)
                    and second.log().count("status=deferred") >= 2, timeout=20), second.log()
    (new,) = set(second.queued()) - set(ids.values())
    assert second.proc is not None
    child = delivery_pid(second.proc.pid)
    second.kill()  # SIGKILL: the snapshot on disk is still serve #1's
    assert wait_for(lambda: not alive(child), timeout=10)

    assert first.queue("release", ids["release"]).returncode == 0  # offline, after the snapshot
    damaged = spool / "queue" / ids["corrupt"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: the snapshot's entry still matches it
    damaged.write_bytes(bytes(data))
    later = {"defer": next_try(spool, ids["defer"]), "new": next_try(spool, new)}
    sink.replies.pop("RCPT", None)

    third = phase(world52, 3)
    third.start()
    log = third.logged("recovery: 6 message(s) queued")
    assert "2 from the schedule snapshot" in log, log[-2000:]
    wanted = {"same", "defer", "release", "new", "deliver"}
    assert wait_for(lambda: wanted <= set(arrivals(world52))
                    and third.queued() == [ids["hold"]], timeout=DUE + 20), \
        (arrivals(world52), third.queued(), third.log()[-3000:])
    log = third.logged(f"{ids['corrupt']}: corrupt queue file moved to corrupt/")
    assert f"{ids['corrupt']}: corrupt queue file moved to corrupt/" in log, log[-3000:]
    got = arrivals(world52)
    assert Counter({k: len(v) for k, v in got.items()}) == Counter(dict.fromkeys(wanted, 1)), got
    assert got["same"][0] >= due - 0.01 and "hold" not in got
    assert all(got[name][0] >= when - 0.01 for name, when in later.items()), (got, later)
    assert os.path.exists(spool / "corrupt" / ids["corrupt"])
    shown = third.queue("show", ids["hold"], "--json")
    assert shown.returncode == 0 and '"held": true' in shown.stdout
    assert third.terminate() == 0
