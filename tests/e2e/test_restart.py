"""Issue 23: after a restart `serve` takes mail at once, whatever the queue holds; the delivery
process recovers the queue in the background (DUR-7: every queued message scheduled, none
lost, none delivered twice).

The spool holds QUEUED messages left by an earlier instance (tests/support/spoolfill.py). The
order is asserted on the log's timestamps, never on speed: the parent's "mxroute ready" (it
listens) comes before the delivery process's "recovery: N message(s) queued".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.relay import MSG, World, wait_for
from tests.support.spoolfill import fill

QUEUED = 6000
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) mxroute\[(\d+)\]")


@pytest.fixture
def world23(tmp_path: Path, dns_server: DNSServer) -> Iterator[World]:
    """A world on 127.0.23.x (issue 23's loopback range)."""
    with World.running(tmp_path, dns_server, net=23, base="127.0") as w:
        w.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {w.ip(1)}\n")
        yield w


def stamp(log: str, text: str) -> datetime:
    """When the first line holding ``text`` was logged."""
    for line in log.splitlines():
        found = _STAMP.match(line)
        if found and text in line:
            return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"no line with {text!r} in the log:\n{log[-3000:]}")


def subjects(world: World) -> Counter[str]:
    found: Counter[str] = Counter()
    for message in world.sinks[0].messages:
        head = message.data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        found.update(line[9:] for line in head.split("\r\n") if line.startswith("Subject: "))
    return found


def test_listens_before_recovery_and_delivers_everything_once(world23: World) -> None:
    """Issue 23, DUR-7: the 220 comes while the delivery process still reads a queue of 6000;
    a message accepted meanwhile and every queued one are delivered exactly once."""
    world23.sink(1)
    spool = world23.tmp / "spool"
    fill(spool, QUEUED, "u@dest.test")
    relay = world23.relay(delivery_concurrency=50)
    relay.send("a@sender.test", ["u@dest.test"], MSG.replace(b"hello", b"during recovery"))
    log = relay.logged("recovery:", "delivery process ready")
    accepted = stamp(log, "status=accepted")
    assert stamp(log, "mxroute ready") < stamp(log, "recovery:"), log[-3000:]
    assert accepted < stamp(log, "delivery process ready"), log[-3000:]
    assert wait_for(lambda: sum(subjects(world23).values()) >= QUEUED + 1, timeout=40), \
        f"{sum(subjects(world23).values())} delivered\n{relay.log()[-3000:]}"
    assert wait_for(lambda: relay.queued() == [], timeout=10)
    counts = subjects(world23)
    assert counts["during recovery"] == 1
    assert all(counts[f"queued {n}"] == 1 for n in range(QUEUED)), counts.most_common(3)
    assert sum(counts.values()) == QUEUED + 1
    assert relay.terminate() == 0
