"""The routing plan as a pure function (RFC 5321 §5.1, RFC 7505): MX-2..16, SEC-11."""

from __future__ import annotations

import collections
import ipaddress
import random

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mxroute.dns.answer import Answer, Outcome
from mxroute.routing.plan import DomainFacts, HostFacts, RoutingPolicy, Verdict, blocked, build_plan


def rr(rdtype: str, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)


def mx(*records: str, outcome: Outcome = Outcome.RECORDS) -> Answer:
    return Answer("d.test", "MX", outcome, tuple(rr("MX", r) for r in records), 300)


def host(
    name: str,
    v4: list[str] | None = None,
    v6: list[str] | None = None,
    *,
    fail: Outcome | None = None,
) -> HostFacts:
    def answer(qtype: str, addrs: list[str] | None) -> Answer:
        if fail is not None:
            return Answer(name, qtype, fail)
        if not addrs:
            return Answer(name, qtype, Outcome.NODATA)
        return Answer(name, qtype, Outcome.RECORDS, tuple(rr(qtype, a) for a in addrs), 300)

    return HostFacts(name, a=answer("A", v4), aaaa=answer("AAAA", v6))


def facts(answer: Answer, *hosts: HostFacts) -> DomainFacts:
    return DomainFacts("d.test", mx=answer, hosts={h.name: h for h in hosts})


OPEN = RoutingPolicy(allow_private=True)


def addresses(plan) -> list[str]:
    return [t.address for t in plan.targets]


def test_mx2_sorted_by_preference_lowest_first() -> None:
    f = facts(
        mx("20 b.test.", "10 a.test.", "30 c.test."),
        host("a.test", ["127.0.0.1"]),
        host("b.test", ["127.0.0.2"]),
        host("c.test", ["127.0.0.3"]),
    )
    plan = build_plan(f, OPEN, random.Random(0))
    assert [t.exchange for t in plan.targets] == ["a.test", "b.test", "c.test"]
    assert plan.verdict is Verdict.DELIVERABLE and plan.dsn_status == "2.0.0"


def test_mx3_equal_preferences_uniformly_shuffled() -> None:
    """Chi-square over 3,000 real-random plans: the first choice is uniform (p > 0.001)."""
    f = facts(
        mx("10 a.test.", "10 b.test.", "10 c.test."),
        *(
            host(n, [ip])
            for n, ip in [("a.test", "127.0.0.1"), ("b.test", "127.0.0.2"), ("c.test", "127.0.0.3")]
        ),
    )
    rng = random.Random()
    firsts = collections.Counter(build_plan(f, OPEN, rng).targets[0].exchange for _ in range(3000))
    expected = 1000
    chi2 = sum((firsts[n] - expected) ** 2 / expected for n in ("a.test", "b.test", "c.test"))
    assert chi2 < 13.8, firsts  # chi-square critical value, 2 degrees of freedom, p = 0.001


def test_mx3_seeded_order_is_reproducible() -> None:
    f = facts(
        mx("10 a.test.", "10 b.test.", "10 c.test.", "10 e.test."),
        *(
            host(n, [f"127.0.0.{i}"])
            for i, n in enumerate(["a.test", "b.test", "c.test", "e.test"], 1)
        ),
    )
    first = [addresses(build_plan(f, OPEN, random.Random(seed))) for seed in range(5)]
    again = [addresses(build_plan(f, OPEN, random.Random(seed))) for seed in range(5)]
    assert first == again
    assert len({tuple(a) for a in first}) > 1  # the seed matters


def test_mx5_nxdomain_is_permanent_512() -> None:
    plan = build_plan(facts(mx(outcome=Outcome.NXDOMAIN)), OPEN, random.Random(0))
    assert plan.verdict is Verdict.PERMANENT and plan.dsn_status == "5.1.2"


@pytest.mark.parametrize("outcome", [Outcome.SERVFAIL, Outcome.TIMEOUT, Outcome.CNAME_LOOP])
def test_mx6_dns_trouble_is_temporary_never_implicit(outcome: Outcome) -> None:
    plan = build_plan(
        facts(mx(outcome=outcome), host("d.test", ["127.0.0.1"])), OPEN, random.Random(0)
    )
    assert plan.verdict is Verdict.TEMPORARY and plan.dsn_status == "4.4.3"
    assert not plan.implicit_mx and not plan.targets


def test_mx7_nodata_gives_implicit_mx() -> None:
    plan = build_plan(
        facts(mx(outcome=Outcome.NODATA), host("d.test", ["127.0.0.3"])), OPEN, random.Random(0)
    )
    assert plan.implicit_mx and addresses(plan) == ["127.0.0.3"]
    assert plan.targets[0].preference == 0


def test_mx8_existing_mx_never_uses_the_domains_own_address() -> None:
    f = facts(mx("10 noaddr.test."), host("noaddr.test"), host("d.test", ["127.0.0.1"]))
    plan = build_plan(f, OPEN, random.Random(0))
    assert plan.verdict is Verdict.PERMANENT and plan.dsn_status == "5.4.4"
    assert "127.0.0.1" not in addresses(plan)


def test_mx9_one_temporary_failure_makes_the_whole_temporary() -> None:
    f = facts(
        mx("10 a.test.", "20 b.test."),
        host("a.test", fail=Outcome.SERVFAIL),
        host("b.test", fail=Outcome.NXDOMAIN),
    )
    plan = build_plan(f, OPEN, random.Random(0))
    assert plan.verdict is Verdict.TEMPORARY and plan.dsn_status == "4.4.3"
    f = facts(
        mx("10 a.test.", "20 b.test."),
        host("a.test", fail=Outcome.NXDOMAIN),
        host("b.test", fail=Outcome.NXDOMAIN),
    )
    assert build_plan(f, OPEN, random.Random(0)).dsn_status == "5.4.4"


def test_mx10_null_mx_is_permanent_5110() -> None:
    plan = build_plan(facts(mx("0 ."), host("d.test", ["127.0.0.1"])), OPEN, random.Random(0))
    assert plan.null_mx and plan.verdict is Verdict.PERMANENT and plan.dsn_status == "5.1.10"
    assert not plan.targets


def test_mx10_null_mx_beside_others_is_ignored() -> None:
    plan = build_plan(
        facts(mx("0 .", "10 a.test."), host("a.test", ["127.0.0.1"])), OPEN, random.Random(0)
    )
    assert addresses(plan) == ["127.0.0.1"] and not plan.null_mx
    assert [p.reason for p in plan.pruned] == ["null-mx-mixed"]


def test_mx11_self_at_best_preference_loops_back() -> None:
    policy = RoutingPolicy(allow_private=True, self_addresses=frozenset({"127.0.0.1"}))
    f = facts(
        mx("10 self.test.", "20 other.test."),
        host("self.test", ["127.0.0.1"]),
        host("other.test", ["127.0.0.2"]),
    )
    plan = build_plan(f, policy, random.Random(0))
    assert plan.verdict is Verdict.PERMANENT and plan.dsn_status == "5.4.6"
    assert "loops back to myself" in plan.reason


def test_mx11_self_at_worse_preference_keeps_the_better() -> None:
    policy = RoutingPolicy(allow_private=True, self_names=frozenset({"self.test"}))
    f = facts(
        mx("10 other.test.", "20 self.test.", "30 third.test."),
        host("other.test", ["127.0.0.2"]),
        host("self.test", ["127.0.0.1"]),
        host("third.test", ["127.0.0.3"]),
    )
    plan = build_plan(f, policy, random.Random(0))
    assert addresses(plan) == ["127.0.0.2"]
    assert {p.exchange for p in plan.pruned if p.reason == "self"} == {"self.test", "third.test"}


def test_mx12_numeric_exchange_is_never_dialled() -> None:
    plan = build_plan(facts(mx("10 127.0.0.2.")), OPEN, random.Random(0))
    assert not plan.targets and plan.pruned[0].reason == "numeric-mx-target"


def test_mx13_address_literal_needs_no_dns() -> None:
    plan = build_plan(
        DomainFacts("[127.0.0.4]", literal=ipaddress.ip_address("127.0.0.4")),
        OPEN,
        random.Random(0),
    )
    assert addresses(plan) == ["127.0.0.4"]
    closed = build_plan(
        DomainFacts("[127.0.0.4]", literal=ipaddress.ip_address("127.0.0.4")),
        RoutingPolicy(),
        random.Random(0),
    )
    assert closed.verdict is Verdict.PERMANENT and closed.pruned[0].reason == "blocked-address"


def test_mx14_ipv4_only_makes_a_v6_only_host_unusable() -> None:
    policy = RoutingPolicy(allow_private=True, family="ipv4-only")
    f = DomainFacts(
        "d.test",
        mx=mx("10 v6.test."),
        hosts={"v6.test": HostFacts("v6.test", a=Answer("v6.test", "A", Outcome.NODATA))},
    )
    plan = build_plan(f, policy, random.Random(0))
    assert plan.verdict is Verdict.PERMANENT and plan.pruned[0].reason == "no-address"


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("ipv6-first", ["::1", "127.0.0.3"]),
        ("ipv4-first", ["127.0.0.3", "::1"]),
        ("ipv6-only", ["::1"]),
    ],
)
def test_mx15_family_order(family: str, expected: list[str]) -> None:
    policy = RoutingPolicy(allow_private=True, family=family)  # type: ignore[arg-type]
    plan = build_plan(
        facts(mx("10 h.test."), host("h.test", ["127.0.0.3"], ["::1"])), policy, random.Random(0)
    )
    assert addresses(plan) == expected


def test_mx15_every_address_of_a_host_before_the_next_preference() -> None:
    f = facts(
        mx("10 a.test.", "20 b.test."),
        host("a.test", ["127.0.0.1", "127.0.0.2"]),
        host("b.test", ["127.0.0.3"]),
    )
    assert addresses(
        build_plan(f, RoutingPolicy(allow_private=True, family="ipv4-only"), random.Random(0))
    ) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_mx16_address_cap_is_shared_between_families() -> None:
    hosts = [host(f"h{i}.test", [f"127.0.1.{i}"], [f"fd00::{i}"]) for i in range(1, 11)]
    f = facts(mx(*(f"{i} h{i}.test." for i in range(1, 11))), *hosts)
    plan = build_plan(f, RoutingPolicy(allow_private=True, address_limit=5), random.Random(0))
    assert len(plan.targets) == 5
    families = collections.Counter(t.family for t in plan.targets)
    assert families[4] >= 2 and families[6] >= 2
    assert sum(p.reason == "over-limit" for p in plan.pruned) == 15


def test_mx16_a_lone_v4_address_survives_many_v6() -> None:
    f = facts(
        mx("10 a.test.", "20 b.test."),
        host("a.test", None, [f"fd00::{i}" for i in range(1, 9)]),
        host("b.test", ["127.0.0.9"]),
    )
    plan = build_plan(f, RoutingPolicy(allow_private=True, address_limit=5), random.Random(0))
    assert "127.0.0.9" in addresses(plan) and len(plan.targets) == 5


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.1.1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "100.64.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "64:ff9b::a01:101",
    ],
)
def test_sec11_blocked_destinations(address: str) -> None:
    assert blocked(ipaddress.ip_address(address))
    plan = build_plan(
        facts(
            mx("10 h.test."),
            host(
                "h.test",
                [address] if ":" not in address else None,
                [address] if ":" in address else None,
            ),
        ),
        RoutingPolicy(),
        random.Random(0),
    )
    assert not plan.targets and plan.dsn_status == "5.4.4"
    assert plan.pruned[0].reason == "blocked-address"


@pytest.mark.parametrize("address", ["192.0.2.1", "8.8.8.8", "2001:db8::1", "2a00:1450::1"])
def test_sec11_public_destinations_pass(address: str) -> None:
    assert blocked(ipaddress.ip_address(address)) is None


def test_duplicate_addresses_are_tried_once() -> None:
    f = facts(
        mx("10 a.test.", "20 b.test."), host("a.test", ["127.0.0.1"]), host("b.test", ["127.0.0.1"])
    )
    plan = build_plan(f, OPEN, random.Random(0))
    assert addresses(plan) == ["127.0.0.1"] and plan.pruned[0].reason == "duplicate-address"


def test_every_decision_names_its_rule_and_rfc() -> None:
    f = facts(
        mx("10 a.test.", "10 b.test."), host("a.test", ["127.0.0.1"]), host("b.test", ["127.0.0.2"])
    )
    plan = build_plan(f, OPEN, random.Random(0))
    rules = {d.rule for d in plan.decisions}
    assert {"MX-2", "MX-3"} <= rules
    assert all(d.ref.startswith("RFC ") for d in plan.decisions)
