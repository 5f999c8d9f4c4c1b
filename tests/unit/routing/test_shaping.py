"""Traffic shaping (issue 18 §1): sites, the ``shaping`` setting's syntax and which rule wins.

Pure: ``mxroute.settingsrules.ShapingRule`` and ``mxroute.routing.shaping``; the limits holding on
the wire are tested through ``serve`` in tests/e2e/test_shaping.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mxroute.address import parse_next_hop
from mxroute.routing.plan import MxRecord, Plan, Verdict
from mxroute.routing.rules import Chosen
from mxroute.routing.shaping import SHIPPED, Shaper, site_names, site_of
from mxroute.settings import Settings
from mxroute.settingsrules import RouteRule, ShapingRule


def plan(domain: str, *mx: str, implicit: bool = False) -> Plan:
    records = tuple(MxRecord(10, name, 300) for name in mx)
    return Plan(domain, Verdict.DELIVERABLE, "", "", mx=records, implicit_mx=implicit)


def rules(*items: dict[str, object]) -> list[ShapingRule]:
    return Settings(shaping=list(items)).shaping  # type: ignore[arg-type]


def test_site_is_the_sorted_set_of_mx_names() -> None:
    """Issue 18 §1: two domains on one MX set are one site, whatever the order or case."""
    a = plan("a.test", "MX2.Host.test.", "mx1.host.test", "mx2.host.test")
    b = plan("b.test", "mx1.host.test", "mx2.host.test")
    assert site_names(a) == ("mx1.host.test", "mx2.host.test")
    assert site_of(a) == site_of(b) == "mx1.host.test,mx2.host.test"
    assert site_of(plan("c.test", implicit=True)) == "c.test"


def test_a_next_hop_is_its_own_site() -> None:
    """Issue 18 §1: a ``routes`` next hop is a site of its own."""
    rule = RouteRule(match="*", next_hop=parse_next_hop("[relay.test]:587"))
    routed = Plan("a.test", Verdict.DELIVERABLE, "", "", route=Chosen(1, rule),
                  mx=(MxRecord(10, "mx.relay.test", 60),))
    assert site_of(routed) == "[relay.test]:587"
    assert site_names(routed) == ()


@pytest.mark.parametrize("match", ["example.com", "domain:", "mx:", "mx:.x.test", "domain:*.x"])
def test_bad_matches_are_refused_clearly(match: str) -> None:
    """Issue 18 §1: a bad ``match`` is a clear configuration error naming the three forms."""
    with pytest.raises(ValidationError, match="domain:NAME, mx:GLOB"):
        rules({"match": match})


def test_numbers_are_checked() -> None:
    with pytest.raises(ValidationError):
        rules({"match": "*", "connection_limit": 0})
    with pytest.raises(ValidationError):
        rules({"match": "*", "message_rate": -1})


def test_default_rule_is_destination_concurrency_per_site() -> None:
    """Issue 18 §1: the default rule keeps today's behaviour: destination_concurrency, no rates."""
    shape = Shaper([], 7).shape(plan("a.test", "mx.host.test"))
    assert (shape.source, shape.key, shape.site) == ("default", "mx.host.test", "mx.host.test")
    assert shape.limits.connection_limit == 7
    assert shape.limits.message_rate is None and shape.limits.max_messages_per_connection is None


def test_mx_rule_shares_one_key_across_sites() -> None:
    """Issue 18 §1: ``mx:GLOB`` covers every destination whose MX names all match: one key."""
    shaper = Shaper(rules({"match": "mx:*.mail.test", "connection_limit": 2}), 20)
    one = shaper.shape(plan("a.test", "mx1.mail.test"))
    two = shaper.shape(plan("b.test", "mx2.mail.test", "mx3.mail.test"))
    assert one.key == two.key == "mx:*.mail.test" and one.site != two.site
    assert one.limits.connection_limit == 2 and one.number == 1
    mixed = shaper.shape(plan("c.test", "mx1.mail.test", "mx.other.test"))
    assert mixed.source == "default"


def test_first_rule_wins_and_domain_rule_is_per_domain() -> None:
    shaper = Shaper(rules({"match": "domain:A.test", "message_rate": 2},
                          {"match": "mx:*.mail.test", "connection_limit": 3},
                          {"match": "*", "connection_limit": 5}), 20)
    a = shaper.shape(plan("a.test", "mx.mail.test"))
    assert (a.key, a.number, a.limits.message_rate, a.limits.connection_limit) == (
        "domain:a.test", 1, 2.0, 20)
    assert shaper.shape(plan("b.test", "mx.mail.test")).number == 2
    star = shaper.shape(plan("c.test", "mx.other.test"))
    assert (star.number, star.key, star.limits.connection_limit) == (3, "mx.other.test", 5)


def test_shipped_rollups_and_override() -> None:
    """Issue 18 §1: shipped provider rollups share one limit over their globs; an operator's
    ``mx:`` rule matching first overrides them."""
    shaper = Shaper([], 20)
    gmail = shaper.shape(plan("gmail.test", "gmail-smtp-in.l.google.com",
                              "alt1.gmail-smtp-in.l.google.com"))
    other = shaper.shape(plan("x.test", "aspmx.googlemail.com"))
    assert gmail.source == "shipped" and gmail.key == other.key == "provider:google"
    assert {p.name for p in SHIPPED} == {"google", "outlook", "yahoo", "icloud"}
    mine = Shaper(rules({"match": "mx:*.google.com", "connection_limit": 1}), 20)
    assert mine.shape(plan("g.test", "gmail-smtp-in.l.google.com")).source == "shaping"


def test_describe_and_json() -> None:
    shape = Shaper(rules({"match": "mx:*.mail.test", "connection_limit": 2,
                          "message_rate": 0.5}), 20).shape(plan("a.test", "mx.mail.test"))
    assert shape.describe() == ("site mx.mail.test: shaping rule 1 (mx:*.mail.test), counted as "
                                "mx:*.mail.test: connection_limit 2, message_rate 0.5")
    data = shape.to_json()
    assert data["site"] == "mx.mail.test" and data["limits"]["connection_limit"] == 2
    # counted under the site itself (the default rule): the site is named once
    own = Shaper(rules(), 20).shape(plan("b.test", "mx.other.test"))
    assert own.describe() == "site mx.other.test: default rule (*): connection_limit 20"
    assert shape.message_burst == 1
