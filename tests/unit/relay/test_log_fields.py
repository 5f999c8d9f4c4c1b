"""Issue 15 C5 and D, the pure parts: the ``Received:`` field with the verified client name beside
the HELO (SESS-19), and the delivery line's ``delay=``/``delays=`` text."""

from __future__ import annotations

import time

from mxroute.relay.courier.attempt import Attempt
from mxroute.relay.courier.courier import _delays, _seconds
from mxroute.relay.envelope import Envelope, Times
from mxroute.relay.intake.params import received_header


def header(helo: str, rdns: str, ip: str = "192.0.2.7") -> str:
    return received_header(helo=helo, rdns=rdns, ip=ip, by="relay.test", proto="ESMTP",
                           queue_id="Q1", rcpt=None, now=0.0).decode().split("\r\n")[0]


def test_received_names_the_helo_then_the_verified_name_and_address() -> None:
    """issue 15 C5: ``from HELO (RDNS [IP])``, as Postfix writes it."""
    assert header("www.google.com", "unknown") == (
        "Received: from www.google.com (unknown [192.0.2.7])")
    assert header("app", "mx.example.net") == "Received: from app (mx.example.net [192.0.2.7])"
    assert header("", "unknown", "2001:db8::1") == (
        "Received: from unknown (unknown [IPv6:2001:db8::1])")
    hostile = header("evil\r\nX-Injected: 1", "a b\r\nc")
    assert "\r" not in hostile and "\n" not in hostile and hostile.startswith("Received: from ")


def test_seconds_read_as_postfix_writes_delays() -> None:
    """issue 15 D: trailing zeros dropped, never negative."""
    assert [_seconds(x) for x in (0.0, 0.3, 1.25, 12.0, -0.5)] == ["0", "0.3", "1.25", "12", "0"]


def test_delays_add_up_from_mail_from_to_now() -> None:
    """issue 15 D: a = intake, b = arrival to the attempt, c = routing + set-up, d = sending;
    ``delay`` counts from MAIL FROM (arrival - intake)."""
    attempt = Attempt(envelope=Envelope(sender="a@x.test"), body=b"", eight_bit=False, utf8=False)
    attempt.setup, attempt.transfer = 0.25, 0.5
    now = time.time()
    text = _delays(attempt, Times(arrival=now - 10.0, intake=2.0, started=now - 1.0, routing=0.25),
                   elapsed=1.0)
    delay, delays = text.split(", ")
    assert 11.99 <= float(delay.removeprefix("delay=")) < 13.0
    assert delays == "delays=2/9/0.5/0.5"
    assert _delays(attempt, None, elapsed=0.75) == "delay=0.75, delays=0/0/0.25/0.5"
