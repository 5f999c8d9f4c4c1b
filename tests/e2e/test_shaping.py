"""Issue 18 §1: traffic shaping through the real ``serve``, against the loopback DNS server and
an SMTP sink on loopback that counts what it sees: connections open at once, messages per
connection, when each message and connection came. Rates are checked as upper bounds per time
window (with one of slack for the loopback's own jitter), never as timed equalities.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.support.relay import MSG, World, wait_for
from tests.support.smtpsink import Sink

DOMAINS = 12


def shared_zone(world: World, mx_names: Sequence[str] = ("mx1.shared", "mx2.shared")) -> None:
    """d0.test .. d11.test, their MX one of ``mx_names`` (all at the one sink's address)."""
    lines = [f"d{i} IN MX 10 {mx_names[i % len(mx_names)]}.test." for i in range(DOMAINS)]
    lines += [f"{name} IN A {world.ip(1)}" for name in mx_names]
    world.zone("\n".join(lines))


def delivered(sink: Sink, count: int) -> bool:
    return len(sink.messages) >= count


def most_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` within any ``window`` seconds."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u - t <= window) for i, t in enumerate(times)),
               default=0)


def test_mx_rule_connection_limit_holds_across_domains(world: World) -> None:
    """issue 18 §1: an ``mx:`` rule's connection_limit N holds across many recipient domains
    and two MX sets matching its glob: the sink never sees more than N connections at once."""
    shared_zone(world)
    sink = world.sink(1, delays={".": 0.2})
    relay = world.relay(shaping=[{"match": "mx:*.shared.test", "connection_limit": 2}])
    rcpts = [f"u{i}@d{i}.test" for i in range(DOMAINS)]
    for _ in range(3):
        relay.send("a@sender.test", rcpts, MSG)
    assert wait_for(lambda: delivered(sink, 3 * DOMAINS), timeout=60), relay.log()
    assert wait_for(lambda: relay.queued() == [])
    assert 1 <= sink.peak <= 2, sink.peak


def test_default_rule_is_destination_concurrency_per_site(world: World) -> None:
    """issue 18 §1: without a rule, destination_concurrency holds per site: the domains sharing
    one MX set share it (today's number, now per site)."""
    shared_zone(world, ("mx.shared",))
    sink = world.sink(1, delays={".": 0.2})
    relay = world.relay(destination_concurrency=3)
    relay.send("a@sender.test", [f"u{i}@d{i}.test" for i in range(DOMAINS)], MSG)
    relay.send("a@sender.test", [f"v{i}@d{i}.test" for i in range(DOMAINS)], MSG)
    assert wait_for(lambda: delivered(sink, 2 * DOMAINS), timeout=60), relay.log()
    assert 1 <= sink.peak <= 3, sink.peak


def test_max_messages_per_connection(world: World) -> None:
    """issue 18 §1: max_messages_per_connection M: no connection carries more than M messages
    (a new one is opened after the M-th), with the connection limit holding meanwhile."""
    shared_zone(world)
    sink = world.sink(1)
    relay = world.relay(shaping=[{"match": "mx:*.shared.test", "connection_limit": 1,
                                  "max_messages_per_connection": 3}])
    for i in range(10):
        relay.send("a@sender.test", [f"u@d{i}.test"], MSG)
    assert wait_for(lambda: delivered(sink, 10), timeout=60), relay.log()
    counts = [len([t for t in c.transactions if t.data is not None]) for c in sink.connections]
    assert max(counts) <= 3 and sum(counts) == 10, counts
    assert sink.peak == 1


def test_message_rate_is_an_upper_bound(world: World) -> None:
    """issue 18 §1: message_rate R per second with message_burst B: within any 2 s no more
    than B + 2R messages arrive (plus one of slack for loopback jitter)."""
    shared_zone(world)
    sink = world.sink(1)
    relay = world.relay(shaping=[{"match": "domain:d1.test", "connection_limit": 1},
                                 {"match": "mx:*.shared.test", "message_rate": 2,
                                  "message_burst": 1}])
    for i in range(8):
        relay.send("a@sender.test", [f"u@d{i}.test"], MSG)
    assert wait_for(lambda: delivered(sink, 8), timeout=60), relay.log()
    assert most_in_window([t.at for t in sink.messages], 2.0) <= 1 + 2 * 2 + 1


def test_connection_rate_is_an_upper_bound(world: World) -> None:
    """issue 18 §1: connection_rate per minute (60: one a second, burst 1): within any 2 s no
    more than 1 + 2 new connections (plus one of slack), a new one for every message here."""
    shared_zone(world)
    sink = world.sink(1)
    relay = world.relay(shaping=[{"match": "mx:*.shared.test", "connection_rate": 60,
                                  "max_messages_per_connection": 1}])
    for i in range(6):
        relay.send("a@sender.test", [f"u@d{i}.test"], MSG)
    assert wait_for(lambda: delivered(sink, 6), timeout=60), relay.log()
    assert len(sink.connections) >= 6
    assert most_in_window([c.opened for c in sink.connections], 2.0) <= 1 + 2 + 1
