"""TLS-5/TLS-6: the pure parts of MTA-STS (mxroute/tls/mtasts/policy.py), RFC 8461.

The `_mta-sts` TXT record (§3.1), the policy file (§3.2), MX pattern matching (§4.1),
the cache decision (§5.1) and which hosts a policy lets delivery use (§5).
"""

from __future__ import annotations

import pytest

from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.mtasts.policy import (
    Cached,
    PolicyError,
    StsPolicy,
    decide,
    mx_matches,
    parse_policy,
    parse_txt,
)

POLICY = ("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.backup.example.com\r\n"
          "max_age: 86400\r\n")


# --- §3.1 the TXT record ------------------------------------------------------------------------

@pytest.mark.parametrize(("records", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=STSv1 ; id=abc ; ext_1=x"], "abc"),  # whitespace around ";", an extension field
    (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),  # records not starting with v=STSv1 are discarded
    (["v=STSv1; id=abc", "v=STSv1; id=def"], None),  # two records: no policy
    ([], None),
    (["v=STSv1"], None),  # no id
    (["v=STSv1; id="], None),
    (["v=STSv1; id=abc-def"], None),  # id is 1*32(ALPHA / DIGIT)
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv1; id=" + "a" * 32], "a" * 32),
    (["v=STSv10; id=abc"], None),  # not v=STSv1
    (["id=abc; v=STSv1"], None),  # v= must come first
    (["v=STSv1; id=abc; id=def"], "abc"),  # a repeated field: the first one counts
    (["v=STSv1; id=abc; bad field"], None),  # not key=value
])
def test_tls5_txt_record_exactly_one_valid_record(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


# --- §3.2 the policy file -----------------------------------------------------------------------

def test_tls5_policy_parsed_crlf() -> None:
    policy = parse_policy(POLICY)
    assert policy == StsPolicy("enforce", ("mx1.example.com", "*.backup.example.com"), 86400)


def test_tls5_policy_lf_unknown_keys_and_case() -> None:
    text = "version: STSv1\nmode: testing\nmx: MX1.Example.COM.\nmax_age:604800\nfoo: bar\n"
    assert parse_policy(text) == StsPolicy("testing", ("mx1.example.com",), 604800)


def test_tls5_policy_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n") == StsPolicy("none", (), 0)


def test_tls5_policy_first_of_a_repeated_field_counts() -> None:
    text = "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 10\nmax_age: 20\n"
    assert parse_policy(text) == StsPolicy("testing", ("a.example",), 10)


@pytest.mark.parametrize("text", [
    "",
    "mode: enforce\nmx: a.example\nmax_age: 10\n",  # no version
    "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 10\n",
    "version: STSv1\nmx: a.example\nmax_age: 10\n",  # no mode
    "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 10\n",
    "version: STSv1\nmode: enforce\nmax_age: 10\n",  # enforce without mx
    "version: STSv1\nmode: testing\nmax_age: 10\n",
    "version: STSv1\nmode: enforce\nmx: a.example\n",  # no max_age
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",  # over a year
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",  # 1*10 DIGIT
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: ten\n",
    # a wildcard only as the leftmost label
    "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 10\n",
    "version: STSv1\nmode: enforce\nmx: a*.example\nmax_age: 10\n",
    "version: STSv1\nmode: enforce\nmx: bad_name!\nmax_age: 10\n",
    "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 10\n",  # not key: value
    "<html>not a policy</html>",
])
def test_tls5_invalid_policy_is_no_policy(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_tls5_max_age_upper_bound_is_accepted() -> None:
    policy = parse_policy("version: STSv1\nmode: none\nmax_age: 31557600\n")
    assert policy.max_age == mtasts.MAX_AGE_LIMIT


# --- §4.1 MX matching ---------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("mx1.example.com", "mx1.example.com", True),
    ("mx1.example.com", "MX1.Example.com.", True),
    ("mx1.example.com", "mx2.example.com", False),
    ("*.example.com", "mx.example.com", True),
    ("*.example.com", "a.b.example.com", False),  # the wildcard covers one label only
    ("*.example.com", "example.com", False),
    ("*.example.com", "mxexample.com", False),
    ("*.example.com", ".example.com", False),
])
def test_tls6_mx_pattern_matching(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_tls6_policy_names_the_pattern_a_host_matched() -> None:
    policy = parse_policy(POLICY)
    assert policy.match("mx1.example.com") == "mx1.example.com"
    assert policy.match("b.backup.example.com") == "*.backup.example.com"
    assert policy.match("mx2.example.com") is None


# --- §5.1 the cache decision --------------------------------------------------------------------

def cached(txt_id: str = "id1", fetched: float = 1000.0, max_age: int = 100) -> Cached:
    return Cached(txt_id, StsPolicy("enforce", ("mx1.test",), max_age), fetched)


@pytest.mark.parametrize(("txt_id", "entry", "now", "expected"), [
    ("id1", None, 1000.0, "fetch"),  # nothing cached
    ("id1", cached(), 1050.0, "cache"),  # fresh, same id
    ("id2", cached(), 1050.0, "fetch"),  # the id changed
    ("id1", cached(), 1100.0, "fetch"),  # expired (fetched + max_age)
    # no TXT record (or a DNS failure): an unexpired policy applies
    (None, cached(), 1050.0, "cache"),
    (None, cached(), 1100.0, "none"),  # ... an expired one does not
    (None, None, 1000.0, "none"),
])
def test_tls5_cache_decision(
    txt_id: str | None, entry: Cached | None, now: float, expected: str,
) -> None:
    assert decide(txt_id, entry, now) == expected


def test_tls5_fetch_failure_falls_back_to_an_unexpired_cached_policy() -> None:
    assert mtasts.after_failed_fetch(cached(), 1050.0) == "cache"
    assert mtasts.after_failed_fetch(cached(), 1100.0) == "none"
    assert mtasts.after_failed_fetch(None, 1050.0) == "none"


def test_tls5_cached_entry_round_trips_through_json() -> None:
    entry = cached()
    assert Cached.from_json(entry.to_json()) == entry
    with pytest.raises(PolicyError):
        Cached.from_json({"id": "x", "policy": "version: STSv2", "fetched": 1})


# --- §5 what a policy lets delivery do ----------------------------------------------------------

def test_tls6_enforce_only_matching_hosts_are_eligible() -> None:
    policy = parse_policy(POLICY)
    assert policy.verdict("mx1.example.com") == (True, "matches mx1.example.com")
    ok, why = policy.verdict("mx2.example.com")
    assert not ok and why == "mx2.example.com matches no mx pattern of the MTA-STS policy"


def test_tls6_testing_and_none_refuse_nothing() -> None:
    assert StsPolicy("testing", ("mx1.test",), 10).verdict("mx2.test")[0] is True
    assert StsPolicy("none", (), 10).verdict("mx2.test")[0] is True


def lookup_of(text: str | None, domain: str = "example.com") -> mtasts.Lookup:
    entry = Cached("id1", parse_policy(text), 1000.0) if text else None
    return mtasts.Lookup(domain, "found", "id1", entry, "fetched" if entry else "none", 1000.0)


def test_tls6_host_policy_enforce_verify_for_matching_hosts_refusal_for_others() -> None:
    from mxroute.tls.policy import TlsPolicy

    sts = lookup_of(POLICY)
    assert mtasts.host_policy(sts, "mx1.example.com", TlsPolicy()) == (
        TlsPolicy("verify", "mta-sts", "mx1.example.com"), None)
    policy, refusal = mtasts.host_policy(sts, "mx9.example.com", TlsPolicy("encrypt"))
    assert policy == TlsPolicy("encrypt") and refusal == (
        "451 4.7.5 MTA-STS policy of example.com (enforce): mx9.example.com matches no mx pattern "
        "of the MTA-STS policy")
    for other in (lookup_of(POLICY.replace("enforce", "testing")), lookup_of(None), None):
        may = TlsPolicy("may")
        assert mtasts.host_policy(other, "mx9.example.com", may) == (may, None)


def test_tls6_testing_audits_matching_hosts_and_notes_the_others() -> None:
    sts = lookup_of(POLICY.replace("enforce", "testing"))
    assert mtasts.audited(sts, "mx1.example.com") is sts
    assert mtasts.testing_note(sts, "mx1.example.com") is None
    assert mtasts.audited(sts, "mx9.example.com") is None
    assert "enforce would skip it" in (mtasts.testing_note(sts, "mx9.example.com") or "")
    enforce = lookup_of(POLICY)
    assert mtasts.audited(enforce, "mx1.example.com") is None
    assert mtasts.testing_note(enforce, "mx9.example.com") is None


def test_tls6_skip_reason_admin_table_literal_undeliverable_and_switch() -> None:
    from mxroute.tls.policy import TlsPolicy

    def skip(enabled: bool, domain: str, tls: TlsPolicy, deliverable: bool = True) -> str | None:
        return mtasts.skip_reason(enabled, domain, tls, deliverable=deliverable)

    assert skip(True, "example.com", TlsPolicy()) is None
    assert skip(False, "example.com", TlsPolicy()) == "mta_sts = false"
    table = TlsPolicy("may", "tls_policy_domains", ".example.com")
    assert skip(True, "example.com", table) == (
        "tls_policy_domains entry .example.com takes precedence")
    assert skip(True, "[192.0.2.1]", TlsPolicy()) == "an address literal has no MTA-STS policy"
    assert skip(True, "example.com", TlsPolicy(), False) == "the route is not deliverable"


def test_exp3_lookup_json_shape() -> None:
    from mxroute.tls.policy import TlsPolicy

    exchanges = ["mx1.example.com", "mx9.example.com", "mx1.example.com"]
    body = lookup_of(POLICY).to_json(exchanges, TlsPolicy())
    assert body["policy"] == {"mode": "enforce", "mx": ["mx1.example.com", "*.backup.example.com"],
                              "max_age": 86400}
    fields = ("applied", "txt_id", "policy_id", "age", "expires_in")
    assert tuple(body[name] for name in fields) == (
        True, "id1", "id1", 0.0, 86400.0)
    assert [(h["exchange"], h["eligible"], h["tls"]) for h in body["hosts"]] == [
        ("mx1.example.com", True, "verify"), ("mx9.example.com", False, None)]
