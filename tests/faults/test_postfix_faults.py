"""Interop under faults (RTY-1, DUR-6, DUR-7): the real relay delivering to a private Postfix smtpd
instance (as tests/integration/test_interop_postfix.py: own config and queue, every message put on
hold so it can be counted) that is stopped in the middle of a burst and started again. Deferred mail
drains once it is back (``mxroute queue flush``); every acknowledged message reaches Postfix;
duplicates are counted (only a stop between Postfix's 250 and the relay's state append may
duplicate).

Skipped with the reason when Postfix is not installed or we are not root; a failure under CI=true.
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.faults.conftest import skip_or_fail
from tests.support.postfix import (
    POSTFIX,
    PostfixInstance,
    start_postfix,
    stop_postfix,
    unavailable,
)
from tests.support.relay import Relay, World, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.slow]

HOST = "127.0.3.2"  # not tests/integration/test_interop_postfix.py's 127.0.3.1


def _postfix(instance: PostfixInstance, action: str) -> None:
    done = subprocess.run([str(POSTFIX), "-c", str(instance.config), action], check=False,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, (action, done.stderr.decode(errors="replace"))


@pytest.fixture
def postfix_mta() -> Iterator[PostfixInstance]:
    why = unavailable()
    if why:
        skip_or_fail(why)
    instance = start_postfix(HOST, prefix="mxroute-faults-postfix-")
    try:
        yield instance
    finally:
        stop_postfix(instance, instance.root)


def test_postfix_stopped_mid_run_deferred_mail_drains_when_it_is_back(
        fworld: World, postfix_mta: PostfixInstance, figures: Callable[..., None]) -> None:
    """RTY-1 with a real MTA: Postfix stops during a burst; mail is deferred, none lost; started
    again and flushed, every acknowledged message is in Postfix's queue (counted by Message-ID)."""
    pf = postfix_mta
    fworld.zone(f"pf IN MX 10 mx.pf.test.\nmx.pf IN A {pf.host}\nsender IN MX 10 mx.sender.test.\n"
                f"mx.sender IN A {fworld.ip(9)}\n")
    relay = Relay(fworld.tmp, fworld.dns, pf.port, retry_min_seconds=1, retry_max_seconds=2,
                  connect_timeout=2.0)
    fworld.relays.append(relay)
    relay.start()
    acked: list[str] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        token = f"pf{n}"
        body = (f"From: a@sender.test\r\nTo: {token}@pf.test\r\nSubject: {token}\r\n"
                f"Message-ID: <{token}@sender.test>\r\n\r\npostfix fault test {token}\r\n").encode()
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as client:
            client.sendmail("a@sender.test", [f"{token}@pf.test"], body)
        with lock:
            acked.append(token)

    for n in range(5):  # Postfix up
        send(n)
    assert len(pf.wait_held(5, timeout=20)) == 5
    stopper = threading.Thread(target=_postfix, args=(pf, "stop"))
    burst = threading.Thread(target=lambda: [send(n) for n in range(5, 25)])
    burst.start()
    time.sleep(0.2)
    stopper.start()  # Postfix goes away in the middle of the burst
    stopper.join(60)
    burst.join(60)
    assert wait_for(lambda: not pf.answering(), timeout=20)
    for n in range(25, 30):  # Postfix down
        send(n)
    assert wait_for(lambda: relay.queued(), timeout=10)
    deferred = len(relay.queued())
    listing = [json.loads(line) for line in relay.queue("list", "--json").stdout.splitlines()]
    assert sorted(m["queue_id"] for m in listing) == relay.queued()
    time.sleep(2.5)  # a few retries against the closed port: still nothing lost
    assert relay.proc is not None and relay.proc.poll() is None
    _postfix(pf, "start")
    assert wait_for(pf.answering, timeout=20)
    assert relay.queue("flush").returncode == 0
    assert wait_for(lambda: not relay.queued() and len(pf.held()) >= len(acked),
                    timeout=40), relay.queued()
    ids = Counter()
    for queue_id in pf.held():
        match = re.search(r"(?im)^Message-ID:\s*<(pf\d+)@sender.test>", pf.postcat(queue_id, "-h"))
        assert match, queue_id
        ids[match.group(1)] += 1
    lost = sorted(set(acked) - set(ids))
    duplicated = sum(c - 1 for c in ids.values() if c > 1)
    figures("interop: Postfix stopped and started mid-run", messages_sent=30,
            acknowledged=len(acked), deferred_while_down=deferred, delivered=len(set(ids)),
            lost=len(lost), duplicated=duplicated)
    assert len(acked) == 30
    assert lost == []
