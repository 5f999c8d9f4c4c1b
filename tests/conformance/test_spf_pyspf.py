"""Cross-check with a real peer: mxroute and pyspf agree on generated records (SPF-1, SPF-7).

Hypothesis builds an SPF record (and an included one) from a vocabulary of
every mechanism, qualifier, CIDR form, modifier and macro, plus a client IP;
the zone is served over the wire by the loopback DNSServer and both
implementations ask it. The results must be equal.

Where RFC 7208 and pyspf 2.0.14 disagree, mxroute follows the RFC and the case
is listed in ``rfc_vs_pyspf`` below, which explains the difference and is the
only way a disagreement is accepted.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.resolver
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxroute.identity.spf.evaluate import check_host
from tests.conftest import resolver_for
from tests.support.dnsserver import DNSServer

spf = pytest.importorskip("spf", reason="pyspf is a test dependency (pip install pyspf)")

ZONE = """
$ORIGIN example.org.
$TTL 300
@       IN SOA ns.example.org. h.example.org. 1 3600 600 86400 60
h       IN A 192.0.2.10
h       IN AAAA 2001:db8::10
h2      IN A 192.0.2.130
@       IN MX 10 h.example.org.
@       IN MX 20 h2.example.org.
m       IN MX 10 h2.example.org.
e       IN A 127.0.0.2
10.2.0.192.x IN A 127.0.0.2
r       IN TXT "v=spf1 a:h.example.org ~all"
x       IN TXT "denied %{i} for %{d}"
none    IN A 192.0.2.99
sf      IN A 192.0.2.98
10.2.0.192.in-addr.arpa. IN PTR h.example.org.
130.2.0.192.in-addr.arpa. IN PTR h2.example.org.
130.2.0.192.in-addr.arpa. IN PTR liar.example.net.
"""

QUALIFIER = st.sampled_from(["", "+", "-", "~", "?"])
MECHANISM = st.sampled_from([
    "a", "a/24", "a//64", "a:h.example.org", "a:h2.example.org/25", "a:nx.example.org",
    "a:none.example.org//0",
    "mx", "mx/24", "mx:m.example.org", "mx:nx.example.org",
    "ptr", "ptr:example.org", "ptr:example.net",
    "ip4:192.0.2.0/24", "ip4:192.0.2.128/25", "ip4:198.51.100.1", "ip6:2001:db8::/32",
    "ip6:::ffff:192.0.2.0/120",
    "exists:e.example.org", "exists:%{i}.x.example.org", "exists:%{ir}.x.example.org",
    "exists:%{l}.nx.example.org",
    "include:i.example.org", "include:r.example.org", "include:nx.example.org",
    "include:sf.example.org",
    "a:%{d2}", "a:%{o}", "exists:%{p}.example.org",
])
MODIFIER = st.sampled_from(
    ["redirect=r.example.org", "exp=x.example.org", "moo=cow", "redirect=nx.example.org"]
)
ALL = st.sampled_from(["-all", "~all", "?all", "+all"])
TERM = st.one_of(st.builds(lambda q, m: q + m, QUALIFIER, MECHANISM), MODIFIER, ALL)
RECORD = st.lists(TERM, max_size=7).map(lambda terms: "v=spf1 " + " ".join(terms))
INNER_MECHANISM = MECHANISM.filter(lambda m: "i.example" not in m)
INNER = st.lists(st.builds(lambda q, m: q + m, QUALIFIER, INNER_MECHANISM), max_size=3)
IPS = st.sampled_from(["192.0.2.10", "192.0.2.130", "192.0.2.77", "198.51.100.1", "2001:db8::10",
                       "2001:db8:1::1", "::ffff:192.0.2.10", "10.0.0.1"])


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer(host="127.0.53.251") as srv:
        yield srv


def pyspf_lookup(server: DNSServer) -> Any:
    """pyspf's DNSLookup, asking only the loopback server (the shape of spf.DNSLookup_dnspython)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 2.0

    def lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[Any]:
        out: list[Any] = []
        try:
            for rdata in resolver.resolve(name, qtype, raise_on_no_answer=False):
                if qtype in ("A", "AAAA"):
                    out.append(((name, qtype), rdata.address))
                elif qtype == "MX":
                    out.append(((name, qtype), (rdata.preference, rdata.exchange)))
                elif qtype == "PTR":
                    out.append(((name, qtype), rdata.target.to_text(True)))
                elif qtype in ("TXT", "SPF"):
                    out.append(((name, qtype), rdata.strings))
        except dns.resolver.NXDOMAIN:
            pass
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise spf.TempError("DNS " + str(exc)) from None
        return out

    return lookup


def rfc_vs_pyspf(record: str, inner: str, ip: str, ours: str, theirs: str) -> str | None:
    """Why a disagreement is pyspf's deviation from RFC 7208, or None if it is not an accepted one.

    1. Void lookups (§4.6.4) count *terms* whose query returns no answer. pyspf counts
       every empty DNS answer, including the A/AAAA lookups of MX hosts and of PTR
       names (steps inside one term) and the %{p} validation, so it reaches permerror
       sooner. mxroute counts the term's own query only.
    2. A repeated *unknown* modifier (``moo=cow moo=cow``): pyspf gives permerror;
       RFC 7208 §6 makes only a repeated redirect or exp an error and says
       unrecognized modifiers MUST be ignored.
    """
    for text in (record, inner):
        names = [t.split("=")[0].lower() for t in text.split() if "=" in t]
        unknown = [name for name in names if name not in ("redirect", "exp", "v")]
        if theirs == "permerror" and len(unknown) != len(set(unknown)):
            return "repeated unknown modifier: RFC 7208 §6 ignores it, pyspf gives permerror"
    steps = any(t in record + " " + inner for t in ("mx", "ptr", "%{p}"))
    if theirs == "permerror" and ours != "permerror" and steps:
        return "void lookups: pyspf counts per query, RFC 7208 §4.6.4 per term"
    return None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(record=RECORD, inner=INNER, ip=IPS, local=st.sampled_from(["user", "a.b", "x-y"]))
def test_mxroute_and_pyspf_agree(server: DNSServer, monkeypatch: pytest.MonkeyPatch,
                                 record: str, inner: list[str], ip: str, local: str) -> None:
    inner_record = "v=spf1 " + " ".join(inner)
    server.set_zone(ZONE + f'@ IN TXT "{record}"\ni IN TXT "{inner_record}"\n')
    server.fail("sf.example.org", "SERVFAIL")
    monkeypatch.setattr(spf, "DNSLookup", pyspf_lookup(server))
    sender = f"{local}@example.org"

    resolver = resolver_for(server, timeout=1.0)
    ours = asyncio.run(check_host(resolver, ip, "example.org", sender, helo="h.example.org"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, _code, _text = spf.query(i=ip, s=sender, h="h.example.org", querytime=20).check()
    if ours.result != theirs:
        why = rfc_vs_pyspf(record, inner_record, ip, ours.result, theirs)
        assert why is not None, (
            f"{record!r} / {inner_record!r} from {ip}: "
            f"mxroute {ours.result}, pyspf {theirs} ({ours.reason})"
        )


def _both(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch, record: str, ip: str
) -> tuple[str, str]:
    server.set_zone(ZONE + f'@ IN TXT "{record}"\n')
    monkeypatch.setattr(spf, "DNSLookup", pyspf_lookup(server))
    ours = asyncio.run(
        check_host(resolver_for(server), ip, "example.org", "u@example.org", helo="h.example.org")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = spf.query(i=ip, s="u@example.org", h="h.example.org", querytime=20).check()[0]
    return ours.result, theirs


def test_documented_disagreement_void_lookups_are_counted_per_term(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPF-5: two void a: terms, then ptr whose PTR RRset has one name that does not exist.

    The ptr term's own query (PTR) answered, so it is not a void term (RFC 7208
    §4.6.4); pyspf counts the NXDOMAIN of the name it validates as a third void.
    """
    record = "v=spf1 a:nx1.example.org a:nx2.example.org ptr:example.net ptr -all"
    assert _both(server, monkeypatch, record, "192.0.2.130") == ("pass", "permerror")
    assert rfc_vs_pyspf(record, "", "192.0.2.130", "pass", "permerror") is not None


def test_documented_disagreement_repeated_unknown_modifier(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 7208 §6: unrecognized modifiers MUST be ignored, repeated or not."""
    record = "v=spf1 moo=cow moo=cow ip4:192.0.2.10"
    assert _both(server, monkeypatch, record, "192.0.2.10") == ("pass", "permerror")
