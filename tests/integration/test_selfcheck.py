"""SelfCheck (serve's identity self-check) in-process over the loopback DNS server:
cached per domain for the answers' TTL, bounded, one check per domain at a time (SPF-10, SPF-12).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from mxroute.identity import selfcheck
from mxroute.identity.selfcheck import SelfCheck
from tests.conftest import resolver_for
from tests.support.dnsserver import DNSServer

ZONE = """
$ORIGIN .
t.                        300 IN SOA ns.t. h.t. 1 3600 600 86400 60
a.t.                      120 IN TXT "v=spf1 -all"
b.t.                     7200 IN TXT "v=spf1 ip4:127.0.0.2 -all"
relay.t.                 7200 IN A 127.0.0.2
2.0.0.127.in-addr.arpa.  7200 IN PTR relay.t.
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle(check: SelfCheck) -> None:
    for _ in range(200):  # bounded: the checks talk to a loopback server
        if not check.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("self-check tasks did not finish")


def test_cached_for_the_smallest_ttl_then_checked_again(
    dns_server: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.set_zone(ZONE)
    clock = Clock()

    async def scenario() -> list[int]:
        check = SelfCheck(resolver_for(dns_server), ["127.0.0.2"], "relay.t", clock=clock)
        counts = []
        for step in (0, 0, 119, 2):  # seconds later; a.t's TXT has TTL 120
            clock.now += step
            check.observe("x@a.t")
            check.observe("x@a.t")  # while the first check runs: no second one
            await settle(check)
            counts.append(check.checks)
        return counts

    with caplog.at_level(logging.INFO, logger="mxroute.identity.selfcheck"):
        assert asyncio.run(scenario()) == [1, 1, 1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("mail from a.t: egress 127.0.0.2 spf-fail" in w for w in warnings)


def test_ttl_is_clamped_and_the_cache_bounded(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    clock = Clock()

    async def scenario() -> SelfCheck:
        resolver = resolver_for(dns_server)
        check = SelfCheck(resolver, ["127.0.0.2"], "relay.t", clock=clock, max_domains=2)
        for sender in ("x@b.t", "x@a.t", "x@nx.t"):
            check.observe(sender)
            await settle(check)
        return check

    check = asyncio.run(scenario())
    expiries = check.expiries()
    assert list(expiries) == ["a.t", "nx.t"]  # b.t, the oldest, was dropped
    assert expiries["a.t"] == clock.now + 120
    assert expiries["nx.t"] == clock.now + 60  # NXDOMAIN's negative TTL (SOA minimum 60)


def test_null_sender_and_failures_never_raise(
    dns_server: DNSServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.set_zone(ZONE)

    async def broken(self: SelfCheck, domain: str, sender: str) -> int:
        raise RuntimeError("boom")

    async def scenario() -> SelfCheck:
        check = SelfCheck(resolver_for(dns_server), ["127.0.0.2"], "relay.t")
        check.observe("")
        monkeypatch.setattr(SelfCheck, "check", broken)
        check.observe("x@b.t")
        await settle(check)
        return check

    with caplog.at_level(logging.INFO, logger="mxroute.identity.selfcheck"):
        check = asyncio.run(scenario())
    expiries = check.expiries()
    assert list(expiries) == ["b.t"] and expiries["b.t"] < float("inf")
    assert any("self-check for b.t failed" in r.getMessage() for r in caplog.records)
    assert selfcheck.MIN_TTL == 60


def test_issue14_from_domains_cached_for_the_dmarc_answers_ttl(
    dns_server: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 14 §3: one DMARC check per From: domain while it runs and while cached (the
    smallest TTL of the answers it used), None (no single From: domain) checks nothing; a fail
    is one warning with the fix, a missing record INFO."""
    dns_server.set_zone(ZONE + '_dmarc.a.t. 90 IN TXT "v=DMARC1; p=reject"\n')
    clock = Clock()

    async def scenario() -> list[int]:
        check = SelfCheck(resolver_for(dns_server), ["127.0.0.2"], "relay.t", clock=clock)
        counts = []
        for step in (0, 89, 2):  # seconds later; _dmarc.a.t has TTL 90
            clock.now += step
            check.observe_author("x@a.t", "a.t")
            check.observe_author("y@a.t", "a.t")  # while the first runs: no second one
            check.observe_author("x@a.t", None)
            await settle(check)
            counts.append(check.author_checks)
        check.observe_author("x@b.t", "b.t")
        await settle(check)
        return counts

    with caplog.at_level(logging.INFO, logger="mxroute.identity.selfcheck"):
        assert asyncio.run(scenario()) == [1, 1, 2]
    messages = [r.getMessage() for r in caplog.records]
    fails = [m for m in messages if "dmarc-fail" in m]
    assert len(fails) == 2 and all(m.startswith("identity: From: a.t: dmarc-fail (p=reject)")
                                   for m in fails)
    assert "add ip4:127.0.0.2 to a.t's SPF record" in fails[0]
    assert any(m.startswith("identity: From: b.t: dmarc-none: no DMARC record at _dmarc.b.t")
               for m in messages)
