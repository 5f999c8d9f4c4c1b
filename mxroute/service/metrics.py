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
from collections import Counter
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from mxroute.address import parse_hostport
from mxroute.errors import EX_OSERR, MxrouteError
from mxroute.identity.dkim.sign import SigningStats
from mxroute.service.attempts import ATTEMPT_BUCKETS

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds a scraper has to send its request
MAX_REQUEST = 8192  # bytes of request head accepted


class SigningNumbers(Protocol):
    """The intake's DKIM signer: what it signed per domain and selector, its failures."""

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


class DeliveryNumbers(Protocol):
    """What the delivery side shows: its counters and sizes (``Delivery.snapshot()``'s shape)."""

    async def snapshot(self) -> dict[str, Any]: ...


@dataclass
class Sources:
    """The running parts whose numbers are exported (read at scrape time)."""

    intake: IntakeNumbers
    delivery: DeliveryNumbers


class _Collector:
    """Turns the parts' own counters into metric families when scraped."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.snapshot: dict[str, Any] = {}  # the delivery side's, fetched before each render

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield from self._messages()
        yield from self._outbound()
        yield from self._dns()
        yield from self._dkim()
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
        yield GaugeMetricFamily("mxroute_smtp_connections",
                                "Open SMTP client connections to the intake",
                                value=len(intake.sessions))

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
