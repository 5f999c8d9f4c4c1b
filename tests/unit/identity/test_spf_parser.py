"""SPF record parsing (RFC 7208 §4.5, §4.6.1 ABNF, §5, §6): pure, no DNS."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxroute.identity.spf.macros import Macro
from mxroute.identity.spf.parse import is_spf_record, parse_record
from mxroute.identity.spf.results import PermError


def test_spf2_version_selection_is_exact_and_case_insensitive() -> None:
    """SPF-2 / §4.5: "v=spf1" then SP or end; nothing else is an SPF record."""
    assert is_spf_record("v=spf1")
    assert is_spf_record("V=SPF1 -all")
    assert not is_spf_record("v=spf10 -all")
    assert not is_spf_record("v=spf1\t-all")
    assert not is_spf_record(" v=spf1 -all")
    assert not is_spf_record("spf2.0/pra -all")


def test_spf7_mechanisms_qualifiers_and_cidr() -> None:
    record = parse_record("v=spf1 +a -mx:example.org/24//64 ~ptr ?include:_spf.example.com "
                          "ip4:192.0.2.0/24 ip6:2001:db8::/32 exists:%{ir}.x.example.com -all")
    names = [(m.qualifier, m.name) for m in record.mechanisms]
    assert names == [("+", "a"), ("-", "mx"), ("~", "ptr"), ("?", "include"), ("+", "ip4"),
                     ("+", "ip6"), ("+", "exists"), ("-", "all")]
    mx = record.mechanisms[1]
    assert (mx.cidr4, mx.cidr6, mx.spec) == (24, 64, ("example.org",))
    assert record.mechanisms[4].network == ipaddress.ip_network("192.0.2.0/24")
    assert record.mechanisms[5].network == ipaddress.ip_network("2001:db8::/32")
    assert isinstance(record.mechanisms[6].spec[0], Macro)  # type: ignore[index]
    assert [m.result for m in record.mechanisms[:4]] == ["pass", "fail", "softfail", "neutral"]


def test_spf7_dual_cidr_forms() -> None:
    """§5.6 dual-cidr-length: /n, //n, /n//m, on a and mx with or without a domain."""
    cases = {
        "a/24": (24, 128), "a//64": (32, 64), "a/0//0": (0, 0), "mx:x.example.com//128": (32, 128)
    }
    for term, cidrs in cases.items():
        m = parse_record(f"v=spf1 {term}").mechanisms[0]
        assert (m.cidr4, m.cidr6) == cidrs, term


def test_spf7_host_bits_in_ip4_are_masked() -> None:
    network = parse_record("v=spf1 ip4:192.0.2.77/24").mechanisms[0].network
    assert network == ipaddress.ip_network("192.0.2.0/24")


def test_spf7_modifiers_redirect_exp_unknown() -> None:
    """§6: redirect and exp are kept; unknown modifiers are ignored if they parse."""
    record = parse_record(
        "v=spf1 redirect=_spf.example.com exp=why.%{d} moo.cow-far_out=man:dog/cat"
    )
    assert record.redirect == ("_spf.example.com",)
    assert record.exp is not None and record.mechanisms == ()


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 redirect=a.example.com redirect=b.example.com",  # duplicate redirect (§6)
        "v=spf1 exp=a.example.com exp=b.example.com",  # duplicate exp (§6)
        "v=spf1 ip4:192.0.2.1/33",  # §5.6 cidr range
        "v=spf1 ip4:192.0.2.1/032",  # no leading zero (cidr4-032)
        "v=spf1 ip6:2001:db8::/129",
        "v=spf1 a/",
        "v=spf1 a:example.com/24/64",
        "v=spf1 ip4:192.0.2",
        "v=spf1 ip4:192.0.02.1",  # qnum has no leading zeros
        "v=spf1 ip4",
        "v=spf1 ip6:::1%eth0",
        "v=spf1 include",  # include needs a domain (§5.2)
        "v=spf1 exists:",
        "v=spf1 all:example.com",
        "v=spf1 -all/8",
        "v=spf1 foo:bar",  # unknown mechanism
        "v=spf1 a:museum",  # domain-end needs "." toplabel (§7.1)
        "v=spf1 a:111.222.33.44",  # numeric toplabel
        "v=spf1 a:example.com/",
        "v=spf1 exists:%{x}.example.com",
        "v=spf1 moo=%{x}",  # unknown modifier still has to be a macro-string
        "v=spf1 a:ctrl.example.com\rptr -all",  # control character (test control-char-policy)
        "v=spf1 ip4:192.0.2.5\n include:x.example.com",
        "v=spf1 \x80a:example.net -all",  # non-ASCII
        "v=spf1 -all\u00a0",
    ],
)
def test_spf8_syntax_errors_are_permerror(record: str) -> None:
    """§4.6: a syntax error anywhere makes the whole record permerror."""
    with pytest.raises(PermError):
        parse_record(record)


def test_spf7_terms_after_all_must_still_parse() -> None:
    """§4.6 / §5.1: terms after "all" are ignored in evaluation, not in syntax."""
    with pytest.raises(PermError):
        parse_record("v=spf1 -all foo:bar")
    assert len(parse_record("v=spf1 -all a:example.com").mechanisms) == 2


def test_spf_spaces_between_terms_and_trailing() -> None:
    """§4.6.1: 1*SP between terms, *SP at the end (tests two-spaces, trailing-space)."""
    assert len(parse_record("v=spf1 a  -all ").mechanisms) == 2


def test_spf_hostile_10000_character_record_parses_in_linear_time() -> None:
    """A 10,000-character record is just many terms: parsed, never a crash."""
    terms = " ".join(f"ip4:10.{i // 256 % 256}.{i % 256}.0/24" for i in range(600))
    record = parse_record("v=spf1 " + terms + " -all")
    assert len(record.text) > 10000 and len(record.mechanisms) == 601


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=200))
def test_spf_parser_never_raises_anything_but_permerror(tail: str) -> None:
    """Arbitrary text after v=spf1 either parses or is permerror (hostile input)."""
    try:
        parse_record("v=spf1 " + tail)
    except PermError:
        pass
