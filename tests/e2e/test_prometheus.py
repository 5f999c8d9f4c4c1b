"""A real Prometheus scrapes a real ``mxroute serve`` with the shipped rules loaded (issue 20).

One relay and one Prometheus for the module (tests/support/prometheus.py, loopback 127.0.20.x):
the rules are the shipped ones built with a small ``Tuning`` (thresholds, windows and ``for:``
of seconds, mxroute/monitoring/rules.py) so that they fire within the test. The destination
defers every recipient and the queue grows: the site, queue and age alerts fire; the delivery
process is killed: the restart alert fires; the quiet alerts stay quiet; every dashboard query
returns data; every metric the rules and the dashboard name is in a scrape of ``serve``;
last, the relay is killed and MxrouteDown goes pending, then firing. The tests run in this
order (one scenario).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mxroute.identity.dkim.keys import generate, load_key, write_key
from mxroute.identity.dkim.record import build_txt
from mxroute.monitoring.dashboard import dashboard, queries
from mxroute.monitoring.files import rules_text
from mxroute.monitoring.rules import Tuning, alert_names
from tests.support.dnsserver import DNSServer
from tests.support.prometheus import Prometheus, substitute, tool
from tests.support.relay import MSG, Relay, World, delivery_pid, free_port, scrape, wait_for

pytestmark = pytest.mark.slow

NET = "127.0.20"  # this module's loopback range
SITE = "mx1.dest.test"  # the destination's site: its MX host
FAST = Tuning(queue_messages=2, queue_window="20s", oldest_age=5, rate_window="20s",
              event_window="1m", site_min_rate=0, hold="4s")
QUIET = ("MxrouteAbsent", "MxrouteSiteBouncing", "MxrouteSiteSuspended", "MxrouteSiteThrottled",
         "MxrouteTlsDowngrades", "MxrouteTlsPolicyRefusals", "MxrouteDkimSigningFailures",
         "MxrouteIntakeDiskFull")


@dataclass
class Observed:
    world: World
    relay: Relay
    prometheus: Prometheus
    metrics_port: int
    sent: int = 0

    def send_one(self) -> None:
        self.relay.send(f"s{self.sent}@sender.test", [f"u{self.sent}@dest.test"], MSG)
        self.sent += 1


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tool("prometheus")
    tmp = tmp_path_factory.mktemp("observe")
    keys = {name: tmp / f"{name}.pem" for name in ("s1", "s2")}  # s2 is not published
    for path in keys.values():
        write_key(generate("ed25519"), path)
    published = build_txt("ed25519", load_key(keys["s1"]).public_b64())
    with DNSServer(host=f"{NET}.53") as dns, World.running(tmp, dns, net=20, base="127.0") as w:
        w.zone(f"dest IN MX 10 {SITE}.\n{SITE.removesuffix('.test')} IN A {w.ip(1)}\n"
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {w.ip(9)}\n"
               f's1._domainkey.sender IN TXT "{published}"\n')
        w.sink(1, replies={"RCPT": {"*": "451 4.7.1 greylisted, try again later"}})
        port = free_port(f"{NET}.3")
        relay = w.relay(metrics_listen=f"{NET}.3:{port}", dkim_keys=[
            {"domain": "sender.test", "selector": name, "key_file": str(path)}
            for name, path in keys.items()])
        rules = tmp / "mxroute-rules.yml"
        rules.write_text(rules_text(FAST))
        prometheus = Prometheus(tmp, f"{NET}.2", [f"{NET}.3:{port}"], rules).start()
        try:
            assert wait_for(prometheus.scraped, timeout=30), prometheus.api("targets")
            yield Observed(w, relay, prometheus, port)
        finally:
            prometheus.stop()


def firing(observed: Observed, *names: str, feed: bool = False) -> dict[str, set[str]]:
    """The alert states once every one of ``names`` fires (bounded: 90 s); ``feed``: one more
    message each turn meanwhile (a growing queue, at most 60)."""
    def check() -> dict[str, set[str]] | None:
        if feed and observed.sent < 60:
            observed.send_one()
        states = observed.prometheus.alert_states()
        return states if all("firing" in states.get(name, ()) for name in names) else None
    found: dict[str, set[str]] | None = wait_for(check, timeout=90, step=1.0)
    return found or observed.prometheus.alert_states()


def test_deferring_site_and_growing_queue_fire_their_alerts(observed: Observed) -> None:
    """Issue 20: a destination that defers everything and a queue that keeps growing fire
    MxrouteSiteDeferring, MxrouteQueueGrowing and MxrouteOldestMessageAgeing through a real
    Prometheus (the queue keeps the mail meanwhile); the DKIM key not in DNS fires
    MxrouteDkimKeyUnpublished, the published one does not; the alerts of conditions not induced
    stay quiet."""
    induced = ("MxrouteSiteDeferring", "MxrouteQueueGrowing", "MxrouteOldestMessageAgeing",
               "MxrouteDkimKeyUnpublished")
    states = firing(observed, *induced, feed=True)
    for name in induced:
        assert "firing" in states.get(name, ()), (name, states, observed.relay.log()[-3000:])
    deferring = [a for a in observed.prometheus.alerts()
                 if a["labels"]["alertname"] == "MxrouteSiteDeferring"]
    assert {a["labels"]["site"] for a in deferring} == {SITE}
    assert "mxroute queue summary --by site" in deferring[0]["annotations"]["description"]
    unpublished = [a["labels"]["selector"] for a in observed.prometheus.alerts()
                   if a["labels"]["alertname"] == "MxrouteDkimKeyUnpublished"]
    assert unpublished == ["s2"]
    values = scrape(observed.metrics_port, f"{NET}.3")
    assert values['mxroute_dkim_key_published{domain="sender.test",selector="s1"}'] == 1
    for name in (*QUIET, "MxrouteDeliveryProcessRestarting", "MxrouteDown"):
        assert name not in states, (name, states)
    assert len(observed.relay.queued()) >= 3  # nothing was lost: the deferred mail waits


def test_killed_delivery_process_fires_the_restart_alert(observed: Observed) -> None:
    """Issue 20: SIGKILL of the delivery process (serve restarts it) fires
    MxrouteDeliveryProcessRestarting; mxroute_delivery_process_restarts_total counts it."""
    relay = observed.relay
    assert relay.proc is not None
    first = delivery_pid(relay.proc.pid)
    os.kill(first, signal.SIGKILL)
    delivery_pid(relay.proc.pid, other_than=first)
    states = firing(observed, "MxrouteDeliveryProcessRestarting")
    assert "firing" in states.get("MxrouteDeliveryProcessRestarting", ()), states
    assert scrape(observed.metrics_port, f"{NET}.3")["mxroute_delivery_process_restarts_total"] >= 1


def test_every_dashboard_query_returns_data(observed: Observed) -> None:
    """Issue 20: each panel's query, with $site (All and the one site), $instance,
    $__rate_interval and $__interval substituted as Grafana would, is accepted by the real
    Prometheus and returns at least one series; the $site variable's query finds the site."""
    prometheus = observed.prometheus
    assert SITE in prometheus.label_values("site", "mxroute_site_recipients_total")
    empty = []
    for site in (".*", SITE):
        for title, expr in queries(dashboard()):
            if not prometheus.query(substitute(expr, site=site)):
                empty.append((title, site, expr))
    assert empty == []


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\b(?:mxroute|process)_[a-z_]+\b", text))


def test_every_metric_named_by_rules_and_dashboard_is_served(observed: Observed) -> None:
    """Issue 20: every metric name in the rules and the dashboard exists in a scrape of
    ``serve`` (a renamed metric breaks this test, not an operator's night); every mxroute_
    metric served is in docs/observability.md's stable interface."""
    served = {re.sub(r"\{.*", "", key) for key in scrape(observed.metrics_port, f"{NET}.3")}
    families = served | {re.sub(r"_(bucket|sum|count)$", "", name) for name in served}
    used = used_names(rules_text()) | {n for _, e in queries(dashboard()) for n in used_names(e)}
    assert len(used) > 10
    assert sorted(used - families) == []
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    undocumented = sorted(n for n in families if n.startswith("mxroute_") and f"`{n}" not in doc)
    assert undocumented == []


def test_relay_down_goes_pending_then_firing(observed: Observed) -> None:
    """Issue 20: the relay killed, ``up == 0``: MxrouteDown is pending for its ``for:``, then
    firing. (Last in this module: it ends the scenario.)"""
    observed.relay.kill()
    seen: set[str] = set()

    def down() -> bool:
        seen.update(observed.prometheus.alert_states().get("MxrouteDown", ()))
        return "firing" in seen
    assert wait_for(down, timeout=60, step=0.25), seen
    assert seen == {"pending", "firing"}


def test_the_alerts_named_here_are_the_shipped_ones() -> None:
    """Issue 20: every alert this module names exists in the shipped rules (a rename fails
    here, not silently in the checks above)."""
    names = set(alert_names())
    assert {*QUIET, "MxrouteDown", "MxrouteDeliveryProcessRestarting", "MxrouteSiteDeferring",
            "MxrouteQueueGrowing", "MxrouteOldestMessageAgeing"} <= names
