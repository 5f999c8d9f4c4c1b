"""ZoneData, the zone-file backend behind --zone and the tests' DNS server (EXP-3).

``ZoneData.add()`` takes presentation text: names inside the rdata (an MX
exchange, a CNAME or PTR target) must be stored absolute, so answers go on the
wire and CNAME chains are followed.
"""

from __future__ import annotations

import dns.message
import dns.name
import dns.rdatatype

from mxroute.dns.zonefile import ZoneData


def ask(data: ZoneData, name: str, rdtype: str) -> dns.message.Message:
    response = data.answer(dns.message.make_query(name, rdtype))
    assert response is not None
    dns.message.from_wire(response.to_wire())  # it must render: no relative names left
    return response


def test_add_keeps_rdata_targets_absolute() -> None:
    data = ZoneData()
    data.add("a.test", "MX", 300, "10 mx.a.test.")
    data.add("alias.test", "CNAME", 300, "a.test.")
    data.add("1.0.0.127.in-addr.arpa", "PTR", 300, "relay.a.test.")
    mx = ask(data, "a.test", "MX").answer[0][0]
    assert mx.exchange == dns.name.from_text("mx.a.test.") and mx.exchange.is_absolute()
    ptr = ask(data, "1.0.0.127.in-addr.arpa", "PTR").answer[0][0]
    assert ptr.target.to_text() == "relay.a.test."


def test_add_cname_chain_is_followed() -> None:
    data = ZoneData()
    data.add("a.test", "MX", 300, "10 mx.a.test.")
    data.add("alias.test", "CNAME", 300, "a.test.")
    answer = ask(data, "alias.test", "MX").answer
    assert [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)) for rrset in answer] == [
        ("alias.test.", "CNAME"), ("a.test.", "MX")]


def test_add_relative_names_complete_with_origin() -> None:
    data = ZoneData()
    data.add("a.test", "MX", 300, "10 mx", origin="a.test")
    # no origin: relative to the root, as in a zone file at "$ORIGIN ."
    data.add("b.test", "MX", 300, "10 mx")
    assert ask(data, "a.test", "MX").answer[0][0].exchange.to_text() == "mx.a.test."
    assert ask(data, "b.test", "MX").answer[0][0].exchange.to_text() == "mx."


def test_add_and_load_text_agree() -> None:
    added, loaded = ZoneData(), ZoneData()
    added.add("a.test", "MX", 300, "10 mx.a.test.", "20 mx2.a.test.")
    loaded.load_text("$ORIGIN a.test.\n@ 300 IN MX 10 mx\n@ 300 IN MX 20 mx2.a.test.\n")
    assert ask(added, "a.test", "MX").answer == ask(loaded, "a.test", "MX").answer


def test_tls7_secure_directive_sets_ad_only_when_asked() -> None:
    """`; mxroute: SECURE name [type]` (".name": every name under it) answers with AD when the
    query has AD."""
    import dns.flags
    import dns.message

    from mxroute.dns.zonefile import ZoneData

    data = ZoneData()
    data.load_text("$ORIGIN t.\n@ 300 IN SOA ns.t. h.t. 1 3600 600 86400 60\na 300 IN A 192.0.2.1\n"
                   "b.c 300 IN A 192.0.2.2\nd 300 IN A 192.0.2.3\n"
                   "; mxroute: SECURE a.t. A\n; mxroute: SECURE .c.t\n")

    def ad(name: str, rdtype: str = "A", asked: bool = True) -> bool:
        query = dns.message.make_query(name, rdtype)
        if asked:
            query.flags |= dns.flags.AD
        response = data.answer(query)
        assert response is not None
        return bool(response.flags & dns.flags.AD)

    # NXDOMAIN under a secure subtree: secure denial
    assert ad("a.t.") and ad("b.c.t.") and ad("nothing.c.t.")
    assert not ad("a.t.", "AAAA") and not ad("d.t.") and not ad("a.t.", asked=False)


def test_issue16_zone_of_a_name_the_loaded_zones_and_outside_them() -> None:
    """Issue 16 §2: the loaded zones are the SOA owners, and for records outside any, their
    topmost names; a domain under none is outside every loaded zone."""
    data = ZoneData()
    data.load_text("$ORIGIN z.test.\n@ 300 IN SOA ns.z.test. h.z.test. 1 2 3 4 5\n"
                   "mx 300 IN A 127.0.0.1\n")
    data.add("bare.test", "MX", 300, "10 mx.z.test.")
    data.add("deep.bare.test", "A", 300, "127.0.0.2")
    assert data.zone_of("mx.z.test") == "z.test" and data.zone_of("z.test") == "z.test"
    assert data.zone_of("nothere.z.test") == "z.test"
    assert data.zone_of("x.deep.bare.test") == "bare.test"
    assert data.zone_of("elsewhere.test") is None and data.zone_of("test") is None
    data.add("late.test", "A", 300, "127.0.0.3")  # apexes follow what is added
    assert data.zone_of("late.test") == "late.test"
