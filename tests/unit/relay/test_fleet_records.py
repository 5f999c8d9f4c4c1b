"""Issue 19 (fleet state and views): the records a fleet's nodes share, their keys (hash-tagged
for Redis Cluster, every one with a TTL), the merge of node summaries, and what a node does
with another node's hold (SiteHealth.adopt, Hosts.learn, Suspensions.adopt). Pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxroute.relay.courier.health import SiteHealth
from mxroute.relay.courier.hosts import Endpoint, Hosts
from mxroute.relay.fleet.records import (
    LONGEST,
    Lift,
    NodeSummary,
    SharedHold,
    SharedHost,
    decode,
    encode,
    fleet_summary,
    hold_key,
    host_key,
    node_key,
    render_fleet,
    ttl_ms,
)
from mxroute.relay.queue.suspensions import Suspensions


def test_keys_carry_a_hash_tag_of_the_site() -> None:
    """Issue 19: a site's keys hash to one Redis Cluster slot (``{site}``), shard by site."""
    site = "mx1.example.net,mx2.example.net"
    assert hold_key(site, "suspension") == \
        "mxroute:hold:{mx1.example.net,mx2.example.net}:suspension"
    assert host_key("192.0.2.1", 25) == "mxroute:host:{192.0.2.1:25}"
    assert node_key("a:/var/spool/mxroute") == "mxroute:view:{a:/var/spool/mxroute}"
    for key in (hold_key(site, "throttle"), host_key("::1", 25), node_key("n"),
                hold_key("a{b}c", "operator")):
        assert key.count("{") == 1 and key.index("{") < key.index("}")


@pytest.mark.parametrize("item", [
    SharedHold("gmail-smtp-in.l.google.com", "throttle", "421-4.7.28 rate", 300.0, "a:/s",
               rate=0.5),
    SharedHold("mx.example", "suspension", "every address failed", 60.0, "a:/s",
               cause="dead-site"),
    SharedHold("example.org", "operator", "", 3600.0, "b:/s", cause="operator"),
    SharedHost("192.0.2.7", 25, "4.4.1", "connection refused", 120.0, "a:/s",
               "mx.example[192.0.2.7]:25"),
    Lift("example.org", "operator", "b:/s"),
])
def test_records_round_trip(item: SharedHold | SharedHost | Lift) -> None:
    """Issue 19: what is published is read back the same."""
    assert decode(encode(item)) == item


def test_the_servers_ttl_replaces_the_written_one() -> None:
    """Issue 19: a record read in a resync takes the key's own TTL (the server's clock)."""
    hold = SharedHold("mx.example", "suspension", "r", 300.0, "a")
    assert decode(encode(hold), 12.5).ttl == 12.5


@pytest.mark.parametrize("text", [
    "", "[]", '{"v": 2, "what": "hold"}', '{"v": 1, "what": "nope"}',
    '{"v": 1, "what": "hold", "name": "x", "kind": "weird", "reason": "", "ttl": 1, "node": "a"}',
    ('{"v": 1, "what": "hold", "name": "x", "kind": "throttle", "reason": "", "ttl": 0, '
    '"node": "a"}'),
    '{"v": 1, "what": "host", "address": "x"}',
])
def test_a_bad_record_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode(text)


def test_ttl_is_bounded_and_positive() -> None:
    """Issue 19: every key has a TTL; an open-ended suspension's is LONGEST."""
    assert ttl_ms(float("inf")) == int(LONGEST * 1000)
    assert ttl_ms(0.0001) == 1
    assert ttl_ms(2.5) == 2500


def _node(name: str, at: float, **counts: int) -> NodeSummary:
    return NodeSummary(name, name.split(":")[0], "/s", 1, at, dict(counts))


def test_fleet_summary_lists_every_node_and_the_total() -> None:
    """Issue 19: ``queue summary --fleet``: each node by name, the sums."""
    nodes = [_node("b:/s", 95.0, active=1, due=2, deferred=3),
             _node("a:/s", 99.0, deferred=10, held=1)]
    got = fleet_summary(nodes, 100.0)
    assert [n["node"] for n in got["nodes"]] == ["a:/s", "b:/s"]
    assert got["nodes"][1]["age"] == 5.0 and got["nodes"][1]["messages"] == 6
    assert got["total"] == {"nodes": 2, "messages": 17, "active": 1, "due": 2,
                            "deferred": 13, "held": 1}
    lines = render_fleet(got)
    assert lines[0].split() == ["NODE", "MSGS", "ACTIVE", "DUE", "DEFERRED", "HELD", "SEEN"]
    assert lines[1].startswith("TOTAL (2 nodes)") and lines[1].split()[3] == "17"
    assert lines[2].startswith("a:/s") and lines[3].split()[-2:] == ["5s", "ago"]


def test_node_summary_round_trip_and_bad_input() -> None:
    import json

    node = _node("a:/s", 5.0, active=0, due=3, deferred=0, held=0)
    assert NodeSummary.from_json(json.dumps(node.to_json())) == node
    with pytest.raises(ValueError):
        NodeSummary.from_json('{"node": "x"}')


def test_adopted_suspension_defers_the_site_and_is_told_once() -> None:
    """Issue 19: another node's suspension applies here as if learnt here, logged once."""
    health = SiteHealth()
    first = health.adopt("mx.example", "suspension", "dead (node a)", 10.0, 70.0,
                         cause="dead-site")
    assert first is not None and first.kind == "dead"
    assert health.suspended("mx.example", 20.0) is not None
    assert health.adopt("mx.example", "suspension", "again", 11.0, 70.0) is None
    assert health.suspended("mx.example", 71.0) is None
    assert health.adopt("mx.example", "suspension", "over", 80.0, 79.0) is None


def test_adopted_throttle_paces_the_site() -> None:
    """Issue 19: another node's throttle (rate/s) gives turns here too."""
    health = SiteHealth()
    event = health.adopt("mx.example", "throttle", "421 slow (node a)", 0.0, 100.0, rate=1.0)
    assert event is not None and event.kind == "throttled"
    assert health.turn("mx.example", 0.0) == 0.0
    assert health.turn("mx.example", 0.0) == 1.0
    assert health.adopt("mx.example", "throttle", "no rate", 0.0, 200.0, rate=None) is None


def test_host_learnt_from_another_node_is_skipped_whatever_the_egress() -> None:
    """Issue 19: a host down at node A is skipped at B (any source address), once told."""
    now = [100.0]
    hosts = Hosts(clock=lambda: now[0])
    assert hosts.learn("192.0.2.7", 25, "4.4.1", "refused", 60.0, "mx[192.0.2.7]:25")
    assert not hosts.learn("192.0.2.7", 25, "4.4.1", "refused", 60.0)
    for source in (None, "127.0.29.9"):
        known = hosts.skip(Endpoint("192.0.2.7", 25, source))
        assert known is not None and known.reply == "refused"
    assert hosts.skip(Endpoint("192.0.2.7", 587, None)) is None
    assert [k.address for k, _ in hosts.skipping()] == ["192.0.2.7"]
    assert hosts.skipping(shared=False) == []
    now[0] = 161.0
    assert hosts.skip(Endpoint("192.0.2.7", 25, None)) is None


def test_own_failures_are_told_shared_ones_are_not() -> None:
    """Issue 19: only what this node finds is published (no echo of another node's)."""
    told: list[str] = []
    hosts = Hosts(clock=lambda: 0.0)
    hosts.on_failed = lambda key, record: told.append(key.address)
    hosts.learn("192.0.2.8", 25, "4.4.1", "refused", 60.0)
    hosts.failed(Endpoint("192.0.2.9", 25, None), "4.4.1", "refused", 60.0)
    assert told == ["192.0.2.9"]
    assert hosts.forget("192.0.2.8") == 1


def test_shared_operator_suspension_is_in_force_but_not_saved(tmp_path: Path) -> None:
    """Issue 19: another node's ``queue suspend`` holds mail here; not written to this spool's
    suspended.json (Redis keeps it, with its TTL); ``resume`` lifts it too."""
    suspensions = Suspensions.load(tmp_path)
    assert suspensions.adopt("example.org", "maint (node a)", 0.0, 100.0)
    assert not suspensions.adopt("example.org", "maint", 1.0, 100.0)
    assert suspensions.until("example.org", 50.0) == 100.0 and suspensions.any()
    suspensions.save()
    assert not (tmp_path / "suspended.json").exists()
    assert [e.domain for e in suspensions.current(50.0)] == ["example.org"]
    assert suspensions.resume(["example.org"], 60.0) == ["example.org"]
    assert suspensions.until("example.org", 61.0) is None
