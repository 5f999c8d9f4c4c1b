"""Issue 16 §1: the plan for a destination a ``routes`` rule sends to its next hop (PURE).

``build_plan`` on the next hop's facts: ``[host]``/smtps → the host's addresses (no MX),
``host:port`` → MX of host then addresses (MX-2/3/11/14..16 as for any MX), an IP as given;
every target at the hop's port; loopback/private allowed (the operator chose the hop, as
Postfix's relayhost), MX-11 still refuses a hop that is this relay's own listener; a hop that
cannot be used defers (never bounces).
"""

from __future__ import annotations

import random

from mxroute.dns.answer import Answer, Outcome
from mxroute.routing.plan import DomainFacts, RoutingPolicy, Verdict, build_plan, plan_to_json
from mxroute.routing.rules import Chosen
from mxroute.settingsrules import RouteRule
from tests.unit.routing.test_plan import host, mx

POLICY = RoutingPolicy(listeners=(("127.0.0.1", 2525),))  # allow_private=False: MX screened


def chosen(next_hop: str, number: int = 1, **kw: object) -> Chosen:
    return Chosen(number, RouteRule(match="*", next_hop=next_hop, **kw))  # type: ignore[arg-type]


def routed(rule: Chosen, hop: DomainFacts, policy: RoutingPolicy = POLICY):
    facts = DomainFacts("dest.test", route=rule, hop=hop)
    return build_plan(facts, policy, random.Random(1))


def test_bracketed_host_is_its_addresses_at_the_hop_port_private_allowed() -> None:
    """issue 16: [host]:port → A/AAAA of host, no MX; loopback allowed without
    allow_private_destinations; the decision names the rule; Plan.route is set."""
    rule = chosen("[hub.test]:2526", number=2)
    plan = routed(rule, DomainFacts("hub.test", hosts={"hub.test": host(
        "hub.test", ["127.0.0.5", "127.0.0.6"], ["::1"])}))
    assert plan.verdict is Verdict.DELIVERABLE
    assert plan.domain == "dest.test"
    assert [(t.exchange, t.address, t.port) for t in plan.targets] == [
        ("hub.test", "::1", 2526), ("hub.test", "127.0.0.5", 2526),
        ("hub.test", "127.0.0.6", 2526)]
    assert plan.route == rule
    assert plan.mx == ()
    assert plan.decisions[0].rule == "ROUTE" and "rule 2" in plan.decisions[0].ref
    assert plan_to_json(plan)["route"]["next_hop"] == "[hub.test]:2526"


def test_host_port_looks_up_mx_of_host_in_rfc5321_order() -> None:
    """issue 16 (MX-2): host:port → the MX of host, by preference, each exchange's addresses."""
    hop = DomainFacts("hub.test", mx=mx("20 b.hub.test.", "10 a.hub.test."), hosts={
        "a.hub.test": host("a.hub.test", ["127.0.0.7"]),
        "b.hub.test": host("b.hub.test", ["10.0.0.8"])})
    plan = routed(chosen("hub.test:587"), hop)
    assert [(t.exchange, t.address, t.port) for t in plan.targets] == [
        ("a.hub.test", "127.0.0.7", 587), ("b.hub.test", "10.0.0.8", 587)]
    assert [r.exchange for r in plan.mx] == ["a.hub.test", "b.hub.test"]


def test_address_limit_applies_to_a_next_hop() -> None:
    """issue 16 (MX-16): the same address_limit as for MX hosts."""
    many = [f"127.0.0.{n}" for n in range(10, 20)]
    plan = routed(chosen("[hub.test]"), DomainFacts("hub.test", hosts={
        "hub.test": host("hub.test", many)}), RoutingPolicy(address_limit=3))
    assert [t.address for t in plan.targets] == many[:3]
    assert all(t.port == 25 for t in plan.targets)


def test_ip_next_hop_needs_no_dns() -> None:
    """issue 16: an IP next hop is dialled as given (never MX-looked-up)."""
    plan = routed(chosen("[127.0.0.9]:2600"), DomainFacts("127.0.0.9"))
    assert [(t.exchange, t.address, t.port) for t in plan.targets] == [("", "127.0.0.9", 2600)]


def test_hop_that_is_this_relays_listener_is_a_loop_deferred() -> None:
    """issue 16 + MX-11: a next hop at this relay's own listener (address and port) is a loop;
    an operator's mistake defers mail (retried after the fix), never bounces it."""
    plan = routed(chosen("[127.0.0.1]:2525"), DomainFacts("127.0.0.1"))
    assert plan.verdict is Verdict.TEMPORARY
    assert plan.dsn_status.startswith("4.")
    assert "loops back to myself" in plan.reason and "rule 1" in plan.reason
    other_port = routed(chosen("[127.0.0.1]:2526"), DomainFacts("127.0.0.1"))
    assert other_port.deliverable


def test_wildcard_listener_makes_loopback_hop_a_loop() -> None:
    """issue 16 + MX-11: a listener on 0.0.0.0:PORT is reached by any loopback address."""
    policy = RoutingPolicy(listeners=(("0.0.0.0", 2525),))
    plan = routed(chosen("[hub.test]:2525"), DomainFacts("hub.test", hosts={
        "hub.test": host("hub.test", ["127.0.0.3"])}), policy)
    assert plan.verdict is Verdict.TEMPORARY and not plan.targets


def test_hop_without_address_defers_never_bounces() -> None:
    """issue 16: NXDOMAIN / no address for a configured next hop is a temporary failure."""
    gone = DomainFacts("hub.test", hosts={"hub.test": host("hub.test", fail=Outcome.NXDOMAIN)})
    plan = routed(chosen("[hub.test]:2526"), gone)
    assert plan.verdict is Verdict.TEMPORARY and plan.dsn_status.startswith("4.")
    assert "[hub.test]:2526" in plan.reason
    nx = DomainFacts("hub.test", mx=Answer("hub.test", "MX", Outcome.NXDOMAIN))
    plan = routed(chosen("hub.test"), nx)
    assert plan.verdict is Verdict.TEMPORARY and plan.dsn_status == "4.1.2"


def test_unrouted_plan_has_no_route() -> None:
    """issue 16: without a rule the plan is the MX plan and ``route`` is null."""
    plan = build_plan(DomainFacts("d.test", mx=mx("10 a.test."), hosts={
        "a.test": host("a.test", ["192.0.2.1"])}), POLICY, random.Random(1))
    assert plan.route is None and plan_to_json(plan)["route"] is None
    assert [t.port for t in plan.targets] == [25]
