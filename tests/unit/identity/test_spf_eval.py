"""check_host() semantics (RFC 7208 §4–§6) over an in-process zone (ZoneTransport).

SPF-2..7, SPF-9.
"""

from __future__ import annotations

import asyncio
import json

import dns.message
import dns.name
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxroute.dns.resolver import Resolver
from mxroute.dns.zonefile import ZoneData, ZoneTransport
from mxroute.identity.spf.evaluate import SPFOptions, check_host, check_sender
from mxroute.identity.spf.results import RESULTS, SPFResult

HEAD = "$ORIGIN t.\n$TTL 300\n@ IN SOA ns.t. h.t. 1 3600 600 86400 60\n"


def zone(text: str) -> ZoneData:
    data = ZoneData()
    data.load_text(HEAD + text)
    return data


def spf(data: ZoneData, ip: str = "192.0.2.1", sender: str = "u@d.t", domain: str | None = None,
        options: SPFOptions | None = None, resolver: Resolver | None = None) -> SPFResult:
    resolver = resolver or Resolver(ZoneTransport(data))
    domain = domain if domain is not None else sender.rpartition("@")[2]
    return asyncio.run(check_host(resolver, ip, domain, sender, helo="helo.t",
                                  options=options or SPFOptions(default_explanation="DEFAULT")))


def result(text: str, ip: str = "192.0.2.1", **kw: object) -> str:
    return spf(zone(text), ip, **kw).result  # type: ignore[arg-type]


# --- SPF-2: initial processing and record selection (§4.3, §4.4, §4.5, §3.3) ---------------


def test_spf2_no_such_domain_or_no_record_is_none() -> None:
    assert result("", sender="u@nx.t") == "none"
    assert result('d IN TXT "hello"\n') == "none"
    assert result('d IN TXT "v=spf10 -all"\n') == "none"


def test_spf2_dns_failure_on_txt_is_temperror() -> None:
    for kind in ("SERVFAIL", "TIMEOUT"):
        data = zone('d IN TXT "v=spf1 -all"\n')
        data.fail("d.t", kind, "TXT")
        assert spf(data).result == "temperror", kind


def test_spf2_two_records_is_permerror_and_strings_join_without_separator() -> None:
    assert result('d IN TXT "v=spf1 -all"\nd IN TXT "v=spf1 +all"\n') == "permerror"
    assert result('d IN TXT "v=spf1 ip4:" "192.0.2.1 -all"\n') == "pass"
    assert result('d IN TXT "v=spf1" "-all"\n') == "none"  # "v=spf1-all" is not version + SP


def test_spf2_malformed_or_single_label_domain_is_none_without_dns() -> None:
    data = zone('d IN TXT "v=spf1 -all"\n')
    resolver = Resolver(ZoneTransport(data))
    for domain in ("t", "a..t", ("x" * 64) + ".t", "[192.0.2.1]", ""):
        outcome = spf(data, domain=domain, sender=f"u@{domain}", resolver=resolver)
        assert outcome.result == "none", domain
    assert resolver.stats.queries == 0


def test_spf2_sender_without_local_part_uses_postmaster() -> None:
    text = 'd IN TXT "v=spf1 exists:%{l}.ok.t -all"\npostmaster.ok IN A 127.0.0.2\n'
    assert result(text, sender="@d.t") == "pass"
    assert result(text, sender="other@d.t") == "fail"


def test_spf10_null_sender_checks_helo_identity() -> None:
    """§2.4: MAIL FROM <> means check_host(ip, helo, postmaster@helo)."""
    data = zone('helo IN TXT "v=spf1 ip4:192.0.2.1 -all"\n')
    outcome = asyncio.run(check_sender(Resolver(ZoneTransport(data)), "192.0.2.1", "", "helo.t"))
    assert (outcome.result, outcome.domain, outcome.sender) == (
        "pass", "helo.t", "postmaster@helo.t"
    )


# --- SPF-3, SPF-4, SPF-5: processing limits (§4.6.4) --------------------------------------


def include_chain(length: int) -> str:
    lines = ['d IN TXT "v=spf1 include:i1.t -all"\n']
    for i in range(1, length):
        lines.append(f'i{i} IN TXT "v=spf1 include:i{i + 1}.t -all"\n')
    lines.append(f'i{length} IN TXT "v=spf1 ip4:192.0.2.1 -all"\n')
    return "".join(lines)


def test_spf3_ten_includes_evaluate_eleven_are_permerror() -> None:
    assert result(include_chain(10)) == "pass"
    assert result(include_chain(11)) == "permerror"


def test_spf3_all_ip4_ip6_do_not_count_but_a_and_redirect_do() -> None:
    many_ip = " ".join(f"ip4:198.51.100.{i} ip6:2001:db8::{i}" for i in range(6))
    ten_a = " ".join(["a"] * 10)
    d_a = "d IN A 10.0.0.1\n"
    assert result(f'd IN TXT "v=spf1 {many_ip} " "{ten_a} ip4:192.0.2.1 -all"\n{d_a}') == "pass"
    assert result(
        f'd IN TXT "v=spf1 {many_ip} " "{ten_a} a ip4:192.0.2.1 -all"\n{d_a}'
    ) == "permerror"
    ten = " ".join(["a"] * 9)
    r_all = 'r IN TXT "v=spf1 +all"\n'
    assert result(f'd IN TXT "v=spf1 {ten} redirect=r.t"\n{d_a}{r_all}') == "pass"
    assert result(f'd IN TXT "v=spf1 {ten} a redirect=r.t"\n{d_a}{r_all}') == "permerror"


def test_spf3_include_loop_and_redirect_loop_are_permerror() -> None:
    loop = 'd IN TXT "v=spf1 include:e.t -all"\ne IN TXT "v=spf1 include:d.t -all"\n'
    assert result(loop) == "permerror"
    assert result('d IN TXT "v=spf1 redirect=d.t"\n') == "permerror"


def test_spf4_mx_with_eleven_names_is_permerror() -> None:
    mx = "".join(f"d IN MX {i} m{i}.t.\nm{i} IN A 10.0.0.{i}\n" for i in range(11))
    assert result('d IN TXT "v=spf1 mx -all"\n' + mx) == "permerror"
    ten = "".join(f"d IN MX {i} m{i}.t.\nm{i} IN A 10.0.0.{i}\n" for i in range(10))
    assert result('d IN TXT "v=spf1 mx -all"\n' + ten) == "fail"
    assert result('d IN TXT "v=spf1 mx -all"\n' + ten, ip="10.0.0.9") == "pass"


def test_spf4_ptr_names_beyond_ten_are_ignored() -> None:
    """§4.6.4: only the first 10 PTR names are checked; no error for more."""
    names = "".join(f"1.2.0.192.in-addr.arpa. IN PTR n{i:02d}.t.\n" for i in range(11))
    # Only the name sorting last (the 11th by rdata order) resolves back.
    text = 'd IN TXT "v=spf1 ptr:n10.t -all"\n' + names + "n10 IN A 192.0.2.1\n"
    data = zone(text)
    outcome = spf(data)
    assert outcome.result == "fail"
    lookups = [lookup for entry in outcome.trace for lookup in entry.lookups]
    forward = [lookup for lookup in lookups if lookup.startswith("A ")]
    assert len(forward) == 10


def test_spf5_void_lookups_two_allowed_third_permerror_configurable() -> None:
    two = 'd IN TXT "v=spf1 a:v1.t a:v2.t ?all"\n'
    three = 'd IN TXT "v=spf1 a:v1.t a:v2.t exists:v3.t ?all"\n'
    assert result(two) == "neutral"
    assert result(three) == "permerror"
    assert spf(zone(three), options=SPFOptions(max_void_lookups=3)).result == "neutral"


class SlowTransport(ZoneTransport):
    """Every answer takes ``delay`` seconds (SPF-6 without sockets)."""

    def __init__(self, data: ZoneData, delay: float) -> None:
        super().__init__(data)
        self.delay = delay

    async def query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.Message:
        await asyncio.sleep(self.delay)
        return await super().query(qname, rdtype)


def test_spf6_overall_time_bound_gives_temperror() -> None:
    """§4.6.4: at least 20 s by default; over the configured bound, temperror."""
    assert SPFOptions().timeout >= 20
    text = 'd IN TXT "v=spf1 ' + " ".join(f"a:h{i}.t" for i in range(9)) + ' -all"\n'
    resolver = Resolver(ZoneTransport(zone(text)))
    resolver.transport = SlowTransport(zone(text), 0.05)
    outcome = spf(zone(text), resolver=resolver, options=SPFOptions(timeout=0.2))
    assert outcome.result == "temperror" and "0.2 s" in outcome.reason


# --- SPF-7: mechanism and modifier semantics ---------------------------------------------------


INCLUDED = {
    "pass": ('i IN TXT "v=spf1 +all"\n', "pass"),  # match -> outer qualifier
    "fail": ('i IN TXT "v=spf1 -all"\n', "softfail"),  # no match -> falls to ~all
    "softfail": ('i IN TXT "v=spf1 ~all"\n', "softfail"),
    "neutral": ('i IN TXT "v=spf1 ?all"\n', "softfail"),
    "permerror": ('i IN TXT "v=spf1 bogus"\n', "permerror"),
    "none": ("i IN A 10.0.0.1\n", "permerror"),
}


@pytest.mark.parametrize("inner", sorted(INCLUDED))
def test_spf7_include_result_mapping(inner: str) -> None:
    """§5.2 table: pass -> match; fail/softfail/neutral -> no match; permerror/none -> permerror."""
    text, expected = INCLUDED[inner]
    assert result('d IN TXT "v=spf1 include:i.t ~all"\n' + text) == expected


def test_spf7_include_temperror_propagates() -> None:
    data = zone('d IN TXT "v=spf1 include:i.t ~all"\ni IN TXT "v=spf1 +all"\n')
    data.fail("i.t", "SERVFAIL")
    assert spf(data).result == "temperror"


def test_spf7_a_mx_with_cidr_and_families() -> None:
    text = ('d IN TXT "v=spf1 a/24 mx:m.t//64 -all"\nd IN A 192.0.2.200\nd IN AAAA 2001:db8::1\n'
            "m IN MX 5 mx.m.t.\nmx.m IN AAAA 2001:db8:0:0:ffff::1\n")
    assert result(text, "192.0.2.9") == "pass"
    assert result(text, "192.0.3.9") == "fail"
    assert result(text, "2001:db8::abcd") == "pass"  # /64 of mx.m.t
    assert result(text, "2001:db8:1::1") == "fail"


def test_spf7_ipv4_mapped_client_is_ipv4() -> None:
    assert result('d IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n', "::ffff:192.0.2.7") == "pass"
    assert result('d IN TXT "v=spf1 ip6:::ffff:0:0/96 -all"\n', "::ffff:192.0.2.7") == "fail"


def test_spf7_exists_queries_a_even_for_ipv6_clients() -> None:
    text = 'd IN TXT "v=spf1 exists:e.t -all"\ne IN A 127.0.0.2\n'
    assert result(text, "2001:db8::1") == "pass"


def test_spf7_terms_after_all_and_redirect_with_all_are_ignored() -> None:
    assert result('d IN TXT "v=spf1 -all +all"\n') == "fail"
    assert result('d IN TXT "v=spf1 ?all redirect=r.t"\nr IN TXT "v=spf1 +all"\n') == "neutral"


def test_spf7_redirect_semantics() -> None:
    redirect = 'd IN TXT "v=spf1 redirect=r.t"\n'
    assert result(redirect + 'r IN TXT "v=spf1 ip4:192.0.2.1 -all"\n') == "pass"
    assert result(redirect + "r IN A 10.0.0.1\n") == "permerror"  # §6.1: none -> permerror
    twice = 'd IN TXT "v=spf1 redirect=r.t redirect=r.t"\nr IN TXT "v=spf1 +all"\n'
    assert result(twice) == "permerror"


def test_spf7_unknown_modifier_ignored_and_default_neutral() -> None:
    assert result('d IN TXT "v=spf1 moo=cow ip4:10.0.0.1"\n') == "neutral"


def test_spf7_ptr_errors_skip_names_and_ptr_failure_is_no_match() -> None:
    """§5.5: a DNS error on the PTR lookup fails to match; on an A lookup skips that name."""
    text = ('d IN TXT "v=spf1 ptr ~all"\n'
            "1.2.0.192.in-addr.arpa. IN PTR bad.d.t.\n1.2.0.192.in-addr.arpa. IN PTR good.d.t.\n"
            "good.d IN A 192.0.2.1\n")
    data = zone(text)
    data.fail("bad.d.t", "SERVFAIL")
    assert spf(data).result == "pass"
    data = zone(text)
    data.fail("1.2.0.192.in-addr.arpa", "SERVFAIL")
    assert spf(data).result == "softfail"


# --- SPF-9: exp= --------------------------------------------------------------------------


EXP_BASE = 'd IN TXT "v=spf1 -all exp=x.t"\n'


@pytest.mark.parametrize(
    ("extra", "failure", "expected"),
    [
        ('x IN TXT "%{i} is not allowed by %{d}"\n', None, "192.0.2.1 is not allowed by d.t"),
        ("", None, "DEFAULT"),  # no record
        ('x IN TXT "one"\nx IN TXT "two"\n', None, "DEFAULT"),  # several records
        ('x IN TXT "bad %{x} macro"\n', None, "DEFAULT"),  # syntax error in the text
        ('x IN TXT "fine"\n', "SERVFAIL", "DEFAULT"),  # DNS error
        ('x IN TXT "caf\\195\\169"\n', None, "DEFAULT"),  # non-ASCII text
    ],
)
def test_spf9_exp_failure_modes_still_fail(extra: str, failure: str | None, expected: str) -> None:
    data = zone(EXP_BASE + extra)
    if failure:
        data.fail("x.t", failure)
    outcome = spf(data)
    assert (outcome.result, outcome.explanation) == ("fail", expected)


def test_spf9_exp_fetched_only_on_fail() -> None:
    data = zone('d IN TXT "v=spf1 ?all exp=x.t"\nx IN TXT "why"\n')
    resolver = Resolver(ZoneTransport(data))
    outcome = spf(data, resolver=resolver)
    assert outcome.result == "neutral" and outcome.explanation is None
    assert ("x.t", "TXT") not in {(q.qname, q.qtype) for q in resolver.trace}


# --- trace and JSON --------------------------------------------------------------------------


def test_trace_and_json_shape() -> None:
    outcome = spf(zone(
        'd IN TXT "v=spf1 a:h.t include:i.t -all"\nh IN A 10.0.0.1\ni IN TXT "v=spf1 ?all"\n'
    ))
    body = json.loads(json.dumps(outcome.to_json()))
    assert {"result", "sender", "ip", "trace"} <= set(body)
    assert (body["result"], body["sender"], body["ip"], body["dns_terms"]) == (
        "fail", "u@d.t", "192.0.2.1", 2
    )
    terms = [(e["depth"], e["term"], e["result"]) for e in body["trace"]]
    assert (0, "a:h.t", "no match") in terms and (1, "?all", "match -> neutral") in terms
    a_entry = next(e for e in body["trace"] if e["term"] == "a:h.t")
    assert a_entry["lookups"] == ["A h.t -> 10.0.0.1"] and a_entry["dns_terms"] == 1


# --- hostile input -----------------------------------------------------------------------------


def test_hostile_records_end_in_errors_not_exceptions() -> None:
    long_record = " ".join(f"ip4:10.{i // 256}.{i % 256}.1" for i in range(700))
    cases = {
        'd IN TXT "v=spf1 include:d.t"\n': "permerror",  # self include
        # truncated, no match
        'd IN TXT "v=spf1 a:%{l}%{l}%{l}%{l}%{l}%{l}.%{s}%{s}%{s}.t -all"\n': "fail",
        'd IN TXT "v=spf1 ip4:10.0.0.1/99"\n': "permerror",
        'd IN TXT "v=spf1 a:\\195\\169.t"\n': "permerror",
        'd IN TXT "v=spf1 a:x.t/"\n': "permerror",
    }
    for text, expected in cases.items():
        assert result(text, sender=("x" * 60) + "@d.t") == expected, text
    # A 10,000-character record over many strings of one TXT RR.
    pieces = [long_record[i : i + 250] for i in range(0, len(long_record), 250)]
    chunks = ["v=spf1 ", *pieces, " -all"]
    big = "d IN TXT " + " ".join(f'"{c}"' for c in chunks) + "\n"
    assert len(long_record) > 10000
    assert result(big) == "fail" and result(big, "10.2.187.1") == "pass"


def _strings(record: str) -> str:
    """``record`` as TXT character-strings under 255 bytes each (120 characters of at most
    2 bytes here), which RFC 7208 §3.3 joins back together."""
    return " ".join(f'"{record[i : i + 120]}"' for i in range(0, len(record), 120))


RECORD_TERMS = st.sampled_from([
    "a", "mx", "ptr", "-all", "~all", "?all", "+all", "include:i.t", "include:d.t",
    "exists:%{i}.e.t",
    "a:h.t/24", "mx:m.t//64", "redirect=r.t", "exp=x.t", "ip4:192.0.2.0/25", "ip6:2001:db8::/33",
    "%{", "a:%{p}.t", "moo=%{d}", "ip4:300.1.1.1", "a:\u00e9.t", "exists:%{l}%{l}%{l}%{l}.%{o}",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD_TERMS, max_size=12), st.lists(RECORD_TERMS, max_size=6),
       st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.77", "10.0.0.1"]))
def test_hostile_random_records_always_give_a_result(
    outer: list[str], inner: list[str], ip: str
) -> None:
    text = (f'd IN TXT {_strings("v=spf1 " + " ".join(outer))}\n'
            f'i IN TXT {_strings("v=spf1 " + " ".join(inner))}\n'
            'r IN TXT "v=spf1 include:i.t"\nh IN A 192.0.2.9\nm IN MX 1 h.t.\n'
            'x IN TXT "%{c} %{r}"\n'
            "1.2.0.192.in-addr.arpa. IN PTR h.t.\n")
    assert spf(zone(text), ip).result in RESULTS
