"""Issue 19: the Lua scripts of shared limits (mxroute/relay/fleet/scripts.py) against a real
redis-server: connection leases (the limit is never exceeded, expiry frees a dead holder's
slots, renewal keeps a live one's), GCRA (burst, refill, never more than burst + rate x window,
a changed limit starts fresh), heartbeats; every key has a TTL. Property tests with hypothesis,
bounded in examples; time is the server's, so expiry and refill are waited for (bounded)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxroute.relay.fleet import scripts
from tests.support.redisserver import RedisServer, start_redis

PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = start_redis(tmp_path_factory.mktemp("redis"), "127.0.19.2")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def conn(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    yield client
    client.close()


def fresh(kind: str) -> str:
    return f"test-{kind}-{next(_names)}"


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return bool(predicate())


# --- leases ---------------------------------------------------------------------------------------

@PROPERTY
@given(limit=st.integers(1, 6),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10)), min_size=1, max_size=40))
def test_issue19_lease_limit_never_exceeded(conn: redis.Redis, limit: int,
                                            ops: list[tuple[bool, int]]) -> None:
    """issue 19: any sequence of takes and drops: a take succeeds exactly when fewer than the
    limit are held, so the set never holds more than the limit."""
    take, drop = conn.register_script(scripts.LEASE_TAKE), conn.register_script(scripts.LEASE_DROP)
    name = fresh("lease")
    key, want = scripts.lease_key(name), scripts.wanted_key(name)
    held: list[str] = []
    for n, (taking, pick) in enumerate(ops):
        if taking or not held:
            lease = f"l{n}"
            got = take(keys=[key, want], args=[lease, limit, 60_000, 1000])
            assert got == (1 if len(held) < limit else 0)
            if got:
                held.append(lease)
        else:
            lease = held.pop(pick % len(held))
            assert drop(keys=[key], args=[lease]) == 1
        assert conn.zcard(key) == len(held) <= limit
        assert (conn.pttl(key) > 0) if held else not conn.exists(key)


def test_issue19_expired_leases_free_their_slots(conn: redis.Redis) -> None:
    """issue 19: a holder that dies (never renews, never drops) frees its slot when the lease
    expires; the key's TTL outlives no lease by more than a second."""
    take = conn.register_script(scripts.LEASE_TAKE)
    name = fresh("expiry")
    key, want = scripts.lease_key(name), scripts.wanted_key(name)
    assert take(keys=[key, want], args=["dead1", 2, 200, 1000]) == 1
    assert take(keys=[key, want], args=["dead2", 2, 200, 1000]) == 1
    assert take(keys=[key, want], args=["new", 2, 200, 1000]) == 0
    assert 0 < conn.pttl(key) <= 1200
    assert wait_until(lambda: take(keys=[key, want], args=["new", 2, 60_000, 1000]) == 1)
    assert conn.zrange(key, 0, -1) == [b"new"]


def test_issue19_renewed_leases_stay_and_lost_ones_are_recorded(conn: redis.Redis) -> None:
    """issue 19: renewal keeps a live holder's lease past its first expiry; a lease Redis lost
    (restart, expiry during a pause) is recorded again, and counted as missing; a node refused
    a slot leaves the key flagged "wanted" (with a TTL), which the renewal reports."""
    take = conn.register_script(scripts.LEASE_TAKE)
    renew = conn.register_script(scripts.LEASE_RENEW)
    name = fresh("renew")
    key, want = scripts.lease_key(name), scripts.wanted_key(name)
    assert take(keys=[key, want], args=["a", 1, 300, 1000]) == 1
    assert renew(keys=[key, want], args=[60_000, "a"]) == [0, 0]
    time.sleep(0.4)
    assert take(keys=[key, want], args=["b", 1, 300, 60_000]) == 0  # "a" holds the one slot
    conn.delete(key)
    assert renew(keys=[key, want], args=[60_000, "a", "c"]) == [2, 1]  # "b" was refused
    assert conn.zcard(key) == 2 and conn.pttl(key) > 60_000


# --- GCRA -----------------------------------------------------------------------------------------

def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u - t <= window) for i, t in enumerate(times)),
               default=0)


@PROPERTY
@given(rate=st.sampled_from([20.0, 50.0, 100.0, 250.0]), burst=st.integers(1, 8),
       calls=st.integers(1, 30))
def test_issue19_gcra_burst_then_rate(conn: redis.Redis, rate: float, burst: int,
                                      calls: int) -> None:
    """issue 19: a fresh bucket passes ``burst`` messages at once, then one per 1/rate s: the
    k-th call (from 0) waits at most (k + 1 - burst) / rate and its turn comes no sooner than
    (k + 1 - burst) / rate after the first call; the turns never put more than burst + rate x w
    (+1 for the ms rounding) in any window w."""
    gcra = conn.register_script(scripts.GCRA)
    key = scripts.rate_key(fresh("gcra"), rate, burst)
    interval = 1000.0 / rate
    turns = []
    first = time.monotonic()
    for k in range(calls):
        now = time.monotonic()
        wait = int(gcra(keys=[key], args=[interval, burst]))
        answered = time.monotonic()
        assert 0 <= wait <= max(0.0, (k + 1 - burst) * interval) + 1
        if k < burst:
            assert wait == 0
        # never sooner than burst + rate x (time since the first call) allows
        assert answered + wait / 1000.0 >= first + (k + 1 - burst) * interval / 1000.0
        turns.append(now + wait / 1000.0)
    for window in (0.05, 0.2, 1.0):
        assert most_in_window(turns, window) <= burst + rate * window + 1
    assert 0 < conn.pttl(key) <= calls * interval + 1000 + 5  # gone once the debt is paid


def test_issue19_gcra_refills_after_idle(conn: redis.Redis) -> None:
    """issue 19: after burst / rate seconds idle the whole burst passes at once again, and no
    more (refill is capped at the burst)."""
    gcra = conn.register_script(scripts.GCRA)
    key = scripts.rate_key(fresh("refill"), 50.0, 4)
    assert [int(gcra(keys=[key], args=[20.0, 4])) for _ in range(4)] == [0, 0, 0, 0]
    assert int(gcra(keys=[key], args=[20.0, 4])) > 0
    time.sleep(0.5)  # long past the 0.1 s a full refill takes: still only 4
    waits = [int(gcra(keys=[key], args=[20.0, 4])) for _ in range(5)]
    assert waits[:4] == [0, 0, 0, 0] and waits[4] > 0


def test_issue19_gcra_changed_limit_starts_fresh() -> None:
    """issue 19: the key carries rate and burst, so a changed limit is a new bucket."""
    assert scripts.rate_key("mx:*.gmail.com", 10, 5) != scripts.rate_key("mx:*.gmail.com", 20, 5)
    assert scripts.rate_key("a", 1.5, 2) == "mxroute:rate:{a}:1.5:2"
    assert scripts.lease_key("x{y}") == "mxroute:lease:{x(y)}"  # one hash tag, whole key


# --- heartbeats -----------------------------------------------------------------------------------

def test_issue19_heartbeat_counts_live_nodes(conn: redis.Redis) -> None:
    """issue 19: nodes register with a TTL; a node that leaves or stops beating is not
    counted."""
    beat = conn.register_script(scripts.HEARTBEAT)
    key = f"{scripts.PREFIX}:{fresh('nodes')}"
    assert beat(keys=[key], args=["n1", 60_000]) == 1
    assert beat(keys=[key], args=["n2", 200]) == 2
    assert beat(keys=[key], args=["n3", 60_000]) == 3
    assert beat(keys=[key], args=["n3", 0]) == 2
    assert wait_until(lambda: beat(keys=[key], args=["n1", 60_000]) == 1)
    assert conn.pttl(key) > 0
