"""The shared resolver over the wire against a real loopback DNS server (MX-4, MX-6, SEC-12)."""

from __future__ import annotations

import asyncio

import pytest

from mxroute.dns.answer import Outcome
from mxroute.dns.resolver import NetworkTransport, Resolver, Server
from tests.conftest import resolver_for
from tests.support.dnsserver import DNSServer

ZONE = """
$ORIGIN t.
$TTL 300
@       IN SOA ns.t. host.t. 1 3600 600 86400 60
a       IN MX 10 mx.a.t.
mx.a    IN A 127.0.0.2
alias   IN CNAME a.t.
loop1   IN CNAME loop2.t.
loop2   IN CNAME loop1.t.
big     IN TXT "%s"
""" % ("x" * 250)
CHAIN = "\n".join(f"c{i} IN CNAME c{i + 1}.t." for i in range(40)) + "\nc40 IN A 127.0.0.1\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_four_outcomes_stay_distinct(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    dns_server.fail("sf.t")
    dns_server.fail("to.t", "TIMEOUT")
    resolver = resolver_for(dns_server, timeout=0.3)

    async def go() -> list[Outcome]:
        names = [("a.t", "MX"), ("a.t", "A"), ("nx.t", "MX"), ("sf.t", "MX"), ("to.t", "MX")]
        return [(await resolver.lookup(n, t)).outcome for n, t in names]

    assert run(go()) == [
        Outcome.RECORDS,
        Outcome.NODATA,
        Outcome.NXDOMAIN,
        Outcome.SERVFAIL,
        Outcome.TIMEOUT,
    ]


def test_mx4_cname_followed_and_reported(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    answer = run(resolver_for(dns_server).lookup("alias.t", "MX"))
    assert answer.outcome is Outcome.RECORDS and answer.cnames == ("a.t",)
    assert answer.texts == ["10 mx.a.t."]


def test_mx4_cname_loop_is_bounded(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    answer = run(resolver_for(dns_server).lookup("loop1.t", "MX"))
    assert answer.outcome is Outcome.CNAME_LOOP and answer.outcome.temporary


def test_mx4_chain_of_40_is_cut_off(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE + CHAIN)
    answer = run(resolver_for(dns_server).lookup("c0.t", "A"))
    assert answer.outcome is Outcome.CNAME_LOOP and "longer" in answer.detail + "loop"
    assert len(dns_server.log) < 40


def test_sec12_truncated_udp_answer_retried_over_tcp(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    dns_server.truncate.add("big.t")
    answer = run(resolver_for(dns_server).lookup("big.t", "TXT"))
    assert answer.outcome is Outcome.RECORDS and "x" * 250 in answer.texts[0]
    assert [q.transport for q in dns_server.log] == ["udp", "tcp"]


def test_mx1_no_search_domain_is_ever_appended(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    run(resolver_for(dns_server).lookup("shortname", "MX"))
    assert dns_server.queries() == [("shortname", "MX")]


def test_positive_cache_honours_ttl(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    clock = Clock()
    resolver = Resolver(
        NetworkTransport([Server(dns_server.host, dns_server.port)], timeout=0.5, attempts=1),
        clock=clock,
    )
    run(resolver.lookup("a.t", "MX"))
    run(resolver.lookup("a.t", "MX"))
    assert len(dns_server.log) == 1 and resolver.stats.hits == 1
    clock.now += 301
    run(resolver.lookup("a.t", "MX"))
    assert len(dns_server.log) == 2
    assert [r.cached for r in resolver.trace] == [False, True, False]


def test_cached_answers_from_the_cache_alone_as_lookup_would(dns_server: DNSServer) -> None:
    """``cached()`` (the sender check's fast path): None until every link of the chain is cached,
    then the same Answer as ``lookup`` (CNAME followed), no query sent; None again once expired."""
    dns_server.set_zone(ZONE)
    clock = Clock()
    resolver = Resolver(
        NetworkTransport([Server(dns_server.host, dns_server.port)], timeout=0.5, attempts=1),
        clock=clock,
    )
    assert resolver.cached("alias.t", "MX") is None
    run(resolver.lookup("a.t", "MX"))
    assert resolver.cached("alias.t", "MX") is None  # the alias itself was never asked
    looked_up = run(resolver.lookup("alias.t", "MX"))
    asked = len(dns_server.log)
    assert resolver.cached("alias.t", "MX") == looked_up and looked_up.cnames == ("a.t",)
    assert resolver.cached("a.t", "MX") is not None and len(dns_server.log) == asked
    clock.now += 301
    assert resolver.cached("alias.t", "MX") is None and resolver.cached("a.t", "MX") is None
    assert len(dns_server.log) == asked


def test_rfc2308_negative_cache_uses_soa_minimum(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    clock = Clock()
    resolver = Resolver(
        NetworkTransport([Server(dns_server.host, dns_server.port)], timeout=0.5, attempts=1),
        clock=clock,
    )
    first = run(resolver.lookup("nx.t", "MX"))
    assert first.ttl == 60  # min(SOA TTL 300, MINIMUM 60)
    clock.now += 59
    run(resolver.lookup("nx.t", "MX"))
    assert len(dns_server.log) == 1
    clock.now += 2
    run(resolver.lookup("nx.t", "MX"))
    assert len(dns_server.log) == 2


def test_concurrent_identical_questions_are_coalesced(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    dns_server.delay["a.t"] = 0.2
    resolver = resolver_for(dns_server)

    async def go() -> None:
        answers = await asyncio.gather(*(resolver.lookup("a.t", "MX") for _ in range(20)))
        assert all(a.outcome is Outcome.RECORDS for a in answers)

    run(go())
    assert len(dns_server.log) == 1 and resolver.stats.coalesced == 19


def test_sharing_views_ask_once_and_trace_apart(dns_server: DNSServer) -> None:
    """Issue 16 §4 (bulk explain): views from ``sharing()`` share the cache, the questions in
    flight and the stats, each keeps its own trace: 20 views asking at once send one query."""
    dns_server.set_zone(ZONE)
    dns_server.delay["a.t"] = 0.2
    resolver = resolver_for(dns_server)
    views = [resolver.sharing() for _ in range(20)]

    async def go() -> None:
        await asyncio.gather(*(view.lookup("a.t", "MX") for view in views))
        await views[0].lookup("a.t", "MX")

    run(go())
    assert len(dns_server.log) == 1 and resolver.stats.queries == 1
    assert resolver.stats.coalesced == 19 and resolver.stats.hits == 1
    assert [len(view.trace) for view in views] == [2] + [1] * 19
    assert sum(not row.cached for view in views for row in view.trace) == 1
    assert not resolver.trace


def test_next_server_is_asked_when_one_is_silent() -> None:
    with (
        DNSServer(ZONE, host="127.0.53.250") as dead,
        DNSServer(ZONE, host="127.0.53.251") as alive,
    ):
        dead.fail("a.t", "TIMEOUT")
        transport = NetworkTransport(
            [Server(dead.host, dead.port), Server(alive.host, alive.port)], timeout=0.3, attempts=1
        )
        answer = run(Resolver(transport).lookup("a.t", "MX"))
        assert answer.outcome is Outcome.RECORDS
        assert len(dead.log) == 1 and len(alive.log) == 1


def test_mx6_resolver_recovers_when_the_server_heals(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    dns_server.fail("a.t")
    clock = Clock()
    resolver = Resolver(
        NetworkTransport([Server(dns_server.host, dns_server.port)], timeout=0.5, attempts=1),
        clock=clock,
    )
    assert run(resolver.lookup("a.t", "MX")).outcome is Outcome.SERVFAIL
    dns_server.heal()
    clock.now += 10  # a SERVFAIL is remembered only briefly
    assert run(resolver.lookup("a.t", "MX")).outcome is Outcome.RECORDS


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"])
def test_server_parsing(text: str) -> None:
    server = Server.parse(text)
    assert server.host in ("127.0.0.1", "::1")
