"""Issue 15 D: each delivery line tells the whole story, in Postfix's words: ``delay=`` (seconds
since the client's MAIL FROM), ``delays=a/b/c/d`` (before the queue, in the queue, connection
set-up with DNS and TLS, transmission), ``tls=`` (protocol/cipher/verification) and
``relay=none`` when no host was contacted; the older fields keep their order for log filters.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.support.relay import MSG, Relay, World, wait_for
from tests.support.smtpsink import tls_available

LINE = re.compile(
    r"(?P<qid>\w+): to=<(?P<to>[^>]+)>, relay=(?P<relay>\S+), delay=(?P<delay>[\d.]+), "
    r"delays=(?P<a>[\d.]+)/(?P<b>[\d.]+)/(?P<c>[\d.]+)/(?P<d>[\d.]+), tls=(?P<tls>\S+), "
    r"dsn=(?P<dsn>[\d.]+), status=(?P<status>\w+) \(.*\)$"
)


def lines(relay: Relay, qid: str, status: str, count: int = 1) -> list[re.Match[str]]:
    """The delivery lines of ``qid``, once ``count`` of them say ``status`` (bounded wait)."""
    def found() -> list[re.Match[str]]:
        matches = [LINE.search(x) for x in relay.log().splitlines() if f" {qid}: to=<" in x]
        return [m for m in matches if m] if sum(
            1 for m in matches if m and m["status"] == status) >= count else []
    result = wait_for(found, timeout=30)
    assert result, relay.log()
    return list(result)


def submit(relay: Relay, rcpt: str, pause: float = 0.0) -> str:
    with relay.client() as client:
        client.mail("a@sender.test")
        time.sleep(pause)  # the client takes its time: counted before the queue (a)
        client.rcpt(rcpt)
        code, reply = client.data(MSG)
    assert code == 250
    return reply.split()[-1].decode()


@pytest.mark.skipif(not tls_available(), reason="needs the cryptography package for the sink")
def test_sent_line_has_delay_delays_and_tls(world: World) -> None:
    """issue 15 D: ``delay`` counts from MAIL FROM (a ≥ the client's own pause), the four parts
    add up to it, and ``tls=`` names the protocol, cipher and verification of the session."""
    world.sink(1, starttls=True)
    relay = world.relay()
    qid = submit(relay, "u@dest.test", pause=0.5)
    (line,) = lines(relay, qid, "sent")
    assert line["relay"] == f"mx1.dest.test[{world.ip(1)}]:{world.sink_port}"
    delay, parts = float(line["delay"]), [float(line[k]) for k in "abcd"]
    assert parts[0] >= 0.5 and delay >= parts[0]
    assert sum(parts) <= delay + 0.05, line.group(0)
    protocol, cipher, verified = line["tls"].split("/")
    assert protocol in ("TLSv1.2", "TLSv1.3") and cipher and verified == "unverified"
    assert line["dsn"] == "2.0.0"


def test_time_in_the_queue_grows_with_each_retry(world: World) -> None:
    """issue 15 D: a retried recipient's second line has more ``delay`` and more time in the queue
    (b) than its first; a plain-text session reads ``tls=none``."""
    sink = world.sink(1)
    sink.replies["RCPT"] = ["451 4.3.0 busy"]  # the first RCPT only
    relay = world.relay()
    qid = submit(relay, "u@dest.test")
    first, second = lines(relay, qid, "sent")
    assert (first["status"], second["status"]) == ("deferred", "sent")
    assert float(second["delay"]) > float(first["delay"])
    assert float(second["b"]) > float(first["b"])
    assert first["tls"] == second["tls"] == "none"
    assert first["relay"] == second["relay"] != "none"  # the host was contacted both times


def test_relay_none_when_no_host_was_contacted(world: World) -> None:
    """issue 15 D: the MX refuses the connection: ``relay=none`` (as Postfix), ``tls=none``,
    the reason names the host."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(7)}\n")  # no one listens
    relay = world.relay()
    qid = submit(relay, "u@dest.test")
    line = lines(relay, qid, "deferred")[0]
    assert line["relay"] == "none" and line["tls"] == "none", line.group(0)
    assert world.ip(7) in line.group(0)
