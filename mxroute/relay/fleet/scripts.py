"""The Lua scripts a fleet's limits run in Redis (issue 19), every time on the server's clock
(``redis.call('TIME')``: the nodes' clocks never have to agree), every key with a TTL.

* connection leases, a sorted set per shaping key (member = lease id, score = expiry in ms):
  ``LEASE_TAKE`` drops the expired ones and adds one when fewer than the limit are left;
  ``LEASE_RENEW`` pushes the expiry of leases this node holds (and records them again after
  Redis lost them: a connection that is open is counted, whatever the limit says);
  ``LEASE_DROP`` gives one back. A node that dies frees its slots when its leases expire.
  A node refused a slot flags the key "wanted" for a moment; a renewal tells the holders, who
  close the idle connections keeping slots from it (``Courier``'s pool, as on one node).
* ``GCRA`` (the generic cell rate algorithm): a message rate as one stored time, the
  theoretical arrival time of the next message; a call reserves the caller's turn and answers
  how many ms it waits for it (0: now). ``burst`` messages pass at once, then one per
  ``1/rate`` s. The key carries rate and burst, so a changed limit starts fresh.
* ``HEARTBEAT``: a node's registration in one sorted set (score = expiry); answers how many
  nodes are live, which the local fallback divides the shared limits by.

Keys are ``mxroute:<kind>:{<shaping key>}...``: the braces are a Redis Cluster hash tag, so one
site's keys live on one shard.
"""

from __future__ import annotations

PREFIX = "mxroute"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""

# KEYS[1] lease set, KEYS[2] its "wanted" flag; ARGV: lease id, limit, lease ms, flag ms
#  -> 1 taken, 0 full (and the flag set: the holders close their idle connections)
LEASE_TAKE = _NOW + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease + 1000 then
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
end
return 1
"""

# KEYS[1] lease set, KEYS[2] its "wanted" flag; ARGV: lease ms, lease ids...
#  -> {how many of them were missing (recorded again), 1 if another node waits for a slot}
LEASE_RENEW = _NOW + """
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local missing = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], now + lease, ARGV[i]) == 1 then
    missing = missing + 1
  end
end
if redis.call('PTTL', KEYS[1]) < lease + 1000 then
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
end
return {missing, redis.call('EXISTS', KEYS[2])}
"""

# KEYS[1] lease set; ARGV: lease id  -> 1 given back, 0 it was gone (expired)
LEASE_DROP = """
local gone = redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
end
return gone
"""

# KEYS[1] the next arrival time (ms); ARGV: interval ms (1000 / rate), burst  -> wait in ms
GCRA = _NOW + """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local next_tat = tat + interval
local wait = next_tat - now - burst * interval
if wait < 0 then
  wait = 0
end
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return math.ceil(wait)
"""

# KEYS[1] the node set; ARGV: node id, ttl ms (0: leave)  -> live nodes (this one included)
HEARTBEAT = _NOW + """
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ttl > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl + 1000)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""


def _tag(key: str) -> str:
    """``key`` as a hash tag: braces in it would end the tag early, so they are replaced."""
    return "{" + key.replace("{", "(").replace("}", ")") + "}"


def lease_key(key: str) -> str:
    """The lease set of shaping key ``key``."""
    return f"{PREFIX}:lease:{_tag(key)}"


def wanted_key(key: str) -> str:
    """Set while a node waits for a slot of ``key``: the others close their idle connections."""
    return f"{PREFIX}:wanted:{_tag(key)}"


def rate_key(key: str, rate: float, burst: int) -> str:
    """The GCRA time of bucket ``key`` at this ``rate`` and ``burst`` (a new limit, a new key)."""
    return f"{PREFIX}:rate:{_tag(key)}:{rate:g}:{burst}"


NODES_KEY = f"{PREFIX}:nodes"

__all__ = ["GCRA", "HEARTBEAT", "LEASE_DROP", "LEASE_RENEW", "LEASE_TAKE", "NODES_KEY", "PREFIX",
           "lease_key", "rate_key", "wanted_key"]
