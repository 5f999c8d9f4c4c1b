"""Settings that explain themselves (issue 15 D), through the real CLI: `mxroute --version`,
`check-config` naming where each value came from, and `check-config --non-default`
(Postfix's `postconf -n`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.e2e.test_settings_errors import mxroute
from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT


def test_issue15_d_version_is_the_package_version() -> None:
    done = mxroute("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"mxroute {version('mxroute')}\n"
    console = subprocess.run([str(Path(sys.executable).parent / "mxroute"), "--version"],
                             capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert console.returncode == 0 and console.stdout == done.stdout


def test_issue15_d_check_config_names_where_each_value_came_from(
        dns_server: DNSServer, tmp_path: Path) -> None:
    """Default values carry no comment; a value from the file, a variable or the command line
    says which."""
    config = tmp_path / "mxroute.toml"
    config.write_text(f'spool_dir = "{tmp_path}"\nmax_recipients = 50\nsmtp_port = 2525\n')
    done = mxroute("check-config", "--config", str(config), "--dns", dns_server.address,
                   MXROUTE_SMTP_PORT="2526")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f'spool_dir = "{tmp_path}"  # from {config}' in lines
    assert f"max_recipients = 50  # from {config}" in lines
    assert "smtp_port = 2526  # from MXROUTE_SMTP_PORT" in lines
    assert f'dns_servers = ["{dns_server.address}"]  # from the command line' in lines
    assert 'helo_name = "relay.t"  # from MXROUTE_HELO_NAME' in lines
    assert "max_clients = 200" in lines and "retry_min_seconds = 300" in lines
    body = json.loads(mxroute("check-config", "--json", "--config", str(config), "--dns",
                              dns_server.address).stdout)
    assert body["origins"]["max_recipients"] == str(config)
    assert body["origins"]["dns_servers"] == "the command line"
    assert body["origins"]["max_clients"] == "default"


def test_issue15_d_check_config_non_default_is_postconf_n(
        dns_server: DNSServer, tmp_path: Path) -> None:
    """--non-default: only the values set somewhere, each with its origin; the checks follow."""
    config = tmp_path / "mxroute.toml"
    config.write_text(f'spool_dir = "{tmp_path}"\nmax_recipients = 100\n')
    done = mxroute("check-config", "--non-default", "--config", str(config), "--dns",
                   dns_server.address)
    assert done.returncode == 0, done.stderr
    settings = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert sorted(settings) == sorted([
        f'spool_dir = "{tmp_path}"  # from {config}',
        # set in the file, even to the default value: postconf -n's rule
        f"max_recipients = 100  # from {config}",
        f'dns_servers = ["{dns_server.address}"]  # from the command line',
        'helo_name = "relay.t"  # from MXROUTE_HELO_NAME',
        "dns_timeout = 0.5  # from MXROUTE_DNS_TIMEOUT",
    ])
    assert "# helo_name relay.t" in done.stdout
    body = json.loads(mxroute("check-config", "--non-default", "--json", "--config", str(config),
                              "--dns", dns_server.address).stdout)
    assert set(body["origins"]) == {"spool_dir", "max_recipients", "dns_servers", "helo_name",
                                    "dns_timeout"}
    assert "max_clients" not in body and body["max_recipients"] == 100
