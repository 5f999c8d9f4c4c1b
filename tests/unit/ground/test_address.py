"""Address parsing and normalisation: MX-1, MX-13, SEC-3, SEC-5, SEC-12."""

from __future__ import annotations

import ipaddress

import pytest

from mxroute.address import normalize_domain, parse_address, parse_path
from mxroute.errors import AddressError


def test_mx1_domain_lowercased_and_idn_to_alabels() -> None:
    assert parse_address("User@Example.COM").domain == "example.com"
    assert parse_address("u@bücher.example").domain == "xn--bcher-kva.example"
    assert parse_address("u@bücher.example").local == "u"


def test_local_part_case_is_kept() -> None:
    assert parse_address("John.Doe@example.com").local == "John.Doe"


@pytest.mark.parametrize("text", [
    "a\r\nRCPT TO:<x@evil>@d.test", '"a\nb"@d.test', "a\x00@d.test", "x" * 65 + "@d.test",
    "@d.test", "u@", "u", "u@d..test", "u@-d.test", "u@d.test.", "u@" + "a" * 64 + ".test",
    "u@[300.1.1.1]", "u@[IPv6:zz::1]", "a b@d.test", "u@d_t.test",
])
def test_sec5_malformed_addresses_are_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_sec12_label_and_name_lengths() -> None:
    assert normalize_domain("a" * 63 + ".test")
    with pytest.raises(AddressError):
        normalize_domain("a" * 64 + ".test")
    with pytest.raises(AddressError):
        normalize_domain(".".join(["abcd"] * 60))


def test_mx13_address_literals() -> None:
    v4 = parse_address("u@[127.0.0.4]")
    assert v4.literal == ipaddress.ip_address("127.0.0.4") and v4.domain == "[127.0.0.4]"
    v6 = parse_address("u@[IPv6:2001:db8::1]")
    assert v6.literal == ipaddress.ip_address("2001:db8::1") and v6.domain == "[IPv6:2001:db8::1]"


def test_quoted_local_part() -> None:
    assert parse_address('"john smith"@d.test').local == '"john smith"'


def test_sec3_source_route_dropped_to_final_hop() -> None:
    assert str(parse_path("<@a.test,@b.test:u@d.test>")) == "u@d.test"
    assert parse_path("<>") is None
    with pytest.raises(AddressError):
        parse_path("u@d.test")


def test_utf8_local_part_needs_smtputf8() -> None:
    assert parse_address("用户@example.test").utf8
    assert not parse_address("user@example.test").utf8


@pytest.mark.parametrize("text", ["<u@192.0.2.1>", "<u@127.0.0.1>", "<u@host.123>", "<u@1>"])
def test_dsn13_ip_address_as_domain_refused_in_the_path(text: str) -> None:
    """DSN-13: no host name ends in an all-numeric label (RFC 1123 §2.1, RFC 3696 §2), so such a
    path is refused at MAIL/RCPT rather than accepted and bounced as NXDOMAIN; literals use
    brackets."""
    with pytest.raises(AddressError, match=r"\[") as caught:
        parse_path(text)
    assert caught.value.smtp_reply().startswith("501 5.1.3 ")
    assert parse_path("<u@[192.0.2.1]>") is not None and parse_path("<u@1host.test>") is not None
    assert parse_path("<u@123.example>") is not None  # a numeric label elsewhere is a host name
