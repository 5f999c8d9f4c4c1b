"""Configuration errors keep the "one line naming the setting" promise (issue 15 C3), through
the real `mxroute check-config` (and `queue list`): a bad value in the file or the environment
is one line naming the setting and where it came from, exit 78; lists of plain values take the
comma-separated form a person types; an unknown MXROUTE_* variable is a warning naming the
closest setting; check-config catches what would stop `serve`; its output is a config file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT
from tests.support.relay import World


def mxroute(*args: str, cwd: Path = ROOT, **env: str | None) -> subprocess.CompletedProcess[str]:
    """The real CLI, MXROUTE_* variables of the test run left out, HELO relay.t; a variable
    given as None is left out too."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    given = {"PYTHONPATH": str(ROOT), "MXROUTE_HELO_NAME": "relay.t",
             "MXROUTE_DNS_TIMEOUT": "0.5", **env}
    full.update({k: v for k, v in given.items() if v is not None})
    return subprocess.run([sys.executable, "-m", "mxroute", *args], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=60, check=False)


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single configuration error line of a run that exited 78."""
    assert done.returncode == 78, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mxroute: configuration error: "), lines
    assert "Source" not in lines[0] and "int()" not in lines[0], lines[0]
    return lines[0]


def test_issue15_c3_bad_helo_name_in_the_file_names_the_setting(tmp_path: Path) -> None:
    """`helo_name = "bad name!"`: exit 78 (not 64), one line naming helo_name and the file."""
    config = tmp_path / "mxroute.toml"
    config.write_text('helo_name = "bad name!"\n')
    line = one_error(mxroute("check-config", "--config", str(config), MXROUTE_HELO_NAME=None))
    assert "setting helo_name" in line and str(config) in line and "bad name!" in line
    line = one_error(mxroute("check-config", MXROUTE_HELO_NAME="bad name!"))
    assert "setting helo_name (from MXROUTE_HELO_NAME)" in line


def test_issue15_c3_plain_lists_take_the_comma_separated_form(
        dns_server: DNSServer, tmp_path: Path) -> None:
    """MXROUTE_LISTEN=127.0.0.1:2525 (not JSON) is one address, as a person means it; commas
    separate several, in the environment and in the file; JSON still works."""
    done = mxroute("check-config", "--json", "--dns", dns_server.address,
                   MXROUTE_LISTEN="127.0.0.1:2525",
                   MXROUTE_RELAY_NETWORKS=" 10.0.0.0/8, 127.0.0.0/8 ,::1/128",
                   MXROUTE_EGRESS_IPS="127.0.0.2,127.0.0.3",
                   MXROUTE_SPOOL_DIR=str(tmp_path / "spool"))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["listen"] == ["127.0.0.1:2525"]
    assert body["relay_networks"] == ["10.0.0.0/8", "127.0.0.0/8", "::1/128"]
    assert body["egress_ips"] == ["127.0.0.2", "127.0.0.3"]
    done = mxroute("check-config", "--json", MXROUTE_DNS_SERVERS=f"{dns_server.address}, 127.0.0.1",
                   MXROUTE_LISTEN='["127.0.0.1:2525", "[::1]:2526"]',
                   MXROUTE_SPOOL_DIR=str(tmp_path / "spool"))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["dns_servers"] == [dns_server.address, "127.0.0.1"]
    assert body["listen"] == ["127.0.0.1:2525", "[::1]:2526"]
    config = tmp_path / "mxroute.toml"
    config.write_text('listen = "127.0.0.1:2525, 127.0.0.1:2526"\n'
                      f'spool_dir = "{tmp_path / "spool"}"\n')
    done = mxroute("check-config", "--json", "--config", str(config), "--dns", dns_server.address)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["listen"] == ["127.0.0.1:2525", "127.0.0.1:2526"]


def test_issue15_c3_bad_values_in_the_environment_are_one_clear_line() -> None:
    """No pydantic "EnvSettingsSource" text, no `invalid literal for int()`: the setting, its
    variable and what is wrong."""
    line = one_error(mxroute("check-config", MXROUTE_METRICS_LISTEN='"127.0.0.1:9125"'))
    assert "setting metrics_listen (from MXROUTE_METRICS_LISTEN)" in line
    assert "is not host:port" in line
    line = one_error(mxroute("check-config", MXROUTE_DKIM_KEYS='[{"domain": '))
    assert "setting dkim_keys (from MXROUTE_DKIM_KEYS)" in line and "JSON" in line
    line = one_error(mxroute("check-config", MXROUTE_TLS_POLICY_DOMAINS="example.com"))
    assert "setting tls_policy_domains (from MXROUTE_TLS_POLICY_DOMAINS)" in line
    line = one_error(mxroute("check-config", MXROUTE_LISTEN='["127.0.0.1:2525"'))
    assert "setting listen (from MXROUTE_LISTEN)" in line and "JSON" in line
    line = one_error(mxroute("check-config", MXROUTE_LISTEN="127.0.0.1:notaport"))
    assert "setting listen (from MXROUTE_LISTEN)" in line
    line = one_error(mxroute("check-config", MXROUTE_DNS_SERVERS="127.0.0.1,not-an-ip"))
    assert "setting dns_servers (from MXROUTE_DNS_SERVERS)" in line and "not-an-ip" in line


def test_issue15_c3_unknown_variables_warn_with_the_closest_setting(
        dns_server: DNSServer, tmp_path: Path) -> None:
    """MXROUTE_LISTN: a warning naming MXROUTE_LISTEN, on every command that loads settings;
    the variables mxroute and its tools read themselves are not warned about."""
    spool = tmp_path / "spool"
    (spool / "queue").mkdir(mode=0o700, parents=True)
    done = mxroute("check-config", "--dns", dns_server.address, MXROUTE_LISTN="127.0.0.1:2600",
                   MXROUTE_SPOOL_DIR=str(spool))
    assert done.returncode == 0, done.stderr
    assert "MXROUTE_LISTN is not a setting (did you mean MXROUTE_LISTEN?)" in done.stderr
    done = mxroute("queue", "list", MXROUTE_SPOOL_DIR=str(spool), MXROUTE_RETRY_MAX="60",
                   MXROUTE_CONFIG="", MXROUTE_BENCH_RATE="5", MXROUTE_SPF_SUITE="x")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("is not a setting") == 1, done.stderr
    assert "MXROUTE_RETRY_MAX is not a setting (did you mean MXROUTE_RETRY_MAX_SECONDS?)" in (
        done.stderr)


def test_issue15_c3_check_config_catches_what_would_stop_serve(tmp_path: Path) -> None:
    """`listen = ["notaport"]` and a spool_dir that cannot be made: exit 78 from check-config,
    not 71/73 from serve later; a spool that can be made is not made by check-config."""
    line = one_error(mxroute("check-config", MXROUTE_LISTEN="notaport",
                             MXROUTE_SPOOL_DIR=str(tmp_path / "spool")))
    assert "setting listen (from MXROUTE_LISTEN)" in line and "notaport" in line
    line = one_error(mxroute("check-config", MXROUTE_LISTEN="192.0.2.1:2525",
                             MXROUTE_SPOOL_DIR=str(tmp_path / "spool")))
    assert "setting listen" in line and "192.0.2.1" in line
    config = tmp_path / "mxroute.toml"
    config.write_text('spool_dir = "/proc/nope"\n')
    line = one_error(mxroute("check-config", "--config", str(config)))
    assert f"setting spool_dir (from {config})" in line and "/proc/nope" in line
    assert not Path("/proc/nope").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_error(mxroute("check-config", MXROUTE_SPOOL_DIR=str(blocker / "spool")))
    assert "setting spool_dir (from MXROUTE_SPOOL_DIR)" in line
    fresh = tmp_path / "new" / "spool"
    done = mxroute("check-config", "--zone", str(ROOT / "config" / "demo.zone"),
                   MXROUTE_SPOOL_DIR=str(fresh))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "new").exists() and sorted(tmp_path.iterdir()) == [blocker, config]


@pytest.mark.parametrize("extra", [
    "",
    ('tls_cert_file = "{cert}"\ntls_key_file = "{cert}"\ndkim_expire_seconds = 600000\n'
    'tls_policy_domains = {{ "bank.example" = "verify", ".gov.example" = "encrypt" }}\n'
    'banner = "ESMTP \\"quoted\\" \\\\ é"\n'
    '[[dkim_keys]]\ndomain = "t"\nselector = "s1"\nkey_file = "{cert}"\n'
    'senders = ["10.0.0.0/8", "alice"]\n'
    '[[dkim_keys]]\ndomain = "u"\nselector = "s2"\nkey_file = "{cert}"\n'),
])
def test_issue15_c3_check_config_output_is_a_config_file_that_loads_the_same(
        dns_server: DNSServer, tmp_path: Path, extra: str) -> None:
    """check-config's text, fed back as --config, is valid TOML loading the same settings:
    unset values are comments, not `null`; tables and lists of tables in TOML form."""
    cert = tmp_path / "cert.pem"
    cert.write_text("")
    config = tmp_path / "in.toml"
    config.write_text(f'spool_dir = "{tmp_path / "spool"}"\nmetrics_listen = ""\n'
                      + extra.format(cert=cert))
    first = mxroute("check-config", "--config", str(config), "--dns", dns_server.address)
    assert first.returncode == 0, first.stderr
    assert " = null" not in first.stdout and "# metrics_listen: unset" in first.stdout
    again = tmp_path / "again.toml"
    again.write_text(first.stdout)
    before = mxroute("check-config", "--json", "--config", str(config), "--dns",
                     dns_server.address)
    after = mxroute("check-config", "--json", "--config", str(again))
    assert after.returncode == 0, after.stderr
    settings_before, settings_after = json.loads(before.stdout), json.loads(after.stdout)
    # where the values came from differs (the file now); the values do not
    assert settings_after.pop("origins") != settings_before.pop("origins")
    assert settings_after == settings_before


def test_issue15_c3_serve_takes_comma_lists_and_warns_of_unknown_variables(world: World) -> None:
    """`serve` reads MXROUTE_RELAY_NETWORKS as typed (comma-separated) and logs the misspelled
    MXROUTE_RETRY_MIN_SECOND with the setting meant; then relays as configured."""
    relay = world.relay(relay_networks="10.0.0.0/8, 127.0.0.0/8", retry_min_second="5")
    text = relay.logged("MXROUTE_RETRY_MIN_SECOND is not a setting "
                        "(did you mean MXROUTE_RETRY_MIN_SECONDS?)")
    assert "MXROUTE_RETRY_MIN_SECOND is not a setting" in text, text
    client = relay.client()
    try:
        code, _ = client.mail("a@sender.test")
        assert code == 250
        code, reply = client.rcpt("u@dest.test")  # 127.0.0.1 is in the comma-separated list
        assert code == 250, reply
    finally:
        client.close()
