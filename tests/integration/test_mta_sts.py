"""TLS-5 and TLS-6: MTA-STS over the wire (RFC 8461).

DNS from the tests' own server, the policy from a real HTTPS server on loopback with a
certificate of tests/support/tlsca.py, delivery to real SMTP sinks. The port and the CA are
the documented test overrides (``mta_sts_port``, ``tls_ca_file``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.routing.route import mta_sts_reach
from mxroute.tls.mtasts.policy import Lookup
from mxroute.tls.mtasts.store import MtaSts
from mxroute.tls.policy import of_settings
from tests.conftest import resolver_for
from tests.support.courierkit import MESSAGE, courier_settings
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import Sink, tls_available
from tests.support.stsserver import PolicyServer
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.skipif(not tls_available(),
                                reason="the cryptography package is needed for certificates")

_nets = itertools.cycle(range(10, 250))
ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx1.dest.test\r\nmax_age: 86400\r\n"


class Env:
    """A DNS zone for dest.test, a CA, the policy server's address and the settings to use them."""

    def __init__(self, tmp: Path, dns: DNSServer) -> None:
        self.net = next(_nets)
        self.dns = dns
        self.ca = TestCA(tmp / "ca")
        self.store = tmp / "mta-sts.json"
        self.web_host = self.ip(80)
        self.txt = '"v=STSv1; id=one"'

    def ip(self, n: int) -> str:
        return f"127.0.{self.net}.{n}"

    def zone(self, txt: str | None = None) -> None:
        self.txt = self.txt if txt is None else txt
        record = f"_mta-sts.dest IN TXT {self.txt}\n" if self.txt else ""
        self.dns.set_zone(
            "$ORIGIN test.\n$TTL 1\n@ IN SOA ns.test. host.test. 1 3600 600 86400 1\n"
            f"dest IN MX 10 mx1.dest.test.\ndest IN MX 20 mx2.dest.test.\n"
            f"mx1.dest IN A {self.ip(1)}\nmx2.dest IN A {self.ip(2)}\n"
            f"mta-sts.dest IN A {self.web_host}\n{record}")

    def web(self, body: str = ENFORCE, names: tuple[str, ...] = ("mta-sts.dest.test",),
            port: int = 0) -> PolicyServer:
        return PolicyServer(self.web_host, self.ca.server_context(*names), body, port=port)

    def settings(self, web: PolicyServer, **overrides: Any) -> Any:
        values: dict[str, Any] = {"mta_sts_port": web.port, "tls_ca_file": self.ca.ca_file,
                                  "allow_private_destinations": True}
        values.update(overrides)
        return courier_settings(**values)

    def mta_sts(self, web: PolicyServer, **overrides: Any) -> MtaSts:
        return MtaSts(mta_sts_reach(self.settings(web, **overrides)), resolver_for(self.dns),
                      store=self.store)


@pytest.fixture
def env(tmp_path: Path, dns_server: DNSServer) -> Iterator[Env]:
    e = Env(tmp_path, dns_server)
    e.zone()
    yield e


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded(), debug=True)


def lookup(sts: MtaSts, domain: str = "dest.test") -> Lookup:
    result: Lookup = run(sts.lookup(domain))
    return result


# --- TLS-5: discovery, fetch, cache -------------------------------------------------------------

def test_tls5_policy_fetched_over_https_with_sni_and_pkix(env: Env) -> None:
    with env.web() as web:
        result = lookup(env.mta_sts(web))
        assert result.source == "fetched" and result.txt == "found" and result.txt_id == "one"
        assert result.policy is not None
        assert (result.policy.mode, result.policy.mx) == ("enforce", ("mx1.dest.test",))
        assert web.requests == [("/.well-known/mta-sts.txt", "mta-sts.dest.test")]
        assert web.sni == ["mta-sts.dest.test"]


def test_tls5_no_txt_record_means_no_policy_and_no_fetch(env: Env) -> None:
    env.zone(txt="")
    with env.web() as web:
        result = lookup(env.mta_sts(web))
        assert (result.txt, result.source, result.policy) == ("absent", "none", None)
        assert web.requests == []


def test_tls5_two_txt_records_mean_no_policy(env: Env) -> None:
    env.zone(txt='"v=STSv1; id=one"\n_mta-sts.dest IN TXT "v=STSv1; id=two"')
    with env.web() as web:
        result = lookup(env.mta_sts(web))
        assert (result.txt, result.policy) == ("invalid", None) and web.requests == []


@pytest.mark.parametrize(("change", "error"), [
    # no redirects
    ({"status": 301, "headers": {"Location": "https://elsewhere.test/"}}, "HTTP status 301"),
    ({"status": 404}, "HTTP status 404"),
    ({"content_type": "text/html"}, "is not text/plain"),
    ({"body": "version: STSv1\nmode: enforce\nmx: " + "a" * 63 + "\n" * 70000}, "byte limit"),
    ({"body": "<html>hello</html>"}, "not a 'key: value' line"),
])
def test_tls5_bad_response_means_no_policy(env: Env, change: dict[str, Any], error: str) -> None:
    with env.web() as web:
        for name, value in change.items():
            setattr(web, name, value)
        result = lookup(env.mta_sts(web))
        assert (result.source, result.policy) == ("none", None)
        assert result.error is not None and error in result.error
        assert len(web.requests) == 1  # the redirect was not followed


def test_tls5_certificate_not_for_mta_sts_name_means_no_policy(env: Env) -> None:
    with env.web(names=("www.dest.test",)) as web:
        result = lookup(env.mta_sts(web))
        assert result.policy is None and result.error is not None
        assert "mta-sts.dest.test" in result.error
        assert web.requests == []  # nothing was asked over an unverified connection


def test_tls5_cached_policy_applies_when_the_server_is_down_and_id_change_refetches(
    env: Env,
) -> None:
    with env.web() as web:
        sts = env.mta_sts(web)
        assert lookup(sts).source == "fetched"
        assert lookup(sts).source == "cache" and len(web.requests) == 1  # same id, fresh: no fetch
        port = web.port
    env.zone(txt='"v=STSv1; id=two"')  # a new id, and the HTTPS server is gone
    # the TXT answer is not taken from the old resolver's cache
    sts.resolver = resolver_for(env.dns)
    result = lookup(sts)
    assert result.source == "cache" and result.policy is not None
    assert result.policy.mode == "enforce"
    assert result.entry is not None and result.entry.id == "one"
    assert result.error is not None and "cannot reach mta-sts.dest.test" in result.error
    with env.web(body=ENFORCE.replace("mx1.dest.test", "*.dest.test"), port=port) as web2:
        sts.clock = lambda: __import__("time").time() + 61  # past the pause after a failed fetch
        result = lookup(sts)
        assert result.source == "fetched" and result.entry is not None and result.entry.id == "two"
        assert result.policy is not None and result.policy.mx == ("*.dest.test",)
        assert len(web2.requests) == 1


def test_tls5_queue_flush_fetches_again_without_the_pause_after_a_failure(env: Env) -> None:
    """A failed fetch is not repeated for 60 s, except after ``mxroute queue flush`` (the operator
    fixed the policy server and wants delivery now): the courier's forget_unreachable() clears
    it."""
    from mxroute.relay.courier.courier import Courier

    with env.web() as web:
        port = web.port
    sts = env.mta_sts(web)  # the server is gone: the first fetch fails
    assert lookup(sts).error is not None and sts.stats["fetch_failures"] == 1
    with env.web(port=port) as web2:
        assert lookup(sts).source == "none" and web2.requests == []  # within the pause: not asked
        Courier(env.settings(web2), mta_sts=sts).forget_unreachable()  # what `queue flush` calls
        assert lookup(sts).source == "fetched" and len(web2.requests) == 1
        assert sts.snapshot() == {"fetches": 2, "fetch_failures": 1, "policies": 1}


def test_tls5_policies_survive_a_restart(env: Env) -> None:
    with env.web() as web:
        assert lookup(env.mta_sts(web)).source == "fetched"
        assert env.store.exists()
        port = web.port
    settings = env.settings(type("W", (), {"port": port})())
    again = MtaSts(mta_sts_reach(settings), resolver_for(env.dns), store=env.store)
    result = lookup(again)  # a new process: the policy comes from the store, the server is down
    assert result.source == "cache" and result.policy is not None
    assert result.policy.mx == ("mx1.dest.test",)


def test_tls5_corrupt_store_is_ignored(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.store.write_text("{not json")
    with env.web() as web:
        assert lookup(env.mta_sts(web)).source == "fetched"
    assert any("MTA-STS cache" in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records)


def test_tls5_concurrent_lookups_share_one_fetch(env: Env) -> None:
    with env.web() as web:
        sts = env.mta_sts(web)

        async def many() -> list[Lookup]:
            return list(await asyncio.gather(*(sts.lookup("dest.test") for _ in range(10))))

        results = run(many())
        assert {r.source for r in results} == {"fetched"} and len(web.requests) == 1


# --- TLS-6: enforcement in delivery -------------------------------------------------------------

def plan(*targets: Target) -> Plan:
    return Plan("dest.test", Verdict.DELIVERABLE, "", "2.0.0", targets=targets)


def target(n: int, sink: Sink) -> Target:
    return Target(f"mx{n}.dest.test", 10 * n, sink.host, 4, sink.port)


def deliver(courier: Courier, the_plan: Plan) -> RecipientResult:
    rcpt = Recipient("a@dest.test")

    async def go() -> RecipientResult:
        try:
            envelope = Envelope("s@src.test", [rcpt])
            tls = of_settings(the_plan.domain, courier.settings)  # as route() looks it up
            [result] = await courier.deliver(the_plan, envelope, [rcpt], MESSAGE, tls=tls,
                                             queue_id="Q1")
            return result
        finally:
            await courier.close()

    result: RecipientResult = run(go())
    return result


def sink(host: str, context: Any) -> Sink:
    s = Sink(host, starttls=True)
    s.tls_context = context
    return s


def test_tls6_enforce_only_the_matching_mx_is_contacted(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    context = env.ca.server_context("mx1.dest.test")
    sni: list[str | None] = []
    context.sni_callback = lambda _s, name, _c: sni.append(name)  # type: ignore[assignment]
    with env.web() as web, sink(env.ip(2), env.ca.server_context("mx2.dest.test")) as mx2, \
            sink(env.ip(1), context) as mx1:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(2, mx2), target(1, mx1)))  # mx2 first: it must be skipped
        assert r.disposition is Disposition.DELIVERED, r.reply
        assert mx2.connections == [] and len(mx1.messages) == 1 and mx1.connections[0].tls
        assert sni == ["mx1.dest.test"]
    assert any("mx2.dest.test matches no mx pattern" in rec.getMessage()
               and "TLS-6" in rec.getMessage()
               for rec in caplog.records if rec.name == "mxroute.relay.courier.hosts")


def test_tls6_enforce_invalid_certificate_defers_never_plain_text(env: Env) -> None:
    with env.web() as web, sink(env.ip(1), env.ca.server_context("other.dest.test")) as mx1, \
            sink(env.ip(2), env.ca.server_context("mx2.dest.test")) as mx2:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(1, mx1), target(2, mx2)))
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        # the last host tried: mx2, skipped
        assert "451 4.7.5 MTA-STS policy of dest.test (enforce)" in r.reply
        # DSN-6: mx2 never said it (never contacted)
        assert r.remote_mta is not None and r.remote_reply is False
        assert mx1.messages == [] and mx2.connections == []
        # no plain-text retry
        assert [c.commands for c in mx1.connections] == [["EHLO relay.test", "STARTTLS"]]
        assert courier.stats["tls_fallbacks"] == 0


def test_tls6_enforce_without_starttls_defers(env: Env) -> None:
    with env.web() as web, Sink(env.ip(1)) as mx1:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(1, mx1)))
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        assert "not offered" in r.reply
        assert mx1.messages == []


def test_tls6_testing_mode_delivers_and_logs_what_enforce_would_refuse(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with env.web(body=ENFORCE.replace("enforce", "testing")) as web, Sink(env.ip(2)) as mx2:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(2, mx2)))
        assert r.disposition is Disposition.DELIVERED and len(mx2.messages) == 1
    note = "(testing): mx2.dest.test matches no mx pattern; enforce would skip it"
    assert any(note in rec.getMessage() for rec in caplog.records)


def test_tls6_a_tls_policy_domains_entry_wins_over_mta_sts(env: Env) -> None:
    with env.web() as web, Sink(env.ip(2)) as mx2:
        settings = env.settings(web, tls_policy_domains={"dest.test": "may"})
        courier = Courier(settings, mta_sts=MtaSts(mta_sts_reach(settings), resolver_for(env.dns)))
        r = deliver(courier, plan(target(2, mx2)))
        assert r.disposition is Disposition.DELIVERED and web.requests == []


def test_tls6_mta_sts_off_asks_nothing(env: Env) -> None:
    with env.web() as web, Sink(env.ip(2)) as mx2:
        settings = env.settings(web, mta_sts=False)
        courier = Courier(settings, mta_sts=MtaSts(mta_sts_reach(settings), resolver_for(env.dns)))
        r = deliver(courier, plan(target(2, mx2)))
        assert r.disposition is Disposition.DELIVERED and web.requests == []
        assert ("_mta-sts.dest.test", "TXT") not in env.dns.queries()


TESTING = ENFORCE.replace("enforce", "testing")


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "(TLS-6 testing)" in r.getMessage()]


def test_tls6_testing_mode_bad_certificate_is_logged_and_delivered_over_unverified_tls(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    wrong = env.ca.server_context("wrong.dest.test")
    with env.web(body=TESTING) as web, sink(env.ip(1), wrong) as mx1:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(1, mx1)))
        assert r.disposition is Disposition.DELIVERED, r.reply
        assert len(mx1.messages) == 1
        first, second = mx1.connections  # the verified attempt, then TLS as without a policy
        assert first.commands == ["EHLO relay.test", "STARTTLS"] and not first.transactions
        assert second.tls and second.transactions  # never plain text
        assert courier.stats["tls_fallbacks"] == 0
    [line] = audit_lines(caplog)
    assert "certificate verification failed for mx1.dest.test" in line
    assert "enforce would refuse it" in line


def test_tls6_testing_mode_without_starttls_is_logged_and_delivered(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with env.web(body=TESTING) as web, Sink(env.ip(1)) as mx1:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(1, mx1)))
        assert r.disposition is Disposition.DELIVERED and len(mx1.connections) == 1
    [line] = audit_lines(caplog)
    assert "STARTTLS not offered" in line and "enforce would refuse it" in line


def test_tls6_testing_mode_valid_certificate_logs_nothing(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    valid = env.ca.server_context("mx1.dest.test")
    with env.web(body=TESTING) as web, sink(env.ip(1), valid) as mx1:
        courier = Courier(env.settings(web), mta_sts=env.mta_sts(web))
        r = deliver(courier, plan(target(1, mx1)))
        assert r.disposition is Disposition.DELIVERED
        assert len(mx1.connections) == 1 and mx1.connections[0].tls
    assert audit_lines(caplog) == []


def test_tls5_policy_host_on_a_private_address_is_not_fetched_sec11(env: Env) -> None:
    with env.web() as web:
        result = lookup(env.mta_sts(web, allow_private_destinations=False))
        assert result.policy is None and result.error is not None
        assert "loopback/private" in result.error
        assert web.requests == [] and web.sni == []


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b"10\r\nversion: STSv1\r\n\r\n" + f"{len(ENFORCE) - 16:x}".encode() + b"\r\n"
           + ENFORCE[16:].encode()
           + b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("raw", [
    CHUNKED,
    # no length: read to the end
    b"HTTP/1.0 200 OK\r\nContent-Type: TEXT/PLAIN\r\n\r\n" + ENFORCE.encode(),
])
def test_tls5_chunked_and_unsized_responses_are_read(env: Env, raw: bytes) -> None:
    with env.web() as web:
        web.raw = raw
        result = lookup(env.mta_sts(web))
        assert result.source == "fetched" and result.policy is not None
        assert result.policy.mx == ("mx1.dest.test",)


@pytest.mark.parametrize(("raw", "error"), [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"20000\r\n" + b"a" * 100, "byte limit"),  # a chunk over 64 KiB is refused before it is read
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"mx: a.test\r\n" * 6000,
     "byte limit"),
    (b"SMTP/1.0 220 hello\r\n\r\n", "not an HTTP/1.x response"),
])
def test_tls5_oversized_or_malformed_responses_give_no_policy(
    env: Env, raw: bytes, error: str,
) -> None:
    with env.web() as web:
        web.raw = raw
        result = lookup(env.mta_sts(web))
        assert result.policy is None and result.error is not None and error in result.error
