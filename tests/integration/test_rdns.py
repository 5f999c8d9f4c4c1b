"""SPF-11: iprev (RFC 8601 §3) over the wire, with in-addr.arpa / ip6.arpa zones
for 127.0.0.x and ::1.

The four outcomes of RFC 8601 §2.7.3, plus the HELO agreement the self-check uses.
"""

from __future__ import annotations

import asyncio

import pytest

from mxroute.identity.rdns import IprevResult, iprev
from tests.conftest import resolver_for
from tests.support.dnsserver import DNSServer

ZONE = """
$ORIGIN .
$TTL 300
t.                       IN SOA ns.t. h.t. 1 3600 600 86400 60
0.0.127.in-addr.arpa.    IN SOA ns.t. h.t. 1 3600 600 86400 60
; 127.0.0.2: forward-confirmed (pass)
2.0.0.127.in-addr.arpa.  IN PTR relay.t.
relay.t.                 IN A 127.0.0.2
; 127.0.0.3: PTR name resolves elsewhere, second name has no address (fail)
3.0.0.127.in-addr.arpa.  IN PTR liar.t.
3.0.0.127.in-addr.arpa.  IN PTR ghost.t.
liar.t.                  IN A 127.0.0.99
; 127.0.0.4: no PTR at all (permerror); 127.0.0.5: PTR lookup fails (temperror)
; 127.0.0.6: the only PTR name's forward lookup fails (temperror)
6.0.0.127.in-addr.arpa.  IN PTR sick.t.
; 127.0.0.7: one name confirms, another errs: still pass
7.0.0.127.in-addr.arpa.  IN PTR sick.t.
7.0.0.127.in-addr.arpa.  IN PTR seven.t.
seven.t.                 IN A 127.0.0.7
; ::1, forward-confirmed through AAAA
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa. IN PTR six.t.
six.t.                   IN AAAA ::1
other.t.                 IN A 127.0.0.2
"""


def check(server: DNSServer, ip: str, helo: str | None = None) -> IprevResult:
    return asyncio.run(iprev(resolver_for(server, timeout=0.3), ip, helo))


@pytest.fixture
def server(dns_server: DNSServer) -> DNSServer:
    dns_server.set_zone(ZONE)
    dns_server.fail("5.0.0.127.in-addr.arpa", "SERVFAIL")
    dns_server.fail("sick.t", "TIMEOUT")
    return dns_server


def test_spf11_pass_when_a_ptr_name_maps_back(server: DNSServer) -> None:
    result = check(server, "127.0.0.2", "relay.t")
    assert (result.result, result.names, result.confirmed) == ("pass", ["relay.t"], ["relay.t"])
    assert result.forward_confirmed and result.helo_matches and result.helo_resolves
    body = result.to_json()
    expected = {"ip": "127.0.0.2", "names": ["relay.t"], "forward_confirmed": True,
                "helo_matches": True}
    assert body == body | expected


def test_spf11_pass_for_ipv6_loopback(server: DNSServer) -> None:
    result = check(server, "::1", "six.t")
    assert (result.result, result.confirmed, result.helo_matches) == ("pass", ["six.t"], True)


def test_spf11_fail_when_no_name_maps_back(server: DNSServer) -> None:
    """§2.7.3 fail: a mismatch, or the forward lookup gives NXDOMAIN / NODATA."""
    result = check(server, "127.0.0.3", "liar.t")
    assert result.result == "fail" and not result.forward_confirmed
    assert sorted(result.names) == ["ghost.t", "liar.t"] and result.confirmed == []
    assert result.helo_resolves is False and not result.helo_matches


def test_spf11_permerror_when_no_ptr(server: DNSServer) -> None:
    result = check(server, "127.0.0.4")
    assert (result.result, result.names) == ("permerror", [])


def test_spf11_temperror_on_servfail_or_timeout(server: DNSServer) -> None:
    assert check(server, "127.0.0.5").result == "temperror"  # PTR SERVFAIL
    assert check(server, "127.0.0.6").result == "temperror"  # forward lookup times out


def test_spf11_a_confirmed_name_wins_over_a_failing_one(server: DNSServer) -> None:
    result = check(server, "127.0.0.7")
    assert (result.result, result.confirmed) == ("pass", ["seven.t"])


def test_spf12_helo_resolving_but_not_a_ptr_name(server: DNSServer) -> None:
    """HELO other.t has the IP's address but is not its PTR name: resolves, no match."""
    result = check(server, "127.0.0.2", "other.t")
    assert (result.result, result.helo_resolves, result.helo_matches) == ("pass", True, False)


def test_spf11_ptr_names_capped_at_ten(dns_server: DNSServer) -> None:
    names = "".join(f"9.0.0.127.in-addr.arpa. IN PTR n{i:02d}.t.\n" for i in range(12))
    dns_server.set_zone("$ORIGIN .\n$TTL 300\n" + names + "n11.t. IN A 127.0.0.9\n")
    result = check(dns_server, "127.0.0.9")
    assert len(result.names) == 10
    forward = [q for q in dns_server.queries("A")]
    assert len(forward) == 10
