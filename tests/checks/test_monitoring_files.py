"""The checked-in rule file, its unit tests and the dashboard are what mxroute/monitoring
generates (issue 20): run ``python -m mxroute.monitoring deploy`` after changing the code."""

from __future__ import annotations

import re
from pathlib import Path

from mxroute.monitoring.dashboard import dashboard, queries
from mxroute.monitoring.files import DASHBOARD, RULE_TESTS, RULES, generated
from mxroute.monitoring.rules import Tuning, alert_rules
from mxroute.monitoring.ruletests import CASES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_checked_in_files_are_not_stale() -> None:
    """Issue 20: each generated file in deploy/ equals what the code makes now."""
    files = generated()
    assert set(files) == {RULES, RULE_TESTS, DASHBOARD}
    stale = [str(p) for p, text in files.items() if (DEPLOY / p).read_text() != text]
    assert stale == [], "stale: run `python -m mxroute.monitoring deploy` and commit"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Issue 20: every alert has a promtool case that fires it and one that does not."""
    names = {rule["alert"] for rule in alert_rules(Tuning())}
    fires = {case.alert for case in CASES if case.fires}
    quiet = {case.alert for case in CASES if not case.fires}
    assert names == fires == quiet


def test_every_alert_says_how_bad_what_and_where_to_look() -> None:
    """Issue 20: a severity, a summary, and a description naming a command to run."""
    for rule in alert_rules(Tuning()):
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"], rule
        description = rule["annotations"]["description"]
        assert re.search(r"`(mxroute|systemctl|journalctl|df)\b", description), rule


def test_dashboard_has_the_site_variable_and_unique_panel_ids() -> None:
    """Issue 20: ``$site`` is a variable and per-site panels use it; ids are unique."""
    model = dashboard()
    variables = {v["name"] for v in model["templating"]["list"]}
    assert {"datasource", "instance", "site"} <= variables
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    assert any("$site" in expr for _, expr in queries(model))
    assert all("$instance" in expr for _, expr in queries(model))
