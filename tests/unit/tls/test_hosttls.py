"""One MX host's TLS policy when DANE (TLS-7) and MTA-STS (TLS-6) could both apply: RFC 8461 §2."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mxroute.dns.answer import Answer, Outcome
from mxroute.routing.plan import Target
from mxroute.tls import dane
from mxroute.tls import host as hosttls
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.mtasts.policy import Cached, parse_policy
from mxroute.tls.policy import TlsPolicy

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx2.dest.test\nmax_age: 86400\n"


def _answer(qname: str, qtype: str, outcome: Outcome = Outcome.RECORDS, *rrs: object) -> Answer:
    return Answer(qname, qtype, outcome, tuple(rrs), 300, secure=True)


def _posture(tlsa_outcome: Outcome, *records: str) -> dane.DanePosture:
    """mx1.dest.test with secure MX and addresses and the given TLSA answer; mx2 not in it
    (as may)."""
    a = _answer("mx1.dest.test", "A", Outcome.RECORDS, dns.rdata.from_text(1, 1, "192.0.2.1"))
    rrs = (dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, r) for r in records)
    tlsa = _answer("_25._tcp.mx1.dest.test", "TLSA", tlsa_outcome, *rrs)
    return dane.posture("dest.test", _answer("dest.test", "MX"), {"mx1.dest.test": [a, None]},
                        {"mx1.dest.test": tlsa})


def _target(n: int) -> Target:
    return Target(f"mx{n}.dest.test", 10 * n, f"192.0.2.{n}", 4, 25)


def _host(n: int) -> tuple[str, str]:
    """MX host n of dest.test as ``for_host`` takes it: its name and the target's text."""
    return f"mx{n}.dest.test", str(_target(n))


STS = mtasts.Lookup("dest.test", "found", "id1", Cached("id1", parse_policy(ENFORCE), 1000.0),
                    "fetched", 1000.0)


def test_tls7_over_tls6_a_dane_host_is_used_although_the_mta_sts_policy_does_not_list_it() -> None:
    posture = _posture(Outcome.RECORDS, "3 1 1 " + "ab" * 32)
    policy, refusal, rule = hosttls.for_host(TlsPolicy(), posture, STS, *_host(1))
    assert (refusal, rule, policy.level) == (None, "TLS-7", "dane") and policy.tlsa


def test_tls6_applies_to_the_hosts_dane_does_not_govern() -> None:
    posture = _posture(Outcome.RECORDS, "3 1 1 " + "ab" * 32)
    policy, refusal, rule = hosttls.for_host(TlsPolicy(), posture, STS, *_host(2))
    # listed: verify, as enforce demands
    assert (refusal, rule, policy.level) == (None, "TLS-6", "verify")
    _, refusal, rule = hosttls.for_host(TlsPolicy(), posture, STS, *_host(3))
    assert rule == "TLS-6" and refusal is not None and refusal.startswith("451 4.7.5 MTA-STS")


def test_tls7_failed_tlsa_lookup_defers_the_host_whatever_mta_sts_says() -> None:
    posture = _posture(Outcome.SERVFAIL)
    _, refusal, rule = hosttls.for_host(TlsPolicy(), posture, None, *_host(1))
    assert rule == "TLS-7" and refusal is not None and "TLSA lookup" in refusal


def test_no_dane_no_mta_sts_is_the_domain_policy() -> None:
    encrypt = TlsPolicy("encrypt")
    assert hosttls.for_host(encrypt, None, None, *_host(1)) == (encrypt, None, "TLS-6")


def test_exp3_explain_mta_sts_rows_say_when_dane_decides_a_host() -> None:
    from mxroute.address import parse_address
    from mxroute.cli.explain import Report
    from mxroute.routing.plan import Plan, Verdict

    posture = _posture(Outcome.RECORDS, "3 1 1 " + "ab" * 32)
    plan = Plan("dest.test", Verdict.DELIVERABLE, "2 address(es) to try", "2.0.0",
                targets=(_target(1), _target(2)), dane=posture)
    report = Report(parse_address("u@dest.test"), plan, [], tls=TlsPolicy(), mta_sts=STS)
    rows = {row["exchange"]: row for row in report.to_json()["mta_sts"]["hosts"]}
    assert rows["mx1.dest.test"]["eligible"] is True and rows["mx1.dest.test"]["tls"] == "dane"
    assert "DANE decides" in rows["mx1.dest.test"]["reason"]
    assert rows["mx2.dest.test"]["eligible"] is True and rows["mx2.dest.test"]["tls"] == "verify"
