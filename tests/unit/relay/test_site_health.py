"""Issue 18 §2: reply patterns, dead-site cohorts and per-family health, as pure logic
(mxroute.relay.courier.patterns, mxroute.relay.courier.health)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mxroute.relay.courier.health import MAX_WAIT, SiteHealth, Walk, reorder
from mxroute.relay.courier.patterns import SHIPPED, configured, match
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.settingsrules import ReplyPatternRule

SITE = "mx1.example.net,mx2.example.net"


@pytest.mark.parametrize(("reply", "name"), [
    ("421 4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail",
     "gmail-rate"),
    ("421-4.7.28 Gmail has detected that this message is likely suspicious", "gmail-rate"),
    ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", "yahoo-tss04"),
    ("421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently deferred", "yahoo-tss09"),
    ("451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited",
     "outlook-rate"),
])
def test_shipped_patterns_match_the_receivers_replies(reply: str, name: str) -> None:
    """Issue 18 §2: the shipped patterns know Gmail, Yahoo and Outlook's "too fast" replies."""
    found = match(SHIPPED, reply)
    assert found is not None and found.name == name


@pytest.mark.parametrize("reply", [
    "450 4.2.1 mailbox busy", "550 5.7.28 not a 4xx", "421 4.7.280 not the code",
    "250 2.0.0 ok 4.7.28",
])
def test_other_replies_match_no_pattern(reply: str) -> None:
    assert match(SHIPPED, reply) is None


def test_a_configured_pattern_goes_before_the_shipped_ones() -> None:
    rule = ReplyPatternRule(regex=r"^421 4\.7\.28 ", action="suspend", duration=60, name="mine")
    found = match(configured([rule]), "421 4.7.28 slow down")
    assert found is not None and (found.name, found.action, found.duration) == ("mine",
                                                                                 "suspend", 60)


@pytest.mark.parametrize("fields", [
    {"regex": "(", "action": "suspend", "duration": 5},
    {"regex": "x", "action": "throttle", "duration": 5},
    {"regex": "x", "action": "suspend", "duration": 5, "message_rate": 1},
    {"regex": "x", "action": "slow", "duration": 5},
    {"regex": "x", "action": "suspend", "duration": 0},
])
def test_a_bad_pattern_is_a_clear_error(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReplyPatternRule.model_validate(fields)


def test_a_pattern_throttles_the_site_once_and_lifts_on_time() -> None:
    """Issue 18 §2: logged once with the triggering reply, lifted automatically."""
    health = SiteHealth()
    event = health.replied(SITE, "421 4.7.28 slow down", now=100.0)
    assert event is not None and event.kind == "throttled" and "421 4.7.28 slow down" in event.text
    assert health.replied(SITE, "421 4.7.28 slow down", now=101.0) is None  # once
    first = health.turn(SITE, 101.0)
    second = health.turn(SITE, 101.0)
    assert first is not None and second is not None and second - first == pytest.approx(10.0)
    lifted = health.lift(100.0 + 3600)
    assert [e.kind for e in lifted] == ["lifted"] and health.turn(SITE, 3700.0) == 0.0
    assert health.snapshot(3700.0, 3700.0) == {}


def test_a_throttled_site_defers_what_would_wait_too_long() -> None:
    health = SiteHealth()
    health.replied(SITE, "451 4.7.650 rate limited", now=0.0)  # 0.1/s: a turn every 10 s
    waits = [health.turn(SITE, 0.0) for _ in range(int(MAX_WAIT / 10) + 3)]
    assert None in waits and all(w is None or w <= MAX_WAIT for w in waits)


def test_a_suspend_pattern_suspends_until_its_duration() -> None:
    health = SiteHealth()
    event = health.replied(SITE, "421 4.7.0 [TSS09] All messages deferred", now=0.0)
    assert event is not None and event.kind == "suspended"
    held = health.suspended(SITE, 10.0)
    assert held is not None and held.until == 3600.0
    assert health.suspended(SITE, 3600.0) is None


def _dead() -> Walk:
    walk = Walk()
    walk.no_session(4)
    walk.no_session(6)
    return walk


def test_a_dead_site_is_suspended_after_its_cohort_until_retry_min() -> None:
    """Issue 18 §2: every address failing at connect/greeting for a cohort → suspended."""
    health = SiteHealth(cohort=2, retry_min=300.0)
    assert health.walked(SITE, _dead(), 0.0) == []
    events = health.walked(SITE, _dead(), 1.0)
    assert [e.kind for e in events] == ["dead"]
    held = health.suspended(SITE, 2.0)
    assert held is not None and held.until == 301.0 and held.cause == "dead-site"
    assert health.suspended(SITE, 301.0) is None


def test_one_session_resets_the_cohort() -> None:
    health = SiteHealth(cohort=2)
    health.walked(SITE, _dead(), 0.0)
    alive = Walk()
    alive.no_session(6)
    alive.session(4)
    health.walked(SITE, alive, 1.0)
    assert health.walked(SITE, _dead(), 2.0) == []


def test_ipv6_failing_while_ipv4_answers_prefers_ipv4_and_the_reverse() -> None:
    """Issue 18 §2 per-family health: IPv6 refuses, IPv4 answers → IPv4 first for a period."""
    health = SiteHealth(family_hold=600.0)
    walk = Walk()
    walk.no_session(6)
    walk.session(4)
    assert [e.kind for e in health.walked(SITE, walk, 0.0)] == ["prefer-ipv4"]
    plan = _plan()
    assert [t.family for t in health.order(SITE, plan, 1.0).targets] == [4, 6, 4, 6]
    back = Walk()
    back.no_session(4)
    back.session(6)
    assert [e.kind for e in health.walked(SITE, back, 2.0)] == ["prefer-ipv6"]
    assert health.order(SITE, plan, 3.0) is plan  # IPv6 first: the plan's own order
    assert [e.kind for e in health.lift(603.0)] == ["lifted"]


def test_a_5xx_blaming_ipv6_reverse_dns_prefers_ipv4() -> None:
    """Issue 18 §2: Gmail's 550 5.7.25 on an IPv6 session → prefer IPv4."""
    health = SiteHealth()
    walk = Walk()
    walk.session(6)
    walk.reply(6, "550-5.7.25 The IP address sending this message does not have a PTR record")
    events = health.walked(SITE, walk, 0.0)
    assert [e.kind for e in events] == ["prefer-ipv4"] and "5.7.25" in events[0].text


def test_reorder_keeps_the_mx_order() -> None:
    plan = _plan()
    assert [(t.preference, t.family) for t in reorder(plan, 4).targets] == [
        (10, 4), (10, 6), (20, 4), (20, 6)]


def test_memory_is_bounded() -> None:
    from mxroute.relay.courier import health as module
    health = SiteHealth()
    for index in range(module.LIMIT + 50):
        health.replied(f"site{index}", "421 4.7.28 slow", 0.0)
    assert len(health.sites) <= module.LIMIT


def _plan() -> Plan:
    targets = (Target("mx1.example.net", 10, "2001:db8::1", 6, 25),
               Target("mx1.example.net", 10, "192.0.2.1", 4, 25),
               Target("mx2.example.net", 20, "2001:db8::2", 6, 25),
               Target("mx2.example.net", 20, "192.0.2.2", 4, 25))
    return Plan("example.net", Verdict.DELIVERABLE, "ok", "2.0.0", targets=targets)


def test_site_numbers_name_the_top_sites_and_sum_the_rest() -> None:
    """Issue 18 §2: metrics per site with bounded label cardinality."""
    from mxroute.relay.courier.health import SiteNumbers

    numbers = SiteNumbers()
    for index in range(25):
        numbers.add(f"site{index:02d}", "suspensions", index)
    numbers.add("site00", "connections", 3)
    top = numbers.top(5)
    assert len(top) == 6 and "site00" in top and "site24" in top
    assert top["other"]["suspensions"] == sum(range(1, 21))  # site01..site20
    assert top["site00"]["connections"] == 3


def test_flush_lifts_dead_sites_not_what_a_pattern_asked_for() -> None:
    """Issue 18 §2: `queue flush` tries every host again: a dead site's suspension goes, a
    reply pattern's stays."""
    health = SiteHealth()
    health.walked(SITE, _dead(), 0.0)
    health.replied("other", "421 4.7.0 [TSS09] deferred", 0.0)
    assert health.forget_dead() == 1
    assert health.suspended(SITE, 1.0) is None and health.suspended("other", 1.0) is not None
