"""PURE: the rules' own unit tests for ``promtool test rules`` (issue 20), shipped beside the
rule file (deploy/prometheus/mxroute-rules.test.yml) so that an operator who changes a threshold
can run them too.

Every alert has a ``Case`` that fires it and one that does not: input series (one sample a
minute), when to look, and the alerts expected then, with the summary as Grafana and Alertmanager
would show it (written out here by hand: the templates are tested, not copied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mxroute.monitoring.rules import Tuning, alert_rules

INSTANCE = "relay.example:9125"
R = f'instance="{INSTANCE}", job="mxroute"'  # the labels of every scraped series


@dataclass(frozen=True)
class Case:
    """``alert`` evaluated at ``at`` over ``series``: the ``fires`` expected (extra labels,
    summary); none when empty."""

    alert: str
    at: str
    series: dict[str, str]
    fires: list[tuple[dict[str, str], str]] = field(default_factory=list)


SITE = 'site="mx.example"'

CASES = [
    Case("MxrouteDown", "3m", {f"up{{{R}}}": "0x5"},
         [({"job": "mxroute"}, f"mxroute on {INSTANCE} is not answering scrapes")]),
    Case("MxrouteDown", "3m", {f"up{{{R}}}": "1 0 0 1 1 1"}),  # a blip shorter than for:
    Case("MxrouteAbsent", "11m", {'up{job="other", instance="x:1"}': "1x15"},
         [({"job": "mxroute", "instance": ""}, 'No mxroute target is scraped (job="mxroute")')]),
    Case("MxrouteAbsent", "11m", {f"up{{{R}}}": "0x15"}),  # scraped and down: MxrouteDown's
    Case("MxrouteQueueGrowing", "60m",
         {f'mxroute_queue_messages{{{R}, state="deferred"}}': "900+10x60",
          f'mxroute_queue_messages{{{R}, state="held"}}': "5000x60"},
         [({}, f"The queue on {INSTANCE} holds 1500 messages and grows")]),
    Case("MxrouteQueueGrowing", "60m",  # large but steady; held mail does not count
         {f'mxroute_queue_messages{{{R}, state="deferred"}}': "1500x60",
          f'mxroute_queue_messages{{{R}, state="held"}}': "0+100x60"}),
    Case("MxrouteOldestMessageAgeing", "30m",
         {f"mxroute_queue_oldest_message_age_seconds{{{R}}}": "3000+60x30"},
         [({"job": "mxroute"}, f"The oldest queued message on {INSTANCE} is 1h 20m 0s old")]),
    Case("MxrouteOldestMessageAgeing", "30m",
         {f"mxroute_queue_oldest_message_age_seconds{{{R}}}": "60x30"}),
    Case("MxrouteSiteDeferring", "30m",
         {f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="deferred"}}': "0+60x30",
          f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="delivered"}}': "0+6x30"},
         [({"site": "mx.example", "outcome": "deferred"},
           f"Site mx.example defers most deliveries from {INSTANCE}")]),
    Case("MxrouteSiteDeferring", "30m",
         {f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="deferred"}}': "0+6x30",
          f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="delivered"}}': "0+60x30"}),
    Case("MxrouteSiteBouncing", "30m",
         {f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="bounced"}}': "0+30x30",
          f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="delivered"}}': "0+60x30"},
         [({"site": "mx.example", "outcome": "bounced"},
           f"Site mx.example refuses many recipients from {INSTANCE}")]),
    Case("MxrouteSiteBouncing", "30m",
         {f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="bounced"}}': "0+1x30",
          f'mxroute_site_recipients_total{{{R}, {SITE}, outcome="delivered"}}': "0+60x30"}),
    Case("MxrouteSiteSuspended", "4m",
         {f"mxroute_site_suspensions_total{{{R}, {SITE}}}": "0 0 0 1 1 1"},
         [({"job": "mxroute", "site": "mx.example"},
           f"Delivery to site mx.example was suspended on {INSTANCE}")]),
    Case("MxrouteSiteSuspended", "20m",  # 16 minutes ago: out of the window
         {f"mxroute_site_suspensions_total{{{R}, {SITE}}}": "0 0 0 1x20"}),
    Case("MxrouteSiteThrottled", "45m",
         {f"mxroute_site_throttled_waits_total{{{R}, {SITE}}}": "0+120x60"},
         [({"job": "mxroute", "site": "mx.example"},
           "Deliveries to site mx.example keep waiting for their turn")]),
    Case("MxrouteSiteThrottled", "45m",
         {f"mxroute_site_throttled_waits_total{{{R}, {SITE}}}": "0+30x60"}),
    Case("MxrouteTlsDowngrades", "3m",
         {f'mxroute_outbound_sessions_total{{{R}, event="tls_fallbacks"}}': "0 0 1 1"},
         [({"job": "mxroute", "event": "tls_fallbacks"},
           f"mxroute on {INSTANCE} sent mail in plain text after STARTTLS failed")]),
    Case("MxrouteTlsDowngrades", "3m",
         {f'mxroute_outbound_sessions_total{{{R}, event="tls_fallbacks"}}': "0x5",
          f'mxroute_outbound_sessions_total{{{R}, event="tls"}}': "0+10x5"}),
    Case("MxrouteTlsPolicyRefusals", "3m",
         {f'mxroute_outbound_sessions_total{{{R}, event="dane_failures"}}': "0 0 2 2",
          f'mxroute_outbound_sessions_total{{{R}, event="policy_skips"}}': "0 1 1 1"},
         [({"job": "mxroute", "event": "dane_failures"},
           f"MTA-STS or DANE refused hosts (dane_failures) on {INSTANCE}"),
          ({"job": "mxroute", "event": "policy_skips"},
           f"MTA-STS or DANE refused hosts (policy_skips) on {INSTANCE}")]),
    Case("MxrouteTlsPolicyRefusals", "3m",
         {f'mxroute_outbound_sessions_total{{{R}, event="dane_failures"}}': "0x5",
          f'mxroute_outbound_sessions_total{{{R}, event="dane"}}': "0+10x5"}),
    Case("MxrouteDkimSigningFailures", "2m",
         {f"mxroute_dkim_signing_failures_total{{{R}}}": "0 1 1"},
         [({"job": "mxroute"}, f"mxroute on {INSTANCE} could not DKIM-sign messages")]),
    Case("MxrouteDkimSigningFailures", "2m",
         {f"mxroute_dkim_signing_failures_total{{{R}}}": "0x5"}),
    Case("MxrouteDkimKeyUnpublished", "40m",
         {f'mxroute_dkim_key_published{{{R}, domain="example.com", selector="s1"}}': "0x40",
          f'mxroute_dkim_key_published{{{R}, domain="example.com", selector="s2"}}': "1x40"},
         [({"job": "mxroute", "domain": "example.com", "selector": "s1"},
           "DKIM key s1._domainkey.example.com is not published")]),
    Case("MxrouteDkimKeyUnpublished", "40m",  # published 20 minutes late: no alert then
         {f'mxroute_dkim_key_published{{{R}, domain="example.com", selector="s1"}}':
          "0x20 1x20"}),
    Case("MxrouteDeliveryProcessRestarting", "2m",
         {f"mxroute_delivery_process_restarts_total{{{R}}}": "0 0 1"},
         [({"job": "mxroute"}, f"The delivery process of {INSTANCE} restarted")]),
    Case("MxrouteDeliveryProcessRestarting", "2m",  # the relay itself restarted: a reset
         {f"mxroute_delivery_process_restarts_total{{{R}}}": "3 3 0"}),
    Case("MxrouteIntakeDiskFull", "2m",
         {f"mxroute_intake_storage_refusals_total{{{R}}}": "0 0 3"},
         [({"job": "mxroute"},
           f"mxroute on {INSTANCE} refuses mail for disk space (452 4.3.1)")]),
    Case("MxrouteIntakeDiskFull", "2m",
         {f"mxroute_intake_storage_refusals_total{{{R}}}": "0x5"}),
    Case("MxrouteMemoryBudgetRefusing", "15m",
         {f"mxroute_inflight_refusals_total{{{R}}}": "0+2x15"},
         [({"job": "mxroute"},
           f"mxroute on {INSTANCE} refuses mail for memory (452 4.3.1)")]),
    Case("MxrouteMemoryBudgetRefusing", "15m",
         {f"mxroute_inflight_refusals_total{{{R}}}": "5x15"}),
]


def _expected(case: Case, rule: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for extra, summary in case.fires:
        labels = {"instance": INSTANCE, "severity": rule["labels"]["severity"], **extra}
        out.append({"exp_labels": {k: v for k, v in labels.items() if v},
                    "exp_annotations": {"summary": summary,
                                        "description": rule["annotations"]["description"]}})
    return out


def unit_tests(rule_file: str = "mxroute-rules.yml") -> dict[str, Any]:
    """The ``promtool test rules`` file's content for the shipped rules."""
    rules = {rule["alert"]: rule for rule in alert_rules(Tuning())}
    tests = []
    for case in CASES:
        tests.append({
            "name": f"{case.alert} {'fires' if case.fires else 'stays quiet'}",
            "interval": "1m",
            "input_series": [{"series": name, "values": values}
                             for name, values in case.series.items()],
            "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert,
                                 "exp_alerts": _expected(case, rules[case.alert])}],
        })
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


__all__ = ["CASES", "INSTANCE", "Case", "unit_tests"]
