"""promtool (Debian's prometheus package) checks the shipped rules and runs their unit tests;
every dashboard query parses (issue 20)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mxroute.monitoring.dashboard import dashboard, queries
from mxroute.monitoring.files import RULE_TESTS, RULES, rules_text
from mxroute.monitoring.rules import Tuning, alert_rules, recording_rules, to_yaml
from tests.support.prometheus import promtool, substitute

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_promtool_checks_the_rule_file(tmp_path: Path) -> None:
    """Issue 20: ``promtool check rules`` accepts the shipped file and a test-sized one."""
    done = promtool("check", "rules", str(DEPLOY / RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(recording_rules(Tuning())) + len(alert_rules(Tuning()))
    assert f"SUCCESS: {count} rules found" in done.stdout
    fast = tmp_path / "fast.yml"
    fast.write_text(rules_text(Tuning(hold="1s", rate_window="20s", queue_window="20s")))
    done = promtool("check", "rules", str(fast))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass_and_catch_a_broken_rule(tmp_path: Path) -> None:
    """Issue 20: every alert's firing and quiet cases pass (``promtool test rules``); the same
    tests against rules with a raised threshold fail (the tests can fail)."""
    done = promtool("test", "rules", RULE_TESTS.name, cwd=DEPLOY / RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copy(DEPLOY / RULE_TESTS, tmp_path / RULE_TESTS.name)
    (tmp_path / RULES.name).write_text(rules_text(Tuning(oldest_age=7200)))
    broken = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert broken.returncode != 0
    assert "MxrouteOldestMessageAgeing" in broken.stdout + broken.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Issue 20: each panel query, Grafana's variables substituted, parses (promtool checks it
    as a recording rule); a query with a syntax error is refused by the same check."""
    rules = [{"record": f"dashboard:query{n}", "expr": substitute(expr)}
             for n, (_, expr) in enumerate(queries(dashboard()))]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(to_yaml({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    path.write_text(to_yaml({"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:bad", "expr": "sum(rate(mxroute_recipients_total[5m])"}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0
