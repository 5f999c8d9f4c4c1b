"""`mxroute check-config` through the real CLI: the PTR/HELO self-check of egress_ips
(SPF-11, SPF-12) against the loopback DNS server, and a reader that goes away early.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT

ZONE = """
$ORIGIN .
$TTL 300
t.                       IN SOA ns.t. h.t. 1 3600 600 86400 60
0.0.127.in-addr.arpa.    IN SOA ns.t. h.t. 1 3600 600 86400 60
2.0.0.127.in-addr.arpa.  IN PTR relay.t.
relay.t.                 IN A 127.0.0.2
3.0.0.127.in-addr.arpa.  IN PTR liar.t.
liar.t.                  IN A 127.0.0.99
"""


def run(
    *args: str, stdout: int | None = subprocess.PIPE, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    full.update(
        {
            "PYTHONPATH": str(ROOT),
            "MXROUTE_HELO_NAME": "relay.t",
            "MXROUTE_DNS_TIMEOUT": "0.5",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "mxroute", "check-config", *args],
        stdout=stdout,
        check=False,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=60,
    )


def test_spf12_check_config_reports_ptr_and_helo_per_egress_ip(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    dns_server.fail("5.0.0.127.in-addr.arpa")
    done = run(
        "--dns",
        dns_server.address,
        MXROUTE_EGRESS_IPS='["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]',
    )
    assert done.returncode == 0 and done.stderr == "", (
        done.stderr
    )  # warnings are advice, not a bad config
    lines = done.stdout.splitlines()
    assert 'helo_name = "relay.t"  # from MXROUTE_HELO_NAME' in lines
    section = lines[
        lines.index(
            "# sending identity: PTR (iprev, RFC 8601 §3) and HELO name of each egress IP"
        ) :
    ]
    assert all(
        line.startswith("# ") for line in section
    )  # comments: the name = value lines stay parseable
    text = "\n".join(section)
    assert "# egress 127.0.0.2: PTR relay.t pass" in text and "HELO relay.t matches PTR" in text
    assert "#   ok: PTR is forward-confirmed and matches the HELO name" in text
    assert "#   warning ptr-unconfirmed: PTR of 127.0.0.3 is liar.t" in text
    assert "#   warning ptr-missing: 127.0.0.4 has no PTR record" in text
    assert "#           fix: set PTR of 127.0.0.4 to relay.t" in text
    assert (
        "#   warning ptr-temperror:" in text
        and "#   warning helo-no-address: HELO name relay.t does not resolve to 127.0.0.5" in text
    )
    assert ('egress_ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]'
            "  # from MXROUTE_EGRESS_IPS") in lines


def test_check_config_json_carries_the_identity_check(dns_server: DNSServer) -> None:
    dns_server.set_zone(ZONE)
    done = run(
        "--json", "--dns", dns_server.address, MXROUTE_EGRESS_IPS='["127.0.0.2", "127.0.0.4"]'
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    good, missing = body["identity_check"]
    assert (
        good["ptr"]["forward_confirmed"] and good["ptr"]["helo_matches"] and good["warnings"] == []
    )
    assert [w["code"] for w in missing["warnings"]] == ["ptr-missing", "helo-no-address"]
    assert missing["warnings"][0]["fix"] == "set PTR of 127.0.0.4 to relay.t"


def test_check_config_without_egress_ips_asks_only_the_helo_names_addresses(
    dns_server: DNSServer,
) -> None:
    """No PTR check without egress_ips; the HELO name's A/AAAA only (issue 15 C2)."""
    done = run("--dns", dns_server.address)
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "# sending identity: not checked (egress_ips is empty)"
    assert json.loads(run("--json", "--dns", dns_server.address).stdout)["identity_check"] is None
    assert set(dns_server.queries()) <= {("relay.t", "A"), ("relay.t", "AAAA")}


def test_check_config_into_a_closed_pipe_exits_quietly(dns_server: DNSServer) -> None:
    """`mxroute check-config | head -1`: no BrokenPipeError traceback, status 141 as for SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE, deterministically
    try:  # the HELO name's lookup (issue 15 C2) asks the loopback server, never the system's
        done = run("--dns", dns_server.address, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141


def test_check_config_piped_to_head(dns_server: DNSServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update({"PYTHONPATH": str(ROOT), "MXROUTE_HELO_NAME": "relay.t",
                "MXROUTE_DNS_SERVERS": f'["{dns_server.address}"]'})
    done = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -m mxroute check-config | head -1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("listen = ")


def test_check_config_a_rule_across_settings_names_no_bogus_setting(tmp_path: Path) -> None:
    """A check that spans settings (not one field) reads "invalid settings: ...", with where it
    came from."""
    done = run(MXROUTE_RETRY_MIN_SECONDS="4000", MXROUTE_RETRY_MAX_SECONDS="100")
    assert done.returncode == 78
    assert done.stderr == ("mxroute: configuration error: invalid settings: "
                           "retry_min_seconds must not exceed retry_max_seconds\n")
    config = tmp_path / "mxroute.toml"
    config.write_text('tls_cert_file = "/etc/ssl/x.pem"\n')
    done = run("--config", str(config))
    assert done.returncode == 78
    assert done.stderr == (f"mxroute: configuration error: invalid settings (from {config}): "
                           "tls_cert_file and tls_key_file go together\n")


def test_issue14_check_config_lists_dkim_keys_with_their_dkim_check_status(
    dns_server: DNSServer, tmp_path: Path
) -> None:
    """check-config --json: every DKIM key with the status `dkim check` gives it (issue 14 §3);
    problems are advice here (exit 0); the text form lists them as # comments."""
    made = subprocess.run(
        [sys.executable, "-m", "mxroute", "dkim", "keygen", "t", "s1", "--dir", str(tmp_path),
         "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    key = json.loads(made.stdout)
    txt = " ".join(f'"{key["txt"][i:i + 200]}"' for i in range(0, len(key["txt"]), 200))
    dns_server.set_zone(ZONE + f"s1._domainkey.t. IN TXT {txt}\n")
    keys = json.dumps([{"domain": "t", "selector": "s1", "key_file": key["key_file"]},
                       {"domain": "t", "selector": "gone", "key_file": key["key_file"]},
                       {"domain": "*", "selector": "any", "key_file": key["key_file"]}])
    done = run("--json", "--dns", dns_server.address, MXROUTE_DKIM_KEYS=keys,
               MXROUTE_EGRESS_IPS='["127.0.0.2"]')
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["identity_check"]) == 1
    checks = json.loads(done.stdout)["dkim_check"]
    assert [(c["dns_name"], c["status"], c["algorithm"], c["bits"]) for c in checks] == [
        ("s1._domainkey.t", "ok", "rsa", 2048), ("gone._domainkey.t", "missing", "rsa", 2048)]
    assert "catch-all" in done.stderr
    text = run("--dns", dns_server.address, MXROUTE_DKIM_KEYS=keys)
    assert text.returncode == 0
    assert "# DKIM keys (mxroute dkim check)" in text.stdout
    assert "# s1._domainkey.t" in text.stdout and "missing" in text.stdout
    without = run("--json", "--dns", dns_server.address)
    assert json.loads(without.stdout)["dkim_check"] == []


def test_check_config_warns_of_loose_key_files_and_refuses_an_open_spool(
    dns_server: DNSServer, tmp_path: Path,
) -> None:
    """Issue 21, DUR-3: a 0644 TLS key is a `# warning:` line (and ``file_permissions`` in the
    JSON), exit 0; a spool directory group or others can write is what would stop ``serve``:
    exit 78 naming ``spool_dir``."""
    from tests.support.smtpsink import tls_files

    cert, key = tls_files()
    loose = tmp_path / "key.pem"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    env = {"MXROUTE_TLS_CERT_FILE": str(cert), "MXROUTE_TLS_KEY_FILE": str(loose),
           "MXROUTE_SPOOL_DIR": str(spool)}
    done = run("--dns", dns_server.address, **env)
    assert done.returncode == 0, done.stderr
    assert f"# warning: tls_key_file {loose} is readable by others (mode 644)" in done.stdout
    shown = json.loads(run("--json", "--dns", dns_server.address, **env).stdout)
    assert len(shown["file_permissions"]) == 1
    loose.chmod(0o640)  # group root, not mxroute: still a warning
    assert "readable by group" in run("--dns", dns_server.address, **env).stdout
    loose.chmod(0o600)
    assert "# warning: tls_" not in run("--dns", dns_server.address, **env).stdout
    spool.chmod(0o770)
    done = run("--dns", dns_server.address, **env)
    assert done.returncode == 78
    assert "spool_dir" in done.stderr and "writable by group or others" in done.stderr
