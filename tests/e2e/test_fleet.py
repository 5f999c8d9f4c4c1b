"""Issue 19: a fleet of three real ``serve`` nodes (their own spools, one sink) sharing one
``mx:`` shaping rule through a real redis-server: the sink never sees more than the rule's N
connections at once, no window holds more than R x window + burst messages, nothing is lost or
duplicated. Redis killed mid-run: delivery goes on at local limits (N and R divided by the three
nodes), nothing lost; Redis back: the nodes share again. Rates are upper bounds per window, with
one of slack for loopback jitter (as tests/e2e/test_shaping.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.e2e.test_shaping import most_in_window, shared_zone
from tests.support.redisserver import RedisServer
from tests.support.relay import ROOT, Relay, World, free_port, scrape, wait_for
from tests.support.smtpsink import Sink

N, RATE, BURST = 3, 6.0, 3  # the mx: rule: 3 connections, 6 messages/s, a burst of 3
RULE = [{"match": "mx:*.shared.test", "connection_limit": N, "message_rate": RATE,
         "message_burst": BURST}]


def fleet(world: World, redis: RedisServer, rule: list[dict[str, object]],
          metrics_port: int | None = None) -> list[Relay]:
    """Three nodes on one Redis, each knowing the three (their heartbeat said so); the first
    with a metrics endpoint on ``metrics_port``, if given."""
    metrics = {} if metrics_port is None else {"metrics_listen": f"127.0.0.1:{metrics_port}"}
    relays = [world.relay(home=f"node{i}", shared_state=redis.url, shaping=rule,
                          **(metrics if i == 0 else {})) for i in range(3)]
    for relay in relays:
        assert "3 node(s) live" in relay.logged("3 node(s) live", timeout=30), relay.log()
    return relays


def message(n: int) -> bytes:
    return (f"From: a@sender.test\r\nTo: u{n}@d{n % 12}.test\r\nSubject: {n}\r\n"
            f"Message-ID: <{n}@sender.test>\r\n\r\nmessage {n}\r\n").encode()


def send(relays: list[Relay], numbers: range) -> None:
    for n in numbers:
        relays[n % len(relays)].send("a@sender.test", [f"u{n}@d{n % 12}.test"], message(n))


def subjects(sink: Sink) -> Counter[str]:
    """How often each message arrived, by its Subject (its number)."""
    out: Counter[str] = Counter()
    for transaction in sink.messages:
        data = transaction.data or b""
        for line in data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out[line[9:].decode()] += 1
    return out


def all_once(sink: Sink, count: int) -> bool:
    return subjects(sink) == Counter({str(n): 1 for n in range(count)})


def test_issue19_three_nodes_share_connection_and_rate_limits(
        world: World, redis_server: RedisServer) -> None:
    """issue 19: 3 nodes, one mx: rule (N connections, R msgs/s, burst B) through Redis: the
    sink sees at most N connections at once (three nodes alone would open 3N) and no window w
    more than B + R x w (+1) messages; all 36 arrive once (0 lost, 0 duplicated)."""
    shared_zone(world)
    sink = world.sink(1, delays={".": 0.2})
    relays = fleet(world, redis_server, RULE)
    send(relays, range(36))
    assert wait_for(lambda: len(sink.messages) >= 36, timeout=60), [r.log() for r in relays]
    assert wait_for(lambda: all(r.queued() == [] for r in relays))
    assert all_once(sink, 36), subjects(sink)
    assert 1 <= sink.peak <= N, sink.peak
    times = [t.at for t in sink.messages]
    for window in (1.0, 2.0):
        assert most_in_window(times, window) <= BURST + RATE * window + 1, (window, times)


def test_issue19_redis_killed_local_limits_then_shared_again(
        world: World, redis_server: RedisServer) -> None:
    """issue 19: Redis killed mid-run: every node warns once and delivers on its share of the
    limits (N / 3 connections each, besides what it held when Redis went: at most 2N together),
    0 lost, 0 duplicated; Redis restarted: the nodes rejoin and the shared limit N holds again.
    One message a connection, so no pooled connection outlives a phase."""
    shared_zone(world)
    sink = world.sink(1, delays={".": 0.2})
    port = free_port()
    relays = fleet(world, redis_server, [{**RULE[0], "max_messages_per_connection": 1}], port)
    send(relays, range(12))
    assert wait_for(lambda: len(sink.messages) >= 3, timeout=30)
    redis_server.kill()
    send(relays, range(12, 30))
    assert wait_for(lambda: len(sink.messages) >= 30, timeout=90), [r.log() for r in relays]
    for relay in relays:
        log = relay.logged("delivering on local limits", timeout=5)
        assert "limits shared again" not in log
        assert log.count("delivering on local limits") == 1, log
        assert redis_server.url in log and "divided by 3 node(s)" in log
    assert all_once(sink, 30), subjects(sink)
    assert sink.peak <= 2 * N, sink.peak
    away = scrape(port)
    assert away["mxroute_shared_state_up"] == 0 and away["mxroute_fleet_nodes"] == 3
    assert away["mxroute_shared_state_fallbacks_total"] == 1
    redis_server.start()
    for relay in relays:
        log = relay.logged("limits shared again", timeout=30)
        assert "limits shared again, by 3 node(s)" in log, log
    assert wait_for(lambda: sink.open_now == 0)
    sink.reset_peak()
    send(relays, range(30, 48))
    assert wait_for(lambda: len(sink.messages) >= 48, timeout=60), [r.log() for r in relays]
    assert wait_for(lambda: all(r.queued() == [] for r in relays))
    assert all_once(sink, 48), subjects(sink)
    assert 1 <= sink.peak <= N, sink.peak
    back = scrape(port)
    assert back["mxroute_shared_state_up"] == 1
    assert back["mxroute_shared_state_fallbacks_total"] == 1
    # node 0 sent 16 of the 48, some while Redis was away (local, no round trip)
    assert 0 < back['mxroute_shared_state_round_trips_total{kind="rate"}'] < 16 + 16
    assert back['mxroute_shared_state_round_trips_total{kind="lease"}'] > 0


def test_issue19_redis_down_at_start_serve_accepts_and_delivers(world: World,
                                                                 tmp_path: Path) -> None:
    """issue 19: Redis is never on the acceptance path: with shared_state naming a server that
    is not there, serve starts, accepts (250) and delivers on local limits, with one warning."""
    gone = RedisServer(tmp_path / "gone")  # its address and port, never started
    shared_zone(world)
    sink = world.sink(1)
    relay = world.relay(shared_state=gone.url, shaping=RULE)
    send([relay], range(4))
    assert wait_for(lambda: all_once(sink, 4), timeout=30), relay.log()
    log = relay.logged("delivering on local limits")
    assert log.count("delivering on local limits") == 1, log


def test_issue19_unreadable_password_file_stops_serve_clearly(world: World,
                                                             tmp_path: Path) -> None:
    """issue 19: a shared_state_password_file that cannot be read stops serve at start with a
    configuration error naming the setting and the file (exit 78), never a traceback (the
    delivery process says the same if the file goes between the check and its start)."""
    missing = tmp_path / "redis.secret"
    relay = Relay(tmp_path, world.dns, world.sink_port, shared_state="redis://127.0.19.1:9/0",
                  shared_state_password_file=str(missing))
    world.relays.append(relay)
    with open(relay.log_path, "ab") as log:
        relay.proc = subprocess.Popen([sys.executable, "-m", "mxroute", "serve"], cwd=ROOT,
                                      env=relay.env, stdout=log, stderr=subprocess.STDOUT)
    assert relay.proc.wait(timeout=30) == 78, relay.log()
    assert f"setting shared_state_password_file (from MXROUTE_SHARED_STATE_PASSWORD_FILE): " \
           f"{missing} is not a readable file" in relay.log()
    assert "Traceback" not in relay.log()
