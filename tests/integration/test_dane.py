"""TLS-7 (DANE, RFC 7672) over the wire: the tests' DNS server sets AD for chosen names and serves
TLSA records; routing.route() looks them up and the courier delivers to real TLS sinks on loopback.

The same ``route()`` and ``Courier`` the relay runs; nothing mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxroute.dns.answer import Outcome
from mxroute.dns.configured import resolver_from_settings
from mxroute.dns.resolver import NetworkTransport, Resolver, Server
from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan
from mxroute.routing.route import policy_from_settings, route
from tests.support.courierkit import MESSAGE, courier_settings
from tests.support.dnsserver import DNSServer
from tests.support.relay import free_port, next_net
from tests.support.smtpsink import Sink, tls_available

pytestmark = pytest.mark.skipif(not tls_available(),
                                reason="the cryptography package is needed for certificates")


def leaf(tmp_path: Path, name: str, ca: Any = None) -> tuple[ssl.SSLContext, bytes, bytes]:
    """A server context for ``name`` (signed by ``ca``, else by a fresh CA): (context, DER cert,
    DER SPKI)."""
    from tests.support.tlsca import TestCA

    return (ca or TestCA(tmp_path / f"ca-{name}")).server_leaf(name)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Site:
    """dest.test with MX mx1 (pref 10) and mx2 (pref 20) on 127.1.N.1/.2, one port for both."""

    def __init__(self, dns: DNSServer) -> None:
        self.dns = dns
        self.net = next_net()
        self.port = free_port(self.ip(1))
        self.sinks: list[Sink] = []

    def ip(self, n: int) -> str:
        return f"127.1.{self.net}.{n}"

    def tlsa_name(self, n: int) -> str:
        return f"_{self.port}._tcp.mx{n}.dest.test"

    def zone(self, *tlsa: tuple[int, str], mx2: bool = False) -> None:
        """MX records and addresses, plus TLSA records given as (host number, "3 1 1 hex")."""
        lines = ["$ORIGIN test.", "$TTL 300", "@ IN SOA ns.test. host.test. 1 3600 600 86400 60",
                 "dest IN MX 10 mx1.dest.test.", f"mx1.dest IN A {self.ip(1)}",
                 f"mx2.dest IN A {self.ip(2)}"]
        if mx2:
            lines.append("dest IN MX 20 mx2.dest.test.")
        lines += [f"{self.tlsa_name(n)}. IN TLSA {text}" for n, text in tlsa]
        self.dns.set_zone("\n".join(lines) + "\n")

    def sink(self, n: int, context: ssl.SSLContext | None = None, **kwargs: Any) -> Sink:
        sink = Sink(self.ip(n), self.port, starttls=context is not None, **kwargs)
        if context is not None:
            sink.tls_context = context
        sink.start()
        self.sinks.append(sink)
        return sink

    def settings(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {"dns_servers": [self.dns.address], "dns_timeout": 0.5,
                                  "dns_attempts": 1, "dns_trust_ad": True, "tls_policy": "dane",
                                  "smtp_port": self.port, "allow_private_destinations": True}
        values.update(overrides)
        return courier_settings(**values)

    def deliver(
        self, settings: Any, courier: Courier | None = None, count: int = 1,
    ) -> tuple[list[RecipientResult], Plan]:
        """Route dest.test and deliver ``count`` messages, one after the other, on one courier."""
        resolver = resolver_from_settings(settings)
        courier = courier or Courier(settings)

        async def go() -> tuple[list[RecipientResult], Plan]:
            out: list[RecipientResult] = []
            try:
                for i in range(count):
                    policy = policy_from_settings(settings)
                    routed = await route(resolver, "dest.test", policy, random.Random(1), settings)
                    plan = routed.plan
                    rcpt = Recipient(f"u{i}@dest.test")
                    envelope = Envelope("s@src.test", [rcpt])
                    out += await courier.deliver(plan, envelope, [rcpt], MESSAGE, tls=routed.tls,
                                                 queue_id="Q1")
                return out, plan
            finally:
                await courier.close()

        return asyncio.run(asyncio.wait_for(go(), 30), debug=True)

    def stop(self) -> None:
        for sink in self.sinks:
            sink.stop()


@pytest.fixture
def site(dns_server: DNSServer) -> Iterator[Site]:
    s = Site(dns_server)
    try:
        yield s
    finally:
        s.stop()


def no_mail(sink: Sink) -> bool:
    return sink.messages == [] and not any(c.upper().startswith(("MAIL", "RCPT", "DATA"))
                                           for conn in sink.connections for c in conn.commands)


# --- the resolver's AD handling ------------------------------------------------------------

def test_tls7_trusted_ad_marks_answers_secure_and_the_cache_keeps_it(dns_server: DNSServer) -> None:
    dns_server.set_zone("$ORIGIN test.\n@ 300 IN SOA ns.test. h.test. 1 3600 600 86400 60\n"
                        "a 300 IN A 192.0.2.1\nb 300 IN A 192.0.2.2\n")
    dns_server.secure = {"a.test"}
    server = [Server(dns_server.host, dns_server.port)]

    async def go(trust: bool) -> list[bool]:
        transport = NetworkTransport(server, timeout=0.5, attempts=1, authenticated_data=trust)
        resolver = Resolver(transport, trust_ad=trust)
        answers = [await resolver.lookup(n, "A") for n in ("a.test", "b.test", "a.test")]
        assert all(a.outcome is Outcome.RECORDS for a in answers)
        assert resolver.stats.queries == 2 and resolver.stats.hits == 1  # the third from the cache
        return [a.secure for a in answers]

    assert asyncio.run(go(True)) == [True, False, True]
    assert all(q.ad for q in dns_server.log)  # RFC 6840 §5.7: the query asks for AD
    dns_server.log.clear()
    # the server would have set AD: not asked, not believed
    assert asyncio.run(go(False)) == [False, False, False]
    assert not any(q.ad for q in dns_server.log)


# --- TLS-7 through routing and the courier ------------------------------------------------

def test_tls7_matching_dane_ee_delivers_over_tls(site: Site, tmp_path: Path) -> None:
    # DANE-EE: no name check (RFC 7672 §3.1.1)
    context, _, spki = leaf(tmp_path, "whatever.example")
    site.zone((1, f"3 1 1 {sha256(spki)}"))
    site.dns.secure = {".dest.test"}
    sink = site.sink(1, context)
    courier = Courier(site.settings())
    [result], plan = site.deliver(site.settings(), courier)
    assert result.disposition is Disposition.DELIVERED, result.reply
    assert (courier.stats["dane"], courier.stats["dane_failures"]) == (1, 0)
    [conn] = sink.connections
    assert conn.tls and conn.commands[:3] == ["EHLO relay.test", "STARTTLS", "EHLO relay.test"]
    assert len(sink.messages) == 1
    assert (site.tlsa_name(1), "TLSA") in site.dns.queries()
    assert plan.dane is not None and plan.dane.mx_secure and plan.dane.hosts[0].need.value == "dane"


def test_tls7_mismatched_tlsa_defers_4_7_5_and_sends_nothing(site: Site, tmp_path: Path) -> None:
    context, _, _ = leaf(tmp_path, "mx1.dest.test")
    _, _, other_spki = leaf(tmp_path, "other.example")
    site.zone((1, f"3 1 1 {sha256(other_spki)}"))
    site.dns.secure = {".dest.test"}
    sink = site.sink(1, context)
    courier = Courier(site.settings())
    [result], _ = site.deliver(site.settings(), courier)
    assert (result.disposition, result.status) == (Disposition.DEFERRED, "4.7.5")
    assert result.reply == (f"451 4.7.5 DANE: TLS authentication of mx1.dest.test[{site.ip(1)}]:"
                            f"{site.port} failed: the certificate matches none of 1 DANE-EE "
                            "record(s)")
    # DSN-6: our TLS-7 verdict, not the host's
    assert result.remote_mta is not None and result.remote_reply is False
    assert no_mail(sink) and len(sink.connections) == 1  # never plain text, never a second try
    assert courier.stats["tls_fallbacks"] == 0
    assert (courier.stats["dane"], courier.stats["dane_failures"]) == (0, 1)


def test_tls7_insecure_dns_stays_opportunistic(site: Site, tmp_path: Path) -> None:
    """No AD (the resolver did not validate): a wrong TLSA record changes nothing, none is asked."""
    context, _, _ = leaf(tmp_path, "mx1.dest.test")
    site.zone((1, "3 1 1 " + "00" * 32))
    sink = site.sink(1, context)
    [result], plan = site.deliver(site.settings())
    assert result.disposition is Disposition.DELIVERED and sink.connections[0].tls
    assert site.dns.queries("TLSA") == []
    assert plan.dane is not None and not plan.dane.mx_secure
    assert plan.dane.hosts[0].need.value == "may"


def test_tls7_insecure_addresses_mean_no_tlsa_lookup(site: Site, tmp_path: Path) -> None:
    context, _, _ = leaf(tmp_path, "mx1.dest.test")
    site.zone((1, "3 1 1 " + "00" * 32))
    site.dns.secure = {"dest.test"}  # the MX RRset only
    site.sink(1, context)
    [result], plan = site.deliver(site.settings())
    assert result.disposition is Disposition.DELIVERED
    assert site.dns.queries("TLSA") == [] and plan.dane is not None and plan.dane.mx_secure
    assert not plan.dane.hosts[0].addresses_secure


def test_tls7_tlsa_servfail_defers_that_host_and_the_next_mx_delivers(
    site: Site, tmp_path: Path,
) -> None:
    context, _, _ = leaf(tmp_path, "mx2.dest.test")
    site.zone(mx2=True)
    site.dns.secure = {".dest.test"}
    # bogus data: a validating resolver says SERVFAIL
    site.dns.fail(site.tlsa_name(1), "SERVFAIL", "TLSA")
    first = site.sink(1, context)
    second = site.sink(2, context)
    [result], plan = site.deliver(site.settings())
    assert result.disposition is Disposition.DELIVERED and result.remote_mta is not None
    assert result.remote_mta.startswith("mx2.dest.test")
    assert first.connections == []  # never contacted
    assert len(second.messages) == 1
    assert plan.dane is not None and [h.need.value for h in plan.dane.hosts] == ["defer", "may"]


def test_tls7_tlsa_servfail_on_the_only_mx_defers_4_7_5(site: Site, tmp_path: Path) -> None:
    context, _, _ = leaf(tmp_path, "mx1.dest.test")
    site.zone()
    site.dns.secure = {".dest.test"}
    site.dns.fail(site.tlsa_name(1), "SERVFAIL", "TLSA")
    sink = site.sink(1, context)
    [result], plan = site.deliver(site.settings())
    assert (result.disposition, result.status) == (Disposition.DEFERRED, "4.7.5")
    assert result.reply == ("451 4.7.5 DANE: the TLSA lookup of every MX host of dest.test "
                            f"failed: {site.tlsa_name(1)} (SERVFAIL)")
    assert sink.connections == []
    # explain shows what delivery does: a temporary failure (exit 75), not "deliverable"
    assert (plan.verdict.value, plan.dsn_status) == ("temporary-failure", "4.7.5")
    assert len(plan.targets) == 1


def test_tls7_only_unusable_records_need_tls_but_no_authentication(
    site: Site, tmp_path: Path,
) -> None:
    context, _, _ = leaf(tmp_path, "other.example")
    site.zone((1, "1 1 1 " + "00" * 32), (2, "0 0 1 " + "00" * 32), mx2=True)
    site.dns.secure = {".dest.test"}
    plain = site.sink(1)  # no STARTTLS: never mail in plain text
    secure = site.sink(2, context)  # any certificate will do
    [result], _ = site.deliver(site.settings())
    assert result.disposition is Disposition.DELIVERED and result.remote_mta is not None
    assert result.remote_mta.startswith("mx2.")
    assert no_mail(plain) and secure.connections[0].tls and len(secure.messages) == 1


def test_tls7_only_unusable_records_and_no_starttls_defers(site: Site) -> None:
    site.zone((1, "1 1 1 " + "00" * 32))
    site.dns.secure = {".dest.test"}
    plain = site.sink(1)
    [result], _ = site.deliver(site.settings())
    assert (result.disposition, result.status) == (Disposition.DEFERRED, "4.7.5")
    assert "TLS required (encrypt) but not offered by mx1.dest.test" in result.reply
    assert no_mail(plain)


def test_tls7_dane_ta_full_certificate_checks_chain_and_mx_name(site: Site, tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ta")
    ta = ca.der.hex()
    good, _, _ = leaf(tmp_path, "mx2.dest.test", ca)
    wrong_name, _, _ = leaf(tmp_path, "elsewhere.example", ca)
    site.zone((1, f"2 0 0 {ta}"), (2, f"2 0 0 {ta}"), mx2=True)
    site.dns.secure = {".dest.test"}
    first = site.sink(1, wrong_name)
    second = site.sink(2, good)
    [result], _ = site.deliver(site.settings())
    assert result.disposition is Disposition.DELIVERED and result.remote_mta is not None
    assert result.remote_mta.startswith("mx2.")
    assert no_mail(first) and len(first.connections) == 1 and len(second.messages) == 1


def test_tls7_dane_ta_name_mismatch_reason(site: Site, tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ta")
    wrong_name, _, _ = leaf(tmp_path, "elsewhere.example", ca)
    site.zone((1, f"2 0 0 {ca.der.hex()}"))
    site.dns.secure = {".dest.test"}
    sink = site.sink(1, wrong_name)
    [result], _ = site.deliver(site.settings())
    assert (result.disposition, result.status) == (Disposition.DEFERRED, "4.7.5")
    assert result.reply.startswith("451 4.7.5 TLS certificate verification failed for "
                                   f"mx1.dest.test[{site.ip(1)}]:{site.port} (policy dane): ")
    assert "mismatch" in result.reply.lower() or "hostname" in result.reply.lower()
    assert no_mail(sink)


def test_tls7_dane_authenticated_session_is_reused(site: Site, tmp_path: Path) -> None:
    context, _, spki = leaf(tmp_path, "mx1.dest.test")
    site.zone((1, f"3 1 2 {hashlib.sha512(spki).hexdigest()}"))
    site.dns.secure = {".dest.test"}
    sink = site.sink(1, context)
    courier = Courier(site.settings())
    results, plan = site.deliver(site.settings(), courier, count=2)
    assert plan.dane is not None and plan.dane.hosts[0].need.value == "dane"
    assert [r.disposition for r in results] == [Disposition.DELIVERED] * 2
    assert courier.stats["reused"] == 1 and len(sink.connections) == 1 and len(sink.messages) == 2


def test_tls7_other_levels_never_ask_for_tlsa(site: Site, tmp_path: Path) -> None:
    context, _, _ = leaf(tmp_path, "mx1.dest.test")
    site.zone((1, "3 1 1 " + "00" * 32))
    site.dns.secure = {".dest.test"}
    site.sink(1, context)
    [result], plan = site.deliver(site.settings(tls_policy="may"))
    assert result.disposition is Disposition.DELIVERED
    assert site.dns.queries("TLSA") == [] and plan.dane is None
