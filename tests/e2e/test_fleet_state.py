"""Issue 19 (fleet state and views) through a real ``redis-server`` and real ``serve`` nodes,
each with its own spool: a suspension made on node A is honoured by node B (B defers the site's
mail without dialling), a host A found dead is skipped by B, and ``queue summary --fleet``
lists every live node and drops a killed one once its heartbeat's TTL has run out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxroute.relay.fleet.records import NODE_TTL
from tests.support.redisserver import RedisServer, start_redis
from tests.support.relay import MSG, Relay, World, wait_for

REDIS_HOST = "127.0.29.1"  # issue 19 (fleetview)'s addresses: 127.0.29.0/24


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", REDIS_HOST)
    try:
        yield server
    finally:
        server.stop()


def nodes(world: World, redis: RedisServer, count: int = 2, **settings: Any) -> list[Relay]:
    """``count`` serve nodes sharing ``redis`` (retries far apart: a deferral stays one)."""
    values = {"shared_state": redis.url, "retry_min_seconds": 30, "retry_max_seconds": 60,
              **settings}
    return [world.node(name, **values) for name in "abc"[:count]]


def seen(relay: Relay, *texts: str) -> None:
    """Wait (bounded) until ``relay``'s log holds every one of ``texts``; fail otherwise."""
    log = relay.logged(*texts)
    assert all(text in log for text in texts), (texts, log)


def ok(done: Any) -> dict[str, Any]:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def test_a_suspension_on_node_a_is_honoured_by_node_b(world: World, redis: RedisServer) -> None:
    """Issue 19: ``queue suspend SITE`` on A: B learns it within seconds (logged once, naming
    A), defers the site's mail without dialling; ``queue resume`` on A: B delivers it."""
    sink = world.sink(1)
    a, b = nodes(world, redis)
    suspended = ok(a.queue("suspend", "mx1.dest.test", "--for", "120", "--reason", "maint",
                           "--json"))
    assert suspended["live"] is True
    seen(b, "mx1.dest.test: suspended for", "learnt from node")
    assert ok(b.queue("suspend", "--json"))["suspensions"][0]["domain"] == "mx1.dest.test"
    b.send("a@sender.test", ["u@dest.test"], MSG)
    seen(b, "site mx1.dest.test suspended")
    assert sink.connections == [] and len(b.queued()) == 1
    ok(a.queue("resume", "mx1.dest.test", "--json"))
    seen(b, "mx1.dest.test: suspension lifted, learnt from node")
    assert wait_for(lambda: len(sink.messages) == 1, timeout=15), b.log()
    assert wait_for(lambda: b.queued() == [])
    assert b.log().count("mx1.dest.test: suspended for") == 1


def test_a_dead_host_found_by_node_a_is_skipped_by_node_b(world: World,
                                                          redis: RedisServer) -> None:
    """Issue 19: A's connection meets a 421 greeting (the host gives no session, the site is
    dead): B, told through Redis, defers its own mail for that site without a connection,
    saying which node learnt it; ``queue hosts`` on B shows the host."""
    sink = world.sink(1, replies={"GREETING": ["421 4.3.2 going down"]})
    a, b = nodes(world, redis)
    a.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: len(sink.connections) == 1)
    seen(b, "site mx1.dest.test: suspended for", "learnt from node")
    seen(b, "unreachable (421 4.3.2 going down), learnt from node")
    b.send("a@sender.test", ["v@dest.test"], MSG)
    seen(b, "learnt from node", "v@dest.test")
    time.sleep(0.5)  # a connection B wrongly made would show by now
    assert len(sink.connections) == 1, b.log()
    hosts = ok(b.queue("hosts", "--json"))
    assert [h["address"] for h in hosts["hosts"]] == [world.ip(1)]
    assert "learnt from node" in hosts["sites"]["mx1.dest.test"]["suspension"]["reason"]


def test_fleet_summary_lists_live_nodes_and_drops_a_killed_one(world: World,
                                                               redis: RedisServer) -> None:
    """Issue 19: ``queue summary --fleet`` (text and --json) shows both nodes and the total;
    a node killed outright drops out once its heartbeat's TTL has run out."""
    world.sink(1, replies={"GREETING": "421 4.3.2 not now"})
    a, b = nodes(world, redis)
    b.send("a@sender.test", ["u@dest.test"], MSG)

    def fleet() -> dict[str, Any]:
        return ok(a.queue("summary", "--fleet", "--json"))

    def both() -> dict[str, Any] | None:
        got = fleet()
        return got if got["total"]["nodes"] == 2 and got["total"]["messages"] == 1 else None

    got = wait_for(both, timeout=15)
    assert got, fleet()
    assert [n["spool"] for n in got["nodes"]] == sorted([str(a.spool), str(b.spool)])
    assert got["shared_state"] == redis.url
    text = a.queue("summary", "--fleet")
    assert text.returncode == 0 and "TOTAL (2 nodes)" in text.stdout
    assert str(a.spool) in text.stdout and str(b.spool) in text.stdout
    b.kill()
    gone = wait_for(lambda: fleet()["total"]["nodes"] == 1, timeout=NODE_TTL + 10)
    assert gone, fleet()
    assert [n["spool"] for n in fleet()["nodes"]] == [str(a.spool)]


def test_fleet_summary_needs_shared_state(world: World, redis: RedisServer) -> None:
    """Issue 19: without shared_state ``--fleet`` exits 78 naming the setting; with Redis gone,
    75; ``--by site`` with it, 64."""
    alone = world.node("alone")
    done = alone.queue("summary", "--fleet")
    assert done.returncode == 78 and "shared_state" in done.stderr
    alone.env["MXROUTE_SHARED_STATE"] = redis.url
    assert alone.queue("summary", "--fleet", "--by", "site").returncode == 64
    redis.stop()
    done = alone.queue("summary", "--fleet")
    assert done.returncode == 75 and redis.url in done.stderr, done.stderr


def test_redis_gone_leaves_the_node_alone_with_one_warning(world: World,
                                                           redis: RedisServer) -> None:
    """Issue 19: Redis killed: intake and delivery go on (nothing in Redis is on their path),
    one warning however long it is away; Redis back: the node shares again, said once."""
    sink = world.sink(1)
    (a,) = nodes(world, redis, count=1)
    wait_for(lambda: ok(a.queue("summary", "--fleet", "--json"))["total"]["nodes"] == 1)
    redis.kill()
    seen(a, "shared_state: Redis unreachable")
    for n in range(3):
        a.send("a@sender.test", [f"u{n}@dest.test"], MSG)
    assert wait_for(lambda: len(sink.messages) == 3), a.log()
    time.sleep(2.5)  # a retry or two while it is away: still one warning
    redis.start()
    seen(a, "shared_state: reachable again")
    assert a.log().count("shared_state: Redis unreachable") == 1
    assert wait_for(lambda: ok(a.queue("summary", "--fleet", "--json"))["total"]["nodes"] == 1)
