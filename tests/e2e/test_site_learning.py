"""Issue 18 §2 through the real ``serve`` with loopback sinks: reply patterns throttle a site and
the throttle lifts by itself; a site whose IPv6 addresses refuse gets IPv4 first, shown by
``queue hosts`` and ``explain``; a dead site (every address refusing) is suspended until
``retry_min_seconds`` and then delivered to. Rates are checked as upper bounds per window."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.support.relay import MSG, ROOT, Relay, World, free_port, scrape, wait_for
from tests.support.smtpsink import Sink

PATTERN = {"name": "test-rate", "regex": r"^421 4\.7\.28\b", "action": "throttle",
           "message_rate": 0.5, "duration": 6}


def ok(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def explain_json(relay: Relay, address: str) -> dict[str, Any]:
    """``mxroute explain --json ADDRESS`` with the relay's own settings."""
    done = subprocess.run([sys.executable, "-m", "mxroute", "explain", "--json", address],
                          cwd=ROOT, env=relay.env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.stdout, done.stderr
    body: dict[str, Any] = json.loads(done.stdout)
    return body


def delivered(sink: Sink) -> list[float]:
    """When each message was taken (250 after the data), in order."""
    return sorted(t.at for c in sink.connections for t in c.transactions
                  if t.reply.startswith("250"))


def test_421_4_7_28_after_k_messages_throttles_the_site_then_it_recovers(world: World) -> None:
    """Issue 18 §2: a sink answering ``421 4.7.28`` after K=2 messages: the site is throttled to
    the pattern's 0.5/s for 6 s (logged once, with the reply), at most 1 + 0.5 * window
    messages go in any window of that time, and the throttle lifts by itself: every message is
    delivered."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n")
    sink = world.sink(1, replies={".": [None, None, "421 4.7.28 slow down, unusual rate"]})
    metrics = free_port()
    relay = world.relay(reply_patterns=[PATTERN], metrics_listen=f"127.0.0.1:{metrics}")
    for n in range(2):
        relay.send("a@sender.test", [f"u{n}@dest.test"], MSG)
        assert wait_for(lambda n=n: len(delivered(sink)) == n + 1)  # type: ignore[misc]
    relay.send("a@sender.test", ["u2@dest.test"], MSG)
    line = "site mx1.dest.test: throttle to 0.5/s for 6s: test-rate: 421 4.7.28 slow down"
    relay.logged(line)
    throttled_at = time.monotonic()
    throttle = ok(relay.queue("hosts", "--json"))["sites"]["mx1.dest.test"]["throttle"]
    assert throttle["rate"] == 0.5 and throttle["reason"].startswith("test-rate: 421 4.7.28")
    ends = time.monotonic() + throttle["until"] - time.time() - 0.2  # on the sink's clock
    for n in range(3, 9):
        relay.send("a@sender.test", [f"u{n}@dest.test"], MSG)
    assert wait_for(lambda: len(delivered(sink)) == 9, timeout=40), relay.log()
    assert wait_for(lambda: relay.queued() == [])
    times = [t for t in delivered(sink) if throttled_at <= t <= ends]
    assert times, relay.log()
    for start in times:  # every window while throttled: at most 1 + rate * window
        inside = [t for t in times if start <= t <= start + 4.0]
        assert len(inside) <= 1 + 0.5 * 4.0, (inside, relay.log())
    assert relay.log().count(line) == 1
    time.sleep(max(0.0, throttled_at + 6.5 - time.monotonic()))  # the throttle is over
    relay.send("a@sender.test", ["u9@dest.test"], MSG)
    assert wait_for(lambda: len(delivered(sink)) == 10), relay.log()
    relay.logged("site mx1.dest.test: throttle lifted (test-rate: 421 4.7.28")
    scraped = scrape(metrics)  # per-site metrics, the site named
    assert scraped['mxroute_site_throttled_waits_total{site="mx1.dest.test"}'] >= 1
    assert scraped['mxroute_site_connections{site="mx1.dest.test"}'] == 0


def test_ipv6_refusing_site_prefers_ipv4_shown_by_queue_hosts_and_explain(world: World) -> None:
    """Issue 18 §2 per-family health: mx.dual.test has AAAA ::1 (nothing listens: refused) and
    an A record whose sink answers: IPv4 is preferred for the site, logged, shown by
    ``queue hosts --json`` (``sites``) and ``explain --json`` (``relay.site_health``)."""
    world.zone(f"dual IN MX 10 mx.dual.test.\nmx.dual IN A {world.ip(1)}\n"
               "mx.dual IN AAAA ::1\n")
    sink = world.sink(1)
    relay = world.relay(family_hold_seconds=600)
    relay.send("a@sender.test", ["u@dual.test"], MSG)
    assert wait_for(lambda: len(delivered(sink)) == 1), relay.log()
    relay.logged("site mx.dual.test: IPv4 preferred for 600s: every IPv6 address failed")
    sites = ok(relay.queue("hosts", "--json"))["sites"]
    prefer = sites["mx.dual.test"]["prefer"]
    assert prefer["family"] == 4 and prefer["until"] - prefer["since"] == 600
    text = relay.queue("hosts").stdout
    assert "mx.dual.test" in text and "IPv4 preferred" in text, text
    body = explain_json(relay, "u@dual.test")
    assert body["relay"]["site"] == "mx.dual.test"
    assert body["relay"]["site_health"]["prefer"]["family"] == 4
    assert [t["family"] for t in body["relay"]["delivery_order"]] == [4, 6]


def test_dead_site_is_suspended_until_retry_min_then_delivered(world: World) -> None:
    """Issue 18 §2 dead-site detection: both MX hosts refuse: after the cohort (1 delivery) the
    site is suspended for retry_min_seconds (3 s): a second message in that time is deferred
    without a connection; then the sink answers, the suspension lifts and both are delivered."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\ndest IN MX 20 mx2.dest.test.\n"
               f"mx1.dest IN A {world.ip(1)}\nmx2.dest IN A {world.ip(2)}\n")
    relay = world.relay(retry_min_seconds=3, retry_max_seconds=4)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    site = "mx1.dest.test,mx2.dest.test"
    relay.logged(f"site {site}: suspended for 3s: every address failed at connect or greeting")
    suspension = ok(relay.queue("hosts", "--json"))["sites"][site]["suspension"]
    assert suspension["cause"] == "dead-site" and suspension["until"] > time.time()
    relay.send("a@sender.test", ["v@dest.test"], MSG)
    relay.logged(f"451 4.7.0 site {site} suspended")
    sink = world.sink(1)
    assert wait_for(lambda: len(delivered(sink)) == 2, timeout=30), relay.log()
    assert f"site {site}: suspension lifted" in relay.log()


def test_queue_suspend_site_and_summary_by_site(world: World) -> None:
    """Issue 18 §2 operator tools: dest.test and other.test share the site mx1.dest.test;
    `queue suspend SITE --for 4s` holds the mail of both (deferred untried, logged), `queue
    summary --by site` counts it in one row, and the suspension ends by itself: delivered."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nother IN MX 10 mx1.dest.test.\n"
               f"mx1.dest IN A {world.ip(1)}\n")
    sink = world.sink(1)
    relay = world.relay()
    [entry] = ok(relay.queue("suspend", "MX1.dest.test", "--for", "4s", "--json"))["suspensions"]
    assert entry["domain"] == "mx1.dest.test"
    relay.send("a@sender.test", ["u@dest.test", "v@other.test"], MSG)
    relay.logged("451 4.7.0 site mx1.dest.test suspended (mxroute queue suspend)")
    summary = ok(relay.queue("summary", "--by", "site", "--json"))
    if sink.connections == []:  # still suspended (a loaded machine may be slower)
        [row] = summary["sites"]
        assert (row["site"], row["messages"], row["recipients"]) == ("mx1.dest.test", 1, 2)
        assert summary["total"]["recipients"] == 2
    text = relay.queue("summary", "--by", "site").stdout
    assert text.startswith("SITE ") or "SITE" in text.splitlines()[0], text
    assert wait_for(lambda: len(delivered(sink)) >= 1, timeout=20), relay.log()
    assert wait_for(lambda: relay.queued() == []), relay.log()
    assert sorted(r for c in sink.connections for t in c.transactions for r in t.rcpt_to) == [
        "u@dest.test", "v@other.test"]
    assert ok(relay.queue("suspend", "--json"))["suspensions"] == []


def test_queue_suspend_rejects_a_bad_site(world: World) -> None:
    """Issue 18 §2: a site that is no name is a usage error (64); nothing is suspended."""
    relay = world.relay()
    done = relay.queue("suspend", "mx1.dest.test,bad name", "--json")
    assert done.returncode == 64 and "bad name" in done.stderr, (done.stdout, done.stderr)
    assert ok(relay.queue("suspend", "--json"))["suspensions"] == []
