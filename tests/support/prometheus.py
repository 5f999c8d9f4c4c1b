"""A real Prometheus (Debian's ``prometheus``) on loopback, and ``promtool`` (issue 20).

``Prometheus(tmp, host, targets, rule_file).start()`` writes its own configuration (scrape and
rule evaluation every second, job ``mxroute``), keeps its TSDB under ``tmp`` and listens on
``host`` only; ``stop()`` ends it by PID (the ``prometheus`` fixture of a test module does).
The Debian package's own service is not used (nor needed: another port, another data dir).
``query(expr)``, ``alerts()``, ``label_values(name)`` ask its HTTP API. ``tool(name)`` is the
path of ``prometheus`` or ``promtool``: skipped when missing here, a failure under ``CI=true``.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.clients import need
from tests.support.relay import free_port, wait_for


def tool(name: str) -> str:
    """``prometheus`` or ``promtool`` (Debian package prometheus)."""
    return need(name, "prometheus")


class Prometheus:
    """One prometheus process scraping ``targets`` (host:port) as job ``mxroute``."""

    def __init__(self, tmp: Path, host: str, targets: list[str], rule_file: Path) -> None:
        self.host, self.port = host, free_port(host)
        self.dir = tmp / "prometheus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [str(rule_file)],
            "scrape_configs": [{"job_name": "mxroute",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address={self.host}:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        if not wait_for(self._ready, timeout=30, step=0.2):
            self.stop()
            raise AssertionError(f"prometheus did not start:\n{self.log()}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
        try:
            status, _ = self._get("/-/ready")
        except OSError:
            return False
        return status == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """End the process by PID (TERM, then KILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)  # no proxy
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/<path>``'s ``data``; AssertionError with Prometheus's error otherwise."""
        query = urllib.parse.urlencode(params)
        status, body = self._get(f"/api/v1/{path}" + (f"?{query}" if query else ""))
        answer = json.loads(body)
        assert status == 200 and answer.get("status") == "success", (path, params, answer)
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (or a scalar as one sample)."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if data["resultType"] == "vector" else [{"value": result}]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts: labels, state, annotations."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def alert_states(self) -> dict[str, set[str]]:
        """Each alert's name and the states of its instances."""
        states: dict[str, set[str]] = {}
        for alert in self.alerts():
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def scraped(self) -> bool:
        """Has a scrape of every target succeeded?"""
        targets = self.api("targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def substitute(expr: str, site: str = ".*", instance: str = ".*",
               rate_interval: str = "20s", interval: str = "5s") -> str:
    """A dashboard query as Grafana sends it: ``$site`` and ``$instance`` (".*" is "All"),
    ``$__rate_interval``, ``$__interval``; AssertionError if a ``$`` is left."""
    for name, value in (("$__rate_interval", rate_interval), ("$__interval", interval),
                        ("$instance", instance), ("$site", site)):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the tests do not know: {expr}"
    return expr
