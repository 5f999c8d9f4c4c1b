"""`helo_name`: its default, and the warnings about a name receivers refuse, through the real
`check-config` and `serve` (issue 15 section C item 2; RFC 5321 §4.1.1.1, §2.3.5).

The default is found as Postfix finds `myhostname`: the host name when it has a dot, else its
canonical name (getaddrinfo AI_CANONNAME, as `hostname --fqdn`), never getfqdn()'s reverse
lookup that turns 127.0.0.1 into `localhost`. A name without a dot, a localhost name, or
(egress_ips empty) one that resolves to no address or only to loopback gets a warning with
its fix, at `serve` start and in `check-config`; with egress_ips the per-IP check (SPF-12) says
whether it resolves to each of them. DNS is the loopback server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT
from tests.support.relay import World

ZONE = """
$ORIGIN t.
$TTL 300
@    IN SOA ns.t. h.t. 1 3600 600 86400 60
lo   IN A 127.0.0.1
ok   IN A 192.0.2.1
ok6  IN AAAA 2001:db8::1
"""


def check_config(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "empty.toml"
    config.write_text("")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MXROUTE_", "PYTHON"))}
    full.update({"PYTHONPATH": str(ROOT), "MXROUTE_CONFIG": str(config),
                 "MXROUTE_DNS_TIMEOUT": "0.5", **env})
    return subprocess.run([sys.executable, "-m", "mxroute", "check-config", *args], env=full,
                          cwd=tmp, capture_output=True, text=True, timeout=60, check=False)


def canonical_names(host: str) -> set[str]:
    try:
        return {info[3] for info in socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME)
                if info[3]}
    except OSError:
        return set()


def test_default_helo_name_is_the_host_name_or_its_canonical_name(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    """issue 15 C2: not getfqdn()'s `localhost` on a host whose 127.0.0.1 is `localhost`."""
    done = check_config(tmp_path, "--json", "--dns", dns_server.address)
    assert done.returncode == 0, done.stderr
    helo = json.loads(done.stdout)["helo_name"]
    host = socket.gethostname().lower()
    expected = {host} if "." in host else {host, *(n.lower() for n in canonical_names(host))}
    assert helo in expected, (helo, expected)
    if host != "localhost":
        assert helo != "localhost"


@pytest.mark.parametrize(("helo", "codes"), [
    ("vm", ["helo-not-fqdn"]),
    ("localhost", ["helo-localhost"]),
    ("localhost.localdomain", ["helo-localhost"]),
    ("nx.t", ["helo-no-address"]),
    ("lo.t", ["helo-loopback"]),
    ("ok.t", []),
    ("ok6.t", []),
])
def test_check_config_warns_about_a_helo_name_receivers_refuse(
    tmp_path: Path, dns_server: DNSServer, helo: str, codes: list[str]
) -> None:
    """issue 15 C2: the code in --json (`helo_check`), one `# helo_name ...` line with the fix in
    the text; a name that cannot be a host's in DNS is not looked up."""
    dns_server.set_zone(ZONE)
    env = {"MXROUTE_HELO_NAME": helo}
    done = check_config(tmp_path, "--json", "--dns", dns_server.address, **env)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["helo_check"]
    assert [f["code"] for f in found] == codes, found
    if codes in (["helo-not-fqdn"], ["helo-localhost"]):
        assert dns_server.queries() == []
    text = check_config(tmp_path, "--dns", dns_server.address, **env)
    lines = [line for line in text.stdout.splitlines() if line.startswith("# helo_name")]
    if codes:
        (line,) = lines
        assert line.startswith(f"# helo_name {helo} (from MXROUTE_HELO_NAME): {codes[0]}: ")
        assert "; fix: " in line
    else:
        assert lines == [f"# helo_name {helo}: ok"]


def test_serve_warns_at_start_about_its_helo_name(world: World) -> None:
    """issue 15 C2: `serve` with a HELO name without a dot: one WARNING line naming it, where it
    came from and the fix; the relay starts and works all the same."""
    relay = world.relay(helo_name="vm")
    log = relay.logged("mxroute ready", "helo_name vm")
    (line,) = [line for line in log.splitlines() if "mxroute.identity.helo" in line]
    assert " WARNING mxroute.identity.helo: helo_name vm (from MXROUTE_HELO_NAME): " \
           "helo-not-fqdn: " in line and "; fix: " in line
