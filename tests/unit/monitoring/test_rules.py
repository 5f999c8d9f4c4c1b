"""The rule generator's pure parts (issue 20): tuning, YAML, queue-ID times, site numbers."""

from __future__ import annotations

from mxroute.monitoring.rules import Tuning, alert_rules, to_yaml
from mxroute.relay.courier.health import SiteNumbers
from mxroute.relay.spool.format import new_queue_id, queue_id_time


def test_tuning_hold_overrides_every_for() -> None:
    """Issue 20: a test's Tuning(hold=...) sets every alert's ``for:``; the default keeps each
    alert's own."""
    assert {r["for"] for r in alert_rules(Tuning(hold="3s"))} == {"3s"}
    assert len({r["for"] for r in alert_rules(Tuning())}) > 1


def test_yaml_quotes_and_nests() -> None:
    """Issue 20: strings single-quoted (a quote doubled), lists of maps and scalars, empty
    lists, a header as comments."""
    text = to_yaml({"a": [{"b": "it's", "c": 1}, {"d": []}], "e": ["x"]}, "one\ntwo")
    assert text == ("# one\n# two\na:\n  - b: 'it''s'\n    c: 1\n  - d: []\ne:\n  - 'x'\n")


def test_queue_id_time_reads_the_arrival() -> None:
    """Issue 20: a queue ID tells when it was made (the oldest message's age)."""
    assert queue_id_time(new_queue_id(lambda: 1_700_000_000.25)) == 1_700_000_000.25
    assert queue_id_time("not-an-id!!!!!!!!!") is None
    assert queue_id_time("short") is None


def test_site_numbers_count_outcomes_and_sum_the_rest_as_other() -> None:
    """Issue 20: per-site outcomes; past the top N, the rest is summed under ``other``
    (bounded label cardinality); failing sites rank before quiet ones."""
    numbers = SiteNumbers()
    for n in range(5):
        numbers.add(f"ok{n}.test", "delivered")
    numbers.add("bad.test", "deferred", 3)
    top = numbers.top(2)
    assert next(iter(top)) == "bad.test"
    assert set(top) == {"bad.test", "ok0.test", "other"}
    assert top["other"]["delivered"] == 4
    assert top["bad.test"]["deferred"] == 3
