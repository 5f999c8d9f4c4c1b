"""Issue 16, part 5: ``mxroute explain --json`` for a plain domain loads only what the case
needs. A structural check, not a timing one: the modules a real ``explain`` process has loaded
when it is done (``sys.modules``), against a loopback DNS server.

HEAVY names what a plain domain (MX and addresses, the default ``tls_policy`` ``may``, MTA-STS
on and no ``_mta-sts`` record, no ``--sender``/``--from``/``--probe``, no egress IP) must not
load, and why each loads only at its point of use. The positive controls show the check can
fail: ``--from`` loads the DKIM/DMARC code and cryptography, ``tls_policy`` ``dane`` the DANE
module. What dnspython itself imports (ssl, and httpx when it is installed: DNS over HTTPS) is
the library floor that bench/explain_bench.py measures against, not listed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT

ZONE = """
$ORIGIN plain.test.
$TTL 300
@    IN SOA ns.plain.test. host.plain.test. 1 3600 600 86400 60
@    IN MX 10 mx1.plain.test.
mx1  IN A 127.0.1.1
"""

# module (or package) -> what it is for, and when explain loads it
HEAVY = {
    "cryptography": "DKIM keys: explain --from",
    "publicsuffixlist": "DMARC's organizational domain: explain --from",
    "mxroute.identity.dkim": "DKIM: explain --from",
    "mxroute.identity.dmarc": "DMARC: explain --from",
    "mxroute.identity.spf": "SPF: only with an egress IP (--egress-ip, egress_ips)",
    "mxroute.identity.findings": "the sending identity's checks: only with an egress IP",
    "mxroute.tls.dane": "DANE (RFC 7672): only for a destination whose TLS level is dane",
    "mxroute.tls.contexts": "TLS contexts: an MTA-STS policy fetch, or --probe",
    "mxroute.cli.probe": "explain --probe",
    "aiosmtplib": "SMTP: explain --probe",
    # explain gives the intake's RCPT verdict by the intake's own pure check
    # (mxroute.relay.intake.recipient, issue 16 §2); the rest of the relay is serve's
    "mxroute.relay.intake.handler": "the SMTP server (aiosmtpd): serve",
    "aiosmtpd": "the SMTP server: serve",
    "mxroute.relay.courier": "delivery: serve",
    "mxroute.relay.queue": "the queue manager: serve and the queue commands",
    "mxroute.relay.spool": "the spool: serve, the queue commands, explain with a spool present",
    "mxroute.service": "serve",
    "mxroute.cli.queueview": "the queue commands' parsers",
    "mxroute.cli.queueops": "the queue commands' parsers",
}


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(ZONE, host="127.0.53.248") as server:
        yield server


def loaded_by_explain(dns: DNSServer, tmp: Path, *args: str,
                      **settings: str) -> tuple[set[str], dict[str, object]]:
    """(sys.modules at the end of one ``mxroute explain --json`` process, its JSON report)."""
    out = tmp / "modules.json"
    code = ("import json, sys\n"
            "from mxroute.cli.main import main\n"
            "status = main(sys.argv[2:])\n"
            "open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules)))\n"
            "raise SystemExit(status)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update({"PYTHONPATH": str(ROOT), "MXROUTE_HELO_NAME": "me.t",
                "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true"})
    env.update({f"MXROUTE_{k.upper()}": v for k, v in settings.items()})
    proc = subprocess.run([sys.executable, "-c", code, str(out), "explain", "--dns", dns.address,
                           "--json", *args, "u@plain.test"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(out.read_text())), json.loads(proc.stdout)


def heavy_in(modules: set[str]) -> dict[str, str]:
    return {name: why for name, why in HEAVY.items()
            if any(m == name or m.startswith(name + ".") for m in modules)}


def test_plain_domain_explain_loads_none_of_the_heavy_modules(dns: DNSServer,
                                                                tmp_path: Path) -> None:
    """Issue 16 part 5 (EXP-1): a plain domain's explain imports no DANE, MTA-STS fetch, TLS,
    probe, DKIM/DMARC or spool machinery."""
    modules, report = loaded_by_explain(dns, tmp_path)
    assert report["status"] == "deliverable" and report["mta_sts"]["txt"] == "absent"
    assert heavy_in(modules) == {}
    assert "mxroute.tls.mtasts.store" in modules  # the MTA-STS TXT lookup itself does run


def test_the_heavy_modules_load_when_the_case_needs_them(dns: DNSServer, tmp_path: Path) -> None:
    """Issue 16 part 5: the control: --from loads DKIM/DMARC, tls_policy dane loads DANE."""
    modules, report = loaded_by_explain(dns, tmp_path, "--from", "a@plain.test")
    assert report["dmarc"] is not None
    assert {"cryptography", "mxroute.identity.dmarc", "mxroute.identity.dkim"} <= set(
        heavy_in(modules))
    modules, report = loaded_by_explain(dns, tmp_path, tls_policy="dane", dns_trust_ad="true")
    assert report["tls"]["policy"] == "dane"
    assert "mxroute.tls.dane" in heavy_in(modules)
