"""PURE: the Prometheus rule file (deploy/prometheus/mxroute-rules.yml), from code (issue 20).

``rule_groups(Tuning())`` is what ships; a test builds the same rules with a small ``Tuning``
(thresholds, windows, ``for:`` durations) so that a real Prometheus fires them within seconds.
``to_yaml`` writes them in the rule file's YAML (strings single-quoted: PromQL's double quotes
stay readable). Every alert has a severity, a summary and a description naming what to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOB = "mxroute"  # the scrape job's name the rules expect (docs/observability.md)


@dataclass(frozen=True)
class Tuning:
    """The thresholds, windows and ``for:`` durations of the rules (the shipped defaults)."""

    queue_messages: int = 1000  # waiting messages (held aside) before "growing" means trouble
    queue_window: str = "30m"  # the growth is measured over this window
    oldest_age: int = 3600  # seconds: the oldest waiting message is this old
    rate_window: str = "5m"  # the recording rules' rate() window
    event_window: str = "15m"  # increase() window of rare events (restarts, refusals, TLS)
    site_min_rate: float = 0.05  # recipients/s to a site before its failure ratio counts
    site_defer_ratio: float = 0.5  # deferred share of a site's recipients
    site_bounce_ratio: float = 0.2  # bounced share of a site's recipients
    throttle_rate: float = 1.0  # waits/s for a throttled site's turn, sustained
    hold: str | None = None  # every alert's ``for:`` (None: each alert's own)

    def hold_for(self, default: str) -> str:
        return self.hold if self.hold is not None else default


def recording_rules(t: Tuning) -> list[dict[str, Any]]:
    """The queries the alerts and the dashboard share."""
    w = t.rate_window
    return [
        {"record": "mxroute:recipients:rate",
         "expr": f"sum by (instance, outcome) (rate(mxroute_recipients_total[{w}]))"},
        {"record": "mxroute:site_recipients:rate",
         "expr": f"sum by (instance, site, outcome) (rate(mxroute_site_recipients_total[{w}]))"},
        {"record": "mxroute:site_recipients:rate_all",
         "expr": "sum by (instance, site) (mxroute:site_recipients:rate)"},
        {"record": "mxroute:queue_waiting",
         "expr": 'sum by (instance) (mxroute_queue_messages{state!="held"})'},
        {"record": "mxroute:delivery_attempt_seconds:p95",
         "expr": "histogram_quantile(0.95, sum by (instance, le) "
                 f"(rate(mxroute_delivery_attempt_seconds_bucket[{w}])))"},
        {"record": "mxroute:dns_cache_hit_ratio:rate",
         "expr": f"sum by (instance) (rate(mxroute_dns_cache_hits_total[{w}])) / "
                 f"(sum by (instance) (rate(mxroute_dns_cache_hits_total[{w}])) + "
                 f"sum by (instance) (rate(mxroute_dns_queries_total[{w}])) + "
                 f"sum by (instance) (rate(mxroute_dns_coalesced_total[{w}])))"},
    ]


def _alert(name: str, expr: str, hold: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": hold, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description}}


def _site_failures(t: Tuning, outcome: str, ratio: float) -> str:
    return (f'(mxroute:site_recipients:rate{{outcome="{outcome}"}} > {t.site_min_rate:g}) '
            f"and on (instance, site) "
            f'(mxroute:site_recipients:rate{{outcome="{outcome}"}} '
            f"/ on (instance, site) mxroute:site_recipients:rate_all > {ratio:g})")


def alert_rules(t: Tuning) -> list[dict[str, Any]]:
    """What wakes an operator, each with what to look at."""
    return _service_alerts(t) + _site_alerts(t) + _event_alerts(t)


def _service_alerts(t: Tuning) -> list[dict[str, Any]]:
    up = f'up{{job="{JOB}"}}'
    return [
        _alert("MxrouteDown", f"{up} == 0", t.hold_for("2m"), "critical",
               "mxroute on {{ $labels.instance }} is not answering scrapes",
               "Prometheus cannot scrape the relay's metrics_listen. Is it running? "
               "Run `systemctl status mxroute` and `journalctl -u mxroute`."),
        _alert("MxrouteAbsent", f"absent({up})", t.hold_for("10m"), "critical",
               f'No mxroute target is scraped (job="{JOB}")',
               "Prometheus has no target for the relay: check its scrape_configs "
               "(docs/observability.md), and run `mxroute check-config` on the relay "
               "(metrics_listen must be set)."),
        _alert("MxrouteQueueGrowing",
               f"mxroute:queue_waiting > {t.queue_messages} "
               f"and delta(mxroute:queue_waiting[{t.queue_window}]) > 0",
               t.hold_for("15m"), "warning",
               "The queue on {{ $labels.instance }} holds {{ $value }} messages and grows",
               "More mail arrives than leaves. Run `mxroute queue summary` (which domains) and "
               "`mxroute queue hosts` (which hosts fail), then `mxroute explain` on one."),
        _alert("MxrouteOldestMessageAgeing",
               f"mxroute_queue_oldest_message_age_seconds > {t.oldest_age}",
               t.hold_for("5m"), "warning",
               "The oldest queued message on {{ $labels.instance }} is "
               "{{ $value | humanizeDuration }} old",
               "A message has waited past the threshold. Run `mxroute queue summary` and "
               "`mxroute queue list` (oldest first), then `mxroute queue show ID`."),
    ]


def _site_alerts(t: Tuning) -> list[dict[str, Any]]:
    return [
        _alert("MxrouteSiteDeferring", _site_failures(t, "deferred", t.site_defer_ratio),
               t.hold_for("15m"), "warning",
               "Site {{ $labels.site }} defers most deliveries from {{ $labels.instance }}",
               "Temporary failures to this destination site are rising. Run "
               "`mxroute queue summary --by site` and `mxroute queue hosts`; the log's "
               "`status=deferred` lines carry the remote reply."),
        _alert("MxrouteSiteBouncing", _site_failures(t, "bounced", t.site_bounce_ratio),
               t.hold_for("15m"), "warning",
               "Site {{ $labels.site }} refuses many recipients from {{ $labels.instance }}",
               "Permanent failures to this destination site are rising (blocklisting, policy). "
               "Read the log's `status=bounced` lines (`dsn=`, the reply), run "
               "`mxroute explain` for one recipient and `mxroute queue hosts`."),
        _alert("MxrouteSiteSuspended",
               f"increase(mxroute_site_suspensions_total[{t.event_window}]) > 0",
               t.hold_for("0s"), "warning",
               "Delivery to site {{ $labels.site }} was suspended on {{ $labels.instance }}",
               "A reply pattern or dead-site detection suspended the site: its mail waits. "
               "Run `mxroute queue hosts` (why, until when) and `mxroute queue summary --by "
               "site`."),
        _alert("MxrouteSiteThrottled",
               f"rate(mxroute_site_throttled_waits_total[{t.rate_window}]) > {t.throttle_rate:g}",
               t.hold_for("30m"), "info",
               "Deliveries to site {{ $labels.site }} keep waiting for their turn",
               "The site's traffic shaping (shaping in mxroute.toml) holds deliveries back "
               "for long: run `mxroute queue summary --by site`; raise the limits if the site "
               "allows it."),
    ]


def _event_alerts(t: Tuning) -> list[dict[str, Any]]:
    e = t.event_window
    return [
        _alert("MxrouteTlsDowngrades",
               f'increase(mxroute_outbound_sessions_total{{event="tls_fallbacks"}}[{e}]) > 0',
               t.hold_for("0s"), "warning",
               "mxroute on {{ $labels.instance }} sent mail in plain text after STARTTLS failed",
               "Opportunistic TLS fell back to cleartext. Find `tls=none` in the log and run "
               "`mxroute explain --probe` for the destination; require TLS in routes if needed."),
        _alert("MxrouteTlsPolicyRefusals",
               "increase(mxroute_outbound_sessions_total"
               f'{{event=~"dane_failures|policy_skips"}}[{e}]) > 0',
               t.hold_for("0s"), "warning",
               "MTA-STS or DANE refused hosts ({{ $labels.event }}) on {{ $labels.instance }}",
               "A host failed its destination's MTA-STS policy or TLSA records: the mail waits. "
               "Run `mxroute explain --probe` for the domain and `mxroute queue hosts`."),
        _alert("MxrouteDkimSigningFailures",
               f"increase(mxroute_dkim_signing_failures_total[{e}]) > 0", t.hold_for("0s"),
               "critical",
               "mxroute on {{ $labels.instance }} could not DKIM-sign messages",
               "Signing failed and the messages were refused with 451 4.3.0. Run "
               "`mxroute dkim check` (keys, their published records) and `mxroute "
               "check-config`."),
        _alert("MxrouteDkimKeyUnpublished", "mxroute_dkim_key_published == 0",
               t.hold_for("30m"), "warning",
               "DKIM key {{ $labels.selector }}._domainkey.{{ $labels.domain }} is not published",
               "DNS does not have this signing key's record (missing, revoked, another key): "
               "receivers fail its signatures. Run `mxroute dkim check` and publish the record "
               "it prints."),
        _alert("MxrouteDeliveryProcessRestarting",
               f"increase(mxroute_delivery_process_restarts_total[{e}]) > 0", t.hold_for("0s"),
               "critical",
               "The delivery process of {{ $labels.instance }} restarted",
               "The delivery process exited unexpectedly and was restarted (5 in a minute stop "
               "the service). Read `journalctl -u mxroute` for its last words; run "
               "`mxroute queue summary`."),
        _alert("MxrouteIntakeDiskFull",
               f"increase(mxroute_intake_storage_refusals_total[{e}]) > 0", t.hold_for("0s"),
               "critical",
               "mxroute on {{ $labels.instance }} refuses mail for disk space (452 4.3.1)",
               "The spool's file system is below min_free_space or full. Run `df` on spool_dir "
               "and `mxroute queue summary`; free space or raise the disk."),
        _alert("MxrouteMemoryBudgetRefusing",
               f"increase(mxroute_inflight_refusals_total[{e}]) > 0", t.hold_for("10m"),
               "warning",
               "mxroute on {{ $labels.instance }} refuses mail for memory (452 4.3.1)",
               "Messages in flight filled max_inflight_bytes: clients are told to retry (nothing "
               "is lost) but mail waits. Look at mxroute_inflight_bytes{side} and "
               "`mxroute queue summary` (a destination stalling large messages?); raise "
               "max_inflight_bytes if the machine has the memory."),
    ]


def rule_groups(t: Tuning) -> dict[str, Any]:
    """The rule file's content: one group, the recording rules first (a group's rules are
    evaluated in order: the alerts read this round's recorded values, never the last)."""
    return {"groups": [{"name": "mxroute", "rules": recording_rules(t) + alert_rules(t)}]}


def alert_names(t: Tuning | None = None) -> list[str]:
    return [rule["alert"] for rule in alert_rules(t or Tuning())]


def _scalar(value: Any) -> str:
    if isinstance(value, list | dict):
        return "[]" if isinstance(value, list) else "{}"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{key}:")
                _emit(item, indent + 2, out)
            else:
                out.append(f"{pad}{key}: {_scalar(item)}")
        return
    for item in value:
        if not isinstance(item, dict | list):
            out.append(f"{pad}- {_scalar(item)}")
            continue
        lines: list[str] = []
        _emit(item, indent + 2, lines)
        out.append(f"{pad}- {lines[0][indent + 2:]}")
        out.extend(lines[1:])


def to_yaml(content: dict[str, Any], header: str = "") -> str:
    """``content`` (dicts, lists of dicts, scalars) as block YAML."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    _emit(content, 0, out)
    return "\n".join(out) + "\n"


__all__ = ["JOB", "Tuning", "alert_names", "alert_rules", "recording_rules", "rule_groups",
           "to_yaml"]
