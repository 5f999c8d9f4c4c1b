"""SPF-8: macro expansion (RFC 7208 §7), with the §7.4 examples verbatim."""

from __future__ import annotations

import asyncio

import pytest

from mxroute.dns.resolver import Resolver
from mxroute.dns.zonefile import ZoneData, ZoneTransport
from mxroute.identity.spf.evaluate import SPFOptions, expand_macros
from mxroute.identity.spf.macros import parse_macro_string
from mxroute.identity.spf.results import PermError

SENDER = "strong-bad@email.example.com"
DOMAIN = "email.example.com"


def expand(text: str, ip: str = "192.0.2.3", *, explanation: bool = False,
           zone: ZoneData | None = None, sender: str = SENDER, domain: str = DOMAIN,
           helo: str = "mx.example.org") -> str:
    resolver = Resolver(ZoneTransport(zone or ZoneData()))
    options = SPFOptions(receiver="mx.example.net", clock=lambda: 1234567890.5)
    return asyncio.run(expand_macros(resolver, text, ip=ip, sender=sender, domain=domain, helo=helo,
                                     explanation=explanation, options=options))


# RFC 7208 §7.4, verbatim: <sender> strong-bad@email.example.com, <ip> 192.0.2.3.
RFC_7_4 = [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
]


@pytest.mark.parametrize(("macro", "expected"), RFC_7_4)
def test_spf8_rfc7208_section_7_4_examples_ipv4(macro: str, expected: str) -> None:
    assert expand(macro) == expected


def test_spf8_rfc7208_section_7_4_example_ipv6() -> None:
    """§7.4: <ip> 2001:db8::cb01 gives dotted nibbles and "ip6"."""
    assert expand("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_spf8_escapes_and_url_escaping() -> None:
    """§7.1 %% %_ %-; §7.3 an upper-case letter URL-escapes (RFC 3986 unreserved kept)."""
    assert expand("a%%b%_c%-d", explanation=True) == "a%b c%20d"
    assert expand(
        "%{S}", sender="a b+c@example.com", domain="example.com", explanation=True
    ) == "a%20b%2Bc%40example.com"
    assert expand(
        "%{L}.example.com", sender="~x._-@example.com", domain="example.com"
    ) == "~x._-.example.com"


def test_spf8_custom_delimiters_and_transformers() -> None:
    """§7.3: split on any delimiter given, reverse, keep the rightmost N, join with dots."""
    assert expand("%{l+_}.example.com", sender="a+b_c-d@x.example") == "a.b.c-d.example.com"
    assert expand("%{lr+-}.example.com", sender="a+b-c@x.example") == "c.b.a.example.com"
    assert expand("%{d2r}.x.example") == "example.email.x.example"
    assert expand("%{d100}.x.example") == "email.example.com.x.example"


def test_spf8_exp_only_letters_and_values() -> None:
    """§7.2: c, r and t only in exp text; c is the readable IP, v is in-addr / ip6."""
    assert expand("%{c} %{r} %{t} %{v} %{h}", explanation=True) == (
        "192.0.2.3 mx.example.net 1234567890 in-addr mx.example.org"
    )
    assert expand("%{c} %{v}", "2001:db8::cb01", explanation=True) == "2001:db8::cb01 ip6"
    for letter in "crt":
        with pytest.raises(PermError):
            expand(f"%{{{letter}}}.example.com")


def test_spf8_ipv6_nibbles_upper_case_in_explanations() -> None:
    """Suite test v-macro-ip6 (and pyspf): explanation text shows upper-case nibbles."""
    assert expand("%{i}", "cafe:babe::1", explanation=True).startswith("C.A.F.E.B.A.B.E.0")


def test_spf8_ipv4_mapped_client_is_ipv4() -> None:
    assert expand("%{i} %{v}", "::ffff:192.0.2.3", explanation=True) == "192.0.2.3 in-addr"


@pytest.mark.parametrize("bad", ["%{x}", "%{d0}", "%{", "%{d", "%x", "%", "%{d*}",
                                 "a b.example.com", "%{ }", "caf\u00e9.example.com",
                                 "x\x00.example.com"])
def test_spf8_bad_macro_is_permerror(bad: str) -> None:
    with pytest.raises(PermError):
        parse_macro_string(bad)


def test_spf8_domain_spec_over_253_truncated_from_the_left() -> None:
    """§4.8: drop whole labels from the left until at most 253 characters remain."""
    local = ".".join(["abcdefghi"] * 30)  # 299 characters
    result = expand("%{l}.example.com", sender=f"{local}@example.com")
    assert len(result) <= 253
    assert result.endswith(".abcdefghi.example.com")
    assert not result.startswith(".") and result.split(".")[0] == "abcdefghi"


def test_spf8_p_macro_validated_name() -> None:
    """§7.3 p: a PTR name that resolves back, the one in <domain> preferred; else "unknown"."""
    zone = ZoneData()
    zone.load_text(
        "$ORIGIN .\n"
        "3.2.0.192.in-addr.arpa. 300 IN PTR other.example.net.\n"
        "3.2.0.192.in-addr.arpa. 300 IN PTR mx.email.example.com.\n"
        "3.2.0.192.in-addr.arpa. 300 IN PTR fake.email.example.com.\n"
        "other.example.net. 300 IN A 192.0.2.3\n"
        "mx.email.example.com. 300 IN A 192.0.2.3\n"
        "fake.email.example.com. 300 IN A 192.0.2.99\n"
    )
    assert expand("%{p}", zone=zone) == "mx.email.example.com"
    assert expand("%{p}", zone=zone, domain="example.org") == "other.example.net"
    assert expand("%{p}", "192.0.2.4", zone=zone) == "unknown"


def test_spf8_macro_bomb_is_bounded() -> None:
    """Hostile exp text: thousands of %{s} stop at the expansion cap as permerror."""
    with pytest.raises(PermError):
        expand("%{s}" * 5000, sender=("x" * 60) + "@example.com", explanation=True)
