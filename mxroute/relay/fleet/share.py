"""Suspensions, host health and queue summaries shared by a fleet (issue 19, docs/fleets.md).

``FleetState`` runs in the process that owns the queue. What this node learns (a host that gave
no session, a dead site, a site a reply pattern throttled or suspended, ``mxroute queue
suspend``/``resume``) is stored under its key with a TTL of the hold's remaining time and
published on ``records.CHANNEL``; what another node publishes is applied here as if learnt here,
logged once naming that node. A node (re)joining reads every key in force (``SCAN``), and again
every ``RESYNC`` seconds in case a message was missed. Every ``HEARTBEAT`` seconds the node's
queue summary is stored with a TTL of ``NODE_TTL`` (``mxroute queue summary --fleet``).

Redis is never on the acceptance or the delivery path: the hooks only put a record on a
bounded queue (dropped when full or while Redis is away: the rejoin publishes what is in
force). Redis unreachable: one warning, the node goes on alone, retrying every ``RETRY``
seconds; back: one line, and both ways resynchronised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mxroute.relay.courier.health import Event
from mxroute.relay.courier.hosts import Endpoint, Hosts, Unreachable
from mxroute.relay.fleet.records import (
    CHANNEL,
    HEARTBEAT,
    HOLD_PATTERN,
    HOST_PATTERN,
    LONGEST,
    NODE_PATTERN,
    NODE_TTL,
    Lift,
    News,
    NodeSummary,
    SharedHold,
    SharedHost,
    decode,
    encode,
    node_key,
    ttl_ms,
)
from mxroute.relay.queue.operator import Operator
from mxroute.relay.queue.suspensions import Suspension
from mxroute.text import safe_text

log = logging.getLogger(__name__)

RETRY = 2.0  # seconds between attempts to reach an unreachable Redis
RESYNC = 30.0  # seconds between full reads of what the fleet holds (a missed message's bound)
OUTBOX = 1000  # records waiting to be published at most; more are dropped (the rejoin resends)
SCAN_LIMIT = 20000  # keys read at most by one resynchronisation
_KINDS = {"suspended": "suspension", "dead": "suspension", "throttled": "throttle"}


class FleetState:
    """This node's part in the fleet's shared state (see the module docstring)."""

    def __init__(self, redis: Redis, node: str, host: str, spool: str, hosts: Hosts,
                 operator: Operator, sizes: Callable[[], dict[str, int]]) -> None:
        self.redis, self.node, self.host, self.spool = redis, node, host, spool
        self.hosts, self.operator, self.sizes = hosts, operator, sizes
        self.stats = {"published": 0, "adopted": 0, "dropped": 0, "unreachable": 0}
        self.up = False
        self._outbox: asyncio.Queue[News] = asyncio.Queue(OUTBOX)
        self._task: asyncio.Task[None] | None = None

    def attach(self, sites: Any) -> None:
        """Hook into the courier's ``Sites``, ``hosts`` and the operator: what they learn is
        published."""
        sites.on_event = self.site_event
        self.hosts.on_failed = self.host_failed
        self.operator.on_suspend = self.suspended
        self.operator.on_resume = self.resumed

    # --- what this node learns (called by the courier and the operator: never waits) ---------

    def _post(self, item: News) -> None:
        if not self.up:
            return
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.stats["dropped"] += 1

    def site_event(self, event: Event) -> None:
        kind = _KINDS.get(event.kind)
        if kind is None:
            return
        now = self.hosts.clock()
        held = self.hosts.sites.held(event.site, kind, now)
        if held is not None:
            self._post(SharedHold(event.site, kind, held.reason, held.until - now, self.node,
                                  held.rate, held.cause))

    def host_failed(self, key: Endpoint, record: Unreachable) -> None:
        self._post(SharedHost(key.address, key.port, record.status, record.reply,
                              record.until - self.hosts.clock(), self.node, record.name))

    def suspended(self, made: list[Suspension]) -> None:
        now = time.time()
        for entry in made:
            left = LONGEST if entry.until is None else entry.until - now
            if left > 0:
                self._post(SharedHold(entry.domain, "operator", entry.reason or "", left,
                                      self.node, cause="operator"))

    def resumed(self, names: list[str]) -> None:
        for name in names:
            self._post(Lift(name, "operator", self.node))

    # --- what the others learn ---------------------------------------------------------------

    async def apply(self, item: News) -> bool:
        """Apply another node's record here; True when it was new (logged once)."""
        if item.node == self.node:
            return False
        where = f"learnt from node {safe_text(item.node, 200)}"
        if isinstance(item, SharedHost):
            new = self.hosts.learn(item.address, item.port, item.status, item.reply, item.ttl,
                                   item.label)
            if new:
                log.warning("%s: unreachable (%s), %s: skipped for %.0fs",
                            safe_text(item.label or f"{item.address}:{item.port}", 300),
                            safe_text(item.reply, 300), where, item.ttl)
        elif isinstance(item, Lift):
            lifted = await self.operator.resume([item.name], None, tell=False)
            new = bool(lifted)
            if new:
                log.warning("%s: suspension lifted, %s", safe_text(item.name, 300), where)
        elif item.kind == "operator":
            now = time.time()
            reason = f"{item.reason} ({where})" if item.reason else where
            new = self.operator.suspensions.adopt(item.name, reason, now, now + item.ttl)
            if new:
                log.warning("%s: suspended for %.0fs (mxroute queue suspend), %s",
                            safe_text(item.name, 300), item.ttl, where)
        else:
            now = self.hosts.clock()
            event = self.hosts.sites.adopt(item.name, item.kind, f"{item.reason} ({where})", now,
                                           now + item.ttl, item.rate, item.cause)
            new = event is not None
            if event is not None:
                log.warning("site %s: %s", safe_text(event.site, 300), safe_text(event.text, 500))
        if new:
            self.stats["adopted"] += 1
        return new

    # --- the connection ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="fleet-state")

    async def stop(self) -> None:
        """Stop sharing; this node's summary is removed (it drops out of the view at once)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.up:
            try:
                await asyncio.wait_for(self.redis.delete(node_key(self.node)), 1.0)
            except (RedisError, OSError, TimeoutError):
                pass
        try:
            await self.redis.aclose()
        except (RedisError, OSError):
            pass

    async def run(self) -> None:
        """Share while Redis answers; else wait for it, warning once per outage."""
        warned = False
        while True:
            try:
                await self.redis.ping()
                self.up = True
                if warned:
                    log.warning("shared_state: reachable again: suspensions, host health and "
                                "the queue view are shared again")
                    warned = False
                await self._session()
            except (RedisError, OSError, TimeoutError) as exc:
                self.up = False
                if not warned:
                    self.stats["unreachable"] += 1
                    log.warning("shared_state: Redis unreachable (%s): suspensions and host "
                                "health stay on this node until it returns", exc)
                    warned = True
                while not self._outbox.empty():
                    self._outbox.get_nowait()
                try:  # no connection of before the outage is used again
                    await self.redis.connection_pool.disconnect()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(RETRY)

    async def _session(self) -> None:
        """One connected spell: subscribe, resynchronise both ways, then publish, listen,
        heartbeat until an error ends it."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            self._republish()
            await self.resync()
            tasks = [asyncio.create_task(coro) for coro in
                     (self._writer(), self._listen(pubsub), self._heartbeat())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError):
                pass

    def _republish(self) -> None:
        """What this node holds now, posted again (a (re)join: Redis may have lost it)."""
        now = self.hosts.clock()
        for name, site in list(self.hosts.sites.sites.items()):
            for kind in ("suspension", "throttle"):
                held = getattr(site, kind)
                if held is not None and held.until > now and "learnt from node" not in \
                        held.reason:
                    self._post(SharedHold(name, kind, held.reason, held.until - now, self.node,
                                          held.rate, held.cause))
        for key, record in self.hosts.skipping(shared=False):
            self.host_failed(key, record)
        self.suspended(list(self.operator.suspensions.entries.values()))

    async def resync(self) -> int:
        """Read every hold and host the fleet has in force and apply the others'; how many
        were new here."""
        new = 0
        read = 0
        for pattern in (HOLD_PATTERN, HOST_PATTERN):
            async for key in self.redis.scan_iter(match=pattern, count=500):
                read += 1
                if read > SCAN_LIMIT:
                    return new
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(key)
                pipe.pttl(key)
                text, left = await pipe.execute()
                if text is None or left is None or left <= 0:
                    continue
                try:
                    item = decode(text, left / 1000)
                except ValueError:
                    continue
                new += await self.apply(item)
        return new

    async def _writer(self) -> None:
        while True:
            item = await self._outbox.get()
            pipe = self.redis.pipeline(transaction=False)
            if isinstance(item, Lift):
                pipe.delete(item.key)
            else:
                pipe.set(item.key, encode(item), px=ttl_ms(item.ttl))
            pipe.publish(CHANNEL, encode(item))
            await pipe.execute()
            self.stats["published"] += 1

    async def _listen(self, pubsub: Any) -> None:
        last = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "message":
                try:
                    item = decode(message["data"])
                except ValueError as exc:
                    log.debug("shared_state: a record not understood: %s", exc)
                else:
                    await self.apply(item)
            if time.monotonic() - last >= RESYNC:
                last = time.monotonic()
                await self.resync()

    async def _heartbeat(self) -> None:
        while True:
            summary = NodeSummary(self.node, self.host, self.spool, os.getpid(), time.time(),
                                  self.sizes())
            await self.redis.set(node_key(self.node), json.dumps(summary.to_json()),
                                 px=int(NODE_TTL * 1000))
            await asyncio.sleep(HEARTBEAT)


async def fleet_nodes(redis: Redis, limit: int = 10000) -> list[NodeSummary]:
    """Every live node's queue summary (``queue summary --fleet``)."""
    found: list[NodeSummary] = []
    async for key in redis.scan_iter(match=NODE_PATTERN, count=500):
        text = await redis.get(key)
        if text is None:
            continue
        try:
            found.append(NodeSummary.from_json(text))
        except ValueError:
            continue
        if len(found) >= limit:
            break
    return found


__all__ = ["OUTBOX", "RESYNC", "RETRY", "FleetState", "fleet_nodes"]
