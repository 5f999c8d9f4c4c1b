"""The optional Prometheus endpoint (``metrics_listen``): what the relay did, read at scrape time.

Off by default. prometheus-client is imported here only, and this module only when
``metrics_listen`` is set (``pip install 'mxroute[metrics]'``); the setting is refused
at start-up when the package is missing (settings.py).

Nothing is added to the hot path: the counters are the ``stats`` the intake, the
queue manager, the courier and the resolver keep anyway, read when Prometheus
scrapes; queue sizes and open connections are computed then too. The delivery
side's numbers (queue, courier, delivery resolver, attempt durations) come from
the delivery process at scrape time (``Delivery.snapshot()``, one request over its
socket). The one per-event cost is the attempt-latency histogram, one bucket
increment per ``Courier.deliver()`` call (``attempts.TimedCourier``). The endpoint is a
small HTTP/1.0 server on the relay's own event loop (no thread reads the loop's data), serving
``GET /metrics`` in the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from mxroute.address import parse_hostport
from mxroute.dns.resolver import Lookups
from mxroute.errors import EX_OSERR, MxrouteError
from mxroute.identity.dkim.check import check_key
from mxroute.identity.dkim.sign import SigningKey, SigningStats
from mxroute.relay.budget import Budget
from mxroute.service.attempts import ATTEMPT_BUCKETS

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds a scraper has to send its request
MAX_REQUEST = 8192  # bytes of request head accepted
KEY_CHECK_INTERVAL = 600.0  # seconds between DNS checks of the DKIM keys' records (issue 20)


class SigningNumbers(Protocol):
    """The intake's DKIM signer: its keys, what it signed per domain and selector, its
    failures."""

    @property
    def keys(self) -> tuple[SigningKey, ...]: ...

    @property
    def stats(self) -> SigningStats: ...


class IntakeNumbers(Protocol):
    """What the intake shows: its counters (``accepted``, ``rejected``), open sessions, and its
    DKIM signing."""

    @property
    def stats(self) -> Mapping[str, int]: ...

    @property
    def sessions(self) -> Sized: ...

    @property
    def dkim(self) -> SigningNumbers: ...

    @property
    def budget(self) -> Budget: ...


class DeliveryNumbers(Protocol):
    """What the delivery side shows: its counters and sizes (``Delivery.snapshot()``'s shape),
    and how often its process was restarted."""

    @property
    def restarts(self) -> int: ...

    async def snapshot(self) -> dict[str, Any]: ...


@dataclass
class Sources:
    """The running parts whose numbers are exported (read at scrape time), and the resolver
    that checks the DKIM keys' records."""

    intake: IntakeNumbers
    delivery: DeliveryNumbers
    resolver: Lookups | None = None


class PublishedKeys:
    """Is each configured DKIM key published as configured (``mxroute dkim check``'s check)?

    Checked in the background when scraped, at most every ``KEY_CHECK_INTERVAL`` seconds (a
    scrape shows the last verdicts); a temporary DNS failure keeps a key's last verdict; a key
    found unpublished is logged once until it is published. Catch-all keys (``domain = "*"``)
    have no record of their own and are not checked.
    """

    def __init__(self, resolver: Lookups, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver, self.clock = resolver, clock
        self.published: dict[tuple[str, str], bool] = {}
        self._checked = -KEY_CHECK_INTERVAL
        self._task: asyncio.Task[None] | None = None

    def refresh(self, keys: tuple[SigningKey, ...]) -> None:
        if (self._task is not None and not self._task.done()) or \
                self.clock() - self._checked < KEY_CHECK_INTERVAL:
            return
        self._checked = self.clock()
        self._task = asyncio.get_running_loop().create_task(self._check(keys), name="dkim-keys")

    async def _check(self, keys: tuple[SigningKey, ...]) -> None:
        configured = {(k.config.domain, k.config.selector): k for k in keys
                      if k.config.domain != "*"}
        for name in set(self.published) - set(configured):
            del self.published[name]
        for (domain, selector), key in configured.items():
            try:
                found = await check_key(self.resolver, domain, selector, key.private)
            except Exception as exc:  # noqa: BLE001 - advice for the metrics: never fatal
                log.error("dkim: checking %s._domainkey.%s failed: %r", selector, domain, exc)
                continue
            if found.status == "temporary-failure":
                continue
            ok = found.status == "ok"
            if not ok and self.published.get((domain, selector)) is not False:
                log.warning("dkim: key %s is not published as configured: %s (%s); run "
                            "mxroute dkim check", found.dns_name, found.status, found.detail)
            self.published[(domain, selector)] = ok


class _Collector:
    """Turns the parts' own counters into metric families when scraped."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.snapshot: dict[str, Any] = {}  # the delivery side's, fetched before each render
        self.keys = PublishedKeys(sources.resolver) if sources.resolver is not None else None

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield from self._messages()
        yield from self._outbound()
        yield from self._dns()
        yield from self._dkim()
        yield from self._memory()
        yield from self._fleet()
        yield self._attempts()

    def _messages(self) -> Iterator[Metric]:
        intake, d = self.sources.intake, self.snapshot
        stats = d.get("stats", {})
        yield CounterMetricFamily("mxroute_messages_accepted",
                                  "Messages accepted over SMTP (250 after DATA, fsync'd)",
                                  value=intake.stats.get("accepted", 0))
        yield CounterMetricFamily("mxroute_messages_rejected",
                                  "RCPT or DATA refused by policy or content checks",
                                  value=intake.stats.get("rejected", 0))
        yield CounterMetricFamily("mxroute_intake_storage_refusals",
                                  "MAIL or DATA refused with 452 4.3.1: the spool's disk is "
                                  "below min_free_space or full (DUR-4)",
                                  value=intake.stats.get("storage_refusals", 0))
        outcomes = CounterMetricFamily("mxroute_recipients",
                                       "Recipient delivery outcomes: delivered; deferred "
                                       "(a temporary failure, retried later); "
                                       "bounced (failed for good or expired)",
                                       labels=["outcome"])
        for outcome in ("delivered", "deferred", "bounced"):
            outcomes.add_metric([outcome], stats.get(outcome, 0))
        yield outcomes
        yield CounterMetricFamily("mxroute_dsn_generated",
                                  "Delivery status notifications queued for senders (RFC 3464)",
                                  value=stats.get("dsn", 0))
        yield CounterMetricFamily("mxroute_double_bounces",
                                  "Recipients of null-sender mail (bounces) that failed for good: "
                                  "logged, copied to postmaster_address when set",
                                  value=stats.get("double_bounces", 0))
        sizes = GaugeMetricFamily("mxroute_queue_messages",
                                  "Messages in the queue: active (being delivered), "
                                  "due (waiting for a delivery slot), "
                                  "deferred (waiting for their retry time), "
                                  "held (mxroute queue hold)",
                                  labels=["state"])
        for state in ("active", "due", "deferred", "held"):
            sizes.add_metric([state], d.get("sizes", {}).get(state, 0))
        yield sizes
        oldest = d.get("oldest")
        yield GaugeMetricFamily("mxroute_queue_oldest_message_age_seconds",
                                "Age of the oldest message waiting for delivery (held ones "
                                "aside); 0 when none waits",
                                value=max(0.0, time.time() - oldest) if oldest else 0.0)
        yield CounterMetricFamily("mxroute_delivery_process_restarts",
                                  "Delivery processes restarted after an unexpected exit",
                                  value=self.sources.delivery.restarts)
        yield GaugeMetricFamily("mxroute_smtp_connections",
                                "Open SMTP client connections to the intake",
                                value=len(intake.sessions))

    def _memory(self) -> Iterator[Metric]:
        """Issue 22: mail held in memory against max_inflight_bytes, and the 452s it caused."""
        budget, memory = self.sources.intake.budget, self.snapshot.get("memory", {})
        inflight = GaugeMetricFamily("mxroute_inflight_bytes",
                                     "Bytes of mail held in memory: intake (DATA being received, "
                                     "messages kept for their first attempt), delivery "
                                     "(messages loaded for attempts)", labels=["side"])
        inflight.add_metric(["intake"], budget.used)
        inflight.add_metric(["delivery"], memory.get("used", 0))
        yield inflight
        limit = GaugeMetricFamily("mxroute_inflight_limit_bytes",
                                  "Each side's share of max_inflight_bytes", labels=["side"])
        limit.add_metric(["intake"], budget.limit)
        limit.add_metric(["delivery"], memory.get("limit", 0))
        yield limit
        yield CounterMetricFamily("mxroute_inflight_refusals",
                                  "MAIL or DATA refused with 452 4.3.1: the in-flight budget "
                                  "was full (the client retries)", value=budget.refused)

    def _outbound(self) -> Iterator[Metric]:
        courier_stats, sts = self.snapshot.get("courier", {}), self.snapshot.get("mta_sts", {})
        courier = CounterMetricFamily("mxroute_outbound_sessions",
                                      "Outbound SMTP: connections made, sessions "
                                      "greeted, reused, with TLS, cleartext fallbacks after a "
                                      "failed STARTTLS, certificates that matched (dane) or failed "
                                      "(dane_failures) TLSA records, hosts skipped unconnected by "
                                      "MTA-STS enforce or a failed TLSA lookup (policy_skips)",
                                      labels=["event"])
        for event in ("connections", "sessions", "reused", "tls", "tls_fallbacks", "dane",
                      "dane_failures", "policy_skips", "throttled_waits"):
            courier.add_metric([event], courier_stats.get(event, 0))
        yield courier
        yield from self._sites()
        yield CounterMetricFamily("mxroute_mta_sts_fetches",
                                  "MTA-STS policy fetches over HTTPS (RFC 8461 §3.3)",
                                  value=sts.get("fetches", 0))
        yield CounterMetricFamily("mxroute_mta_sts_fetch_failures",
                                  "MTA-STS policy fetches that failed",
                                  value=sts.get("fetch_failures", 0))
        yield GaugeMetricFamily("mxroute_mta_sts_policies",
                                "MTA-STS policies held (memory and spool_dir/mta-sts.json)",
                                value=sts.get("policies", 0))

    def _sites(self) -> Iterator[Metric]:
        """Per destination site (issue 18 §2): the busiest sites by name, the rest as
        ``site="other"`` (bounded label cardinality)."""
        sites = self.snapshot.get("sites", {})
        families = (
            (GaugeMetricFamily, "mxroute_site_connections",
             "Deliveries connected or connecting to a destination site now", "connections"),
            (CounterMetricFamily, "mxroute_site_throttled_waits",
             "Deliveries that waited for a throttled site's turn", "throttled_waits"),
            (CounterMetricFamily, "mxroute_site_suspensions",
             "Suspensions of a site by a reply pattern or dead-site detection", "suspensions"),
        )
        for kind, name, text, key in families:
            family = kind(name, text, labels=["site"])
            for site, numbers in sites.items():
                family.add_metric([site], numbers.get(key, 0))
            yield family
        outcomes = CounterMetricFamily("mxroute_site_recipients",
                                       "Recipient outcomes of delivery attempts per destination "
                                       "site: delivered, deferred, bounced",
                                       labels=["site", "outcome"])
        for site, numbers in sites.items():
            for outcome in ("delivered", "deferred", "bounced"):
                outcomes.add_metric([site, outcome], numbers.get(outcome, 0))
        yield outcomes

    def _dns(self) -> Iterator[Metric]:
        dns = self.snapshot.get("dns", {})
        queries, hits = dns.get("queries", 0), dns.get("hits", 0)
        coalesced = dns.get("coalesced", 0)
        yield CounterMetricFamily("mxroute_dns_queries", "DNS questions sent to a server",
                                  value=queries)
        yield CounterMetricFamily("mxroute_dns_cache_hits", "DNS lookups answered from the cache",
                                  value=hits)
        yield CounterMetricFamily("mxroute_dns_coalesced",
                                  "DNS lookups that joined an identical question in flight",
                                  value=coalesced)
        lookups = queries + hits + coalesced
        yield GaugeMetricFamily("mxroute_dns_cache_hit_ratio",
                                "Cache hits / all DNS lookups since start (0 before any)",
                                value=hits / lookups if lookups else 0.0)

    def _fleet(self) -> Iterator[Metric]:
        """Limits shared through ``shared_state`` (issue 19); nothing when it is unset."""
        fleet = self.snapshot.get("fleet")
        if not fleet:
            return
        yield GaugeMetricFamily("mxroute_shared_state_up",
                                "1 while limits are shared through shared_state, 0 while this "
                                "node counts alone (Redis unreachable)", value=fleet["shared"])
        yield CounterMetricFamily("mxroute_shared_state_fallbacks",
                                  "Times Redis became unreachable and this node fell back to "
                                  "local limits", value=fleet["fallbacks"])
        trips = CounterMetricFamily("mxroute_shared_state_round_trips",
                                    "Calls to Redis: lease (take, wait, give back a connection "
                                    "slot), rate (one GCRA a message), renewal (leases and "
                                    "heartbeat)", labels=["kind"])
        for kind, key in (("lease", "lease_ops"), ("rate", "rate_ops"), ("renewal", "renewals")):
            trips.add_metric([kind], fleet[key])
        yield trips
        yield GaugeMetricFamily("mxroute_fleet_nodes", "Live nodes sharing the limits, as last "
                                "counted (local limits are the shared ones divided by it)",
                                value=fleet["nodes"])

    def _dkim(self) -> Iterator[Metric]:
        """Signatures made at intake and on the delivery side's own notices (DSNs)."""
        mine = self.sources.intake.dkim.stats
        theirs = self.snapshot.get("dkim", {})
        signed = Counter(mine.signed)
        for domain, selector, count in theirs.get("signed", []):
            signed[(domain, selector)] += count
        family = CounterMetricFamily("mxroute_dkim_signatures",
                                     "DKIM signatures made, by d= domain and selector (relayed "
                                     "mail at intake, and mxroute's own DSNs)",
                                     labels=["domain", "selector"])
        for (domain, selector), count in sorted(signed.items()):
            family.add_metric([domain, selector], count)
        yield family
        yield CounterMetricFamily("mxroute_dkim_signing_failures",
                                  "DKIM signatures that could not be made (the message was "
                                  "deferred with 451 4.3.0)",
                                  value=mine.failures + theirs.get("failures", 0))
        published = GaugeMetricFamily("mxroute_dkim_key_published",
                                      "1: the DKIM key's record in DNS is this key; 0: missing, "
                                      "revoked, invalid or another key (mxroute dkim check)",
                                      labels=["domain", "selector"])
        if self.keys is not None:
            self.keys.refresh(self.sources.intake.dkim.keys)
            for (domain, selector), ok in sorted(self.keys.published.items()):
                published.add_metric([domain, selector], 1 if ok else 0)
        yield published

    def _attempts(self) -> Metric:
        empty: dict[str, Any] = {"counts": [0] * (len(ATTEMPT_BUCKETS) + 1), "sum": 0.0}
        attempts = self.snapshot.get("attempts") or empty
        cumulative, buckets = 0, []
        for bound, count in zip((*ATTEMPT_BUCKETS, float("inf")), attempts["counts"],
                                strict=False):
            cumulative += count
            # prometheus_client leaves floatToGoString unannotated
            label = ("+Inf" if bound == float("inf")
                     else floatToGoString(bound))  # type: ignore[no-untyped-call, unused-ignore]
            buckets.append((label, cumulative))
        return HistogramMetricFamily("mxroute_delivery_attempt_seconds",
                                     "Duration of one delivery attempt to one destination domain "
                                     "(SMTP)",
                                     buckets=buckets, sum_value=attempts["sum"])


class Metrics:
    """The registry and its HTTP endpoint."""

    def __init__(self, sources: Sources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.sources = sources
        self._collector = _Collector(sources)
        self._server: asyncio.base_events.Server | None = None

    async def render(self) -> bytes:
        self._collector.snapshot = await self.sources.delivery.snapshot()
        return generate_latest(self.registry)

    async def start(self, listen: str) -> None:
        """Listen on ``host:port``; MxrouteError (EX_OSERR) when the address cannot be bound."""
        self.registry.register(self._collector)
        # process_*: this (the intake) process's memory, CPU and files, read from /proc at scrape
        ProcessCollector(registry=self.registry)
        host, port = parse_hostport(listen, 9125)
        host = host.strip("[]")
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True,
                                                      limit=MAX_REQUEST)
        except OSError as exc:
            error = MxrouteError(f"cannot listen for metrics on {listen}: {exc.strerror}", code=421)
            error.exit_code = EX_OSERR
            raise error from None
        log.info("metrics on http://%s/metrics", listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except TimeoutError:
                pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            words = head.split(b"\r\n", 1)[0].split()
            method = words[0] if words else b""
            path = words[1].split(b"?", 1)[0] if len(words) > 1 else b""
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
            elif path in (b"/metrics", b"/"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, await self.render()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"GET /metrics\n"
            reply = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
            writer.write(reply)
            if method != b"HEAD":
                writer.write(body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, OSError):
            pass
        finally:
            writer.close()


__all__ = ["Metrics", "Sources"]
