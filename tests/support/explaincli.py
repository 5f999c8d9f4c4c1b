"""`mxroute explain` as a subprocess: the environment's own MXROUTE_* variables left out,
HELO ``me.t``, this checkout on PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT


def run_explain(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Run ``mxroute explain ARGS`` with ``env`` added to a clean MXROUTE_* environment
    (``stdin``: its input, else inherited)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    full_env.update({"MXROUTE_HELO_NAME": "me.t", "PYTHONPATH": str(ROOT)})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mxroute", "explain", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=full_env,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def explain(dns: DNSServer, args: list[str], **settings: Any) -> subprocess.CompletedProcess[str]:
    """``mxroute explain --dns <dns> ARGS`` towards loopback hosts, MXROUTE_<NAME> settings given
    as keyword arguments."""
    env = {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true", "MXROUTE_CONNECT_TIMEOUT": "2"}
    env.update({f"MXROUTE_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in settings.items()})
    return run_explain(["--dns", dns.address, *args], env)
