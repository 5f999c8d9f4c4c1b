"""PURE: the Grafana dashboard (deploy/grafana/mxroute.json), from code (issue 20).

Plain dicts in Grafana's dashboard JSON model rather than grafanalib: no dependency whose
defaults would change the checked-in file with its version, and every field is in view here.
Each panel's queries use the ``$instance`` and ``$site`` variables and Grafana's
``$__rate_interval``; ``queries()`` lists them all (the tests run each against a real
Prometheus). Metric names: docs/observability.md, the stable interface.
"""

from __future__ import annotations

import json
from typing import Any

UID = "mxroute-relay"
DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'
RI = "$__rate_interval"


def _target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def _panel(title: str, kind: str, unit: str, queries: list[tuple[str, str]],
           description: str, *, stack: bool = False) -> dict[str, Any]:
    """A panel; a heatmap's queries give buckets (``format: heatmap``), ``stack`` stacks the
    series of a time series."""
    shape = {"format": "heatmap"} if kind == "heatmap" else {}
    targets = [_target(expr, legend, chr(ord("A") + n), **shape) for n, (expr, legend) in
               enumerate(queries)]
    defaults: dict[str, Any] = {"unit": unit}
    if stack:
        defaults["custom"] = {"stacking": {"mode": "normal", "group": "A"}}
    return {"title": title, "type": kind, "datasource": DS, "description": description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {}, "targets": targets}


RATE = f"[{RI}]"


def _rows() -> list[tuple[str, list[dict[str, Any]]]]:
    return [_flow(), _sites(), *_tls_dns(), _process()]


def _flow() -> tuple[str, list[dict[str, Any]]]:
    rate = RATE
    return ("Mail flow", [
            _panel("Messages accepted and rejected", "timeseries", "ops", [
                (f"sum(rate(mxroute_messages_accepted_total{{{I}}}{rate}))", "accepted"),
                (f"sum(rate(mxroute_messages_rejected_total{{{I}}}{rate}))", "rejected"),
                (f"sum(rate(mxroute_intake_storage_refusals_total{{{I}}}{rate}))",
                 "refused for disk space (452 4.3.1)"),
            ], "Intake: 250 after DATA (fsync'd), refusals by policy, refusals for disk space"),
            _panel("Recipients delivered, deferred, bounced", "timeseries", "ops", [
                (f"sum by (outcome) (rate(mxroute_recipients_total{{{I}}}{rate}))",
                 "{{outcome}}"),
                (f"sum(rate(mxroute_dsn_generated_total{{{I}}}{rate}))", "DSNs"),
            ], "Delivery outcomes per recipient; deferred ones are retried"),
            _panel("Queue size", "timeseries", "short", [
                (f"sum by (state) (mxroute_queue_messages{{{I}}})", "{{state}}"),
            ], "Messages by state: active, due, deferred, held", stack=True),
            _panel("Oldest queued message", "timeseries", "s", [
                (f"max(mxroute_queue_oldest_message_age_seconds{{{I}}})", "age"),
            ], "Age of the oldest message waiting for delivery (held ones aside)"),
        ])


def _sites() -> tuple[str, list[dict[str, Any]]]:
    rate = RATE
    return ("Destination sites ($site)", [
            _panel("Outcomes per site", "timeseries", "ops", [
                (("sum by (site, outcome) (rate(mxroute_site_recipients_total"
                 f'{{{I}, site=~"$site"}}{rate}))'), "{{site}} {{outcome}}"),
            ], "Recipients per destination site and outcome (top 10 sites by name, the "
               "rest as other)"),
            _panel("Site connections", "timeseries", "short", [
                (f'sum by (site) (mxroute_site_connections{{{I}, site=~"$site"}})', "{{site}}"),
            ], "Deliveries connected or connecting to each site now"),
            _panel("Suspensions and throttled waits", "timeseries", "short", [
                (("sum by (site) (increase(mxroute_site_suspensions_total"
                 f'{{{I}, site=~"$site"}}{rate}))'), "{{site}} suspended"),
                (("sum by (site) (increase(mxroute_site_throttled_waits_total"
                 f'{{{I}, site=~"$site"}}{rate}))'), "{{site}} throttled waits"),
            ], "A site suspended by a reply pattern or dead-site detection; waits for a "
               "throttled site's turn"),
            _panel("Delivery attempt latency", "timeseries", "s", [
                ((f"histogram_quantile({q}, sum by (le) (rate("
                 f"mxroute_delivery_attempt_seconds_bucket{{{I}}}{rate})))"), f"p{q[2:]}")
                for q in ("0.5", "0.95", "0.99")
            ], "Duration of one delivery attempt to one destination domain"),
            _panel("Delivery attempt durations", "heatmap", "s", [
                ((f"sum by (le) (increase(mxroute_delivery_attempt_seconds_bucket{{{I}}}"
                 "[$__interval]))"), "{{le}}"),
            ], "Attempts per duration bucket"),
        ])


def _tls_dns() -> list[tuple[str, list[dict[str, Any]]]]:
    rate = RATE
    return [
        ("TLS", [
            _panel("Outbound sessions and TLS", "timeseries", "ops", [
                (("sum by (event) (rate(mxroute_outbound_sessions_total"
                 f'{{{I}, event=~"sessions|tls|tls_fallbacks|dane"}}{rate}))'), "{{event}}"),
            ], "Sessions, with TLS, cleartext fallbacks after a failed STARTTLS, DANE-verified"),
            _panel("MTA-STS and DANE refusals", "timeseries", "ops", [
                (("sum by (event) (rate(mxroute_outbound_sessions_total"
                 f'{{{I}, event=~"dane_failures|policy_skips"}}{rate}))'), "{{event}}"),
                (f"sum(rate(mxroute_mta_sts_fetch_failures_total{{{I}}}{rate}))",
                 "MTA-STS fetch failures"),
            ], "Hosts refused by TLSA records or MTA-STS enforce; policy fetch failures"),
        ]),
        ("DNS", [
            _panel("DNS lookups", "timeseries", "ops", [
                (f"sum(rate(mxroute_dns_queries_total{{{I}}}{rate}))", "queries sent"),
                (f"sum(rate(mxroute_dns_cache_hits_total{{{I}}}{rate}))", "cache hits"),
                (f"sum(rate(mxroute_dns_coalesced_total{{{I}}}{rate}))", "coalesced"),
            ], "Questions sent to a server, answered from the cache, joined in flight"),
            _panel("DNS cache hit ratio", "timeseries", "percentunit", [
                (f"mxroute:dns_cache_hit_ratio:rate{{{I}}}", "{{instance}} (5m)"),
                (f"mxroute_dns_cache_hit_ratio{{{I}}}", "{{instance}} since start"),
            ], "Cache hits / all lookups (recording rule mxroute:dns_cache_hit_ratio:rate)"),
        ]),
    ]


def _process() -> tuple[str, list[dict[str, Any]]]:
    rate = RATE
    return ("Process health", [
            _panel("Scraped", "stat", "short", [
                (f'up{{job="mxroute", {I}}}', "{{instance}}"),
            ], "1: Prometheus scrapes the relay"),
            _panel("Delivery process restarts", "timeseries", "short", [
                (f"sum(increase(mxroute_delivery_process_restarts_total{{{I}}}{rate}))",
                 "restarts"),
            ], "The delivery process exited unexpectedly and was restarted"),
            _panel("SMTP clients", "timeseries", "short", [
                (f"sum(mxroute_smtp_connections{{{I}}})", "SMTP client connections"),
            ], "Open intake connections"),
            _panel("DKIM", "timeseries", "short", [
                (f"sum by (domain) (rate(mxroute_dkim_signatures_total{{{I}}}{rate}))",
                 "{{domain}} signatures/s"),
                (f"sum(rate(mxroute_dkim_signing_failures_total{{{I}}}{rate}))",
                 "signing failures/s"),
                (f"min by (domain, selector) (mxroute_dkim_key_published{{{I}}})",
                 "{{selector}}._domainkey.{{domain}} published"),
            ], "Signatures per d= domain, signing failures, keys published in DNS (1) or not "
               "(0, checked every 10 minutes)"),
            _panel("Relay process", "timeseries", "short", [
                (f'process_resident_memory_bytes{{job="mxroute", {I}}}', "resident bytes"),
                (f'rate(process_cpu_seconds_total{{job="mxroute", {I}}}{rate})', "CPU s/s"),
                (f'process_open_fds{{job="mxroute", {I}}}', "open files"),
            ], "The intake process (serve's parent): memory, CPU, open files"),
            _panel("Mail in memory", "timeseries", "bytes", [
                (f"sum by (side) (mxroute_inflight_bytes{{{I}}})", "{{side}} in flight"),
                (f"sum by (side) (mxroute_inflight_limit_bytes{{{I}}})", "{{side}} share"),
                (f"sum(increase(mxroute_inflight_refusals_total{{{I}}}{rate}))",
                 "452 refusals (budget full)"),
            ], "Bytes of mail held in memory against max_inflight_bytes's shares, and the "
               "clients told to retry when it was full"),
        ])


def _variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, expr: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "query": {"query": expr, "refId": f"{name}-variable"}, "refresh": 2,
                "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
                "current": {"text": "All", "value": "$__all"}, **extra}
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        query("instance", "Relay", 'label_values(up{job="mxroute"}, instance)'),
        query("site", "Site", 'label_values(mxroute_site_recipients_total{instance=~"$instance"}, '
                              'site)'),
    ]


def dashboard() -> dict[str, Any]:
    """The dashboard's JSON model, panels laid out two to a row of 24 columns."""
    panels: list[dict[str, Any]] = []
    y, ids = 0, iter(range(1, 1000))
    for title, row in _rows():
        panels.append({"type": "row", "title": title, "id": next(ids), "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        for n, panel in enumerate(row):
            panel["id"] = next(ids)
            panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (n % 2), "y": y + 8 * (n // 2)}
            panels.append(panel)
        y += 8 * ((len(row) + 1) // 2)
    return {
        "uid": UID, "title": "mxroute relay", "tags": ["mxroute", "smtp"],
        "description": "mxroute: mail flow, queue, destination sites, TLS, DNS, process health "
                       "(generated by python -m mxroute.monitoring; do not edit by hand)",
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "", "graphTooltip": 1,
        "templating": {"list": _variables()}, "annotations": {"list": []}, "links": [],
        "panels": panels,
    }


def queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (panel title, expression) of ``model``."""
    return [(panel["title"], target["expr"]) for panel in model["panels"]
            for target in panel.get("targets", [])]


def to_json(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


__all__ = ["UID", "dashboard", "queries", "to_json"]
