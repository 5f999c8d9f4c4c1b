"""`mxroute explain` as a subprocess against the tests' loopback DNS server, with settings given
as keyword arguments (the environment's own MXROUTE_* variables left out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT


def explain(dns: DNSServer, args: list[str], **settings: Any) -> subprocess.CompletedProcess[str]:
    """Run ``mxroute explain --dns <dns> ARGS`` with MXROUTE_<NAME> settings in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update(
        {
            "MXROUTE_HELO_NAME": "me.t",
            "PYTHONPATH": str(ROOT),
            "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true",
            "MXROUTE_CONNECT_TIMEOUT": "2",
        }
    )
    env.update(
        {
            f"MXROUTE_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
            for k, v in settings.items()
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "mxroute", "explain", "--dns", dns.address, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
