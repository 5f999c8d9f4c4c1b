"""Issue 17: the tools operators point at mxroute, against ``mxroute serve`` set up as
docs/clients.md says (STARTTLS on the SMTP port, implicit TLS on the submissions port).

sslscan, testssl.sh (its protocol and cipher checks only: ``-p -E``, about 10 s a port) and
``openssl s_client`` must find STARTTLS (or TLS at once on the submissions port) and no weak
protocol or suite: SSLv2/3, TLS 1.0/1.1, NULL, EXPORT, RC4, 3DES or anonymous. swaks
``--quit-after`` at each stage leaves nothing queued. Whatever the tools did, the relay's log
has no traceback and no ERROR: a refused handshake is one INFO line. Each tool's findings are
printed in the run's summary (tests/interop/conftest.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import PASSWORD, USER, Submission, need, submission_relay
from tests.support.relay import World

pytestmark = pytest.mark.interop

WEAK_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1")
# NULL, EXPORT, RC4, 3DES (DES-CBC3) and anonymous (ADH/AECDH, "anon") suites, OpenSSL or IANA
WEAK_SUITE = re.compile(r"NULL|EXP|RC4|DES-CBC3|3DES|_DES_|ADH|AECDH|anon", re.IGNORECASE)
Finding = Callable[[str, str], None]


def clean_log(sub: Submission) -> None:
    """No traceback, no ERROR line in the relay's log."""
    log = sub.relay.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]


def run(args: list[str], timeout: float = 120) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    return done.stdout + done.stderr


@pytest.fixture
def sub(world: World, tmp_path: Path) -> Submission:
    world.sink(1)
    return submission_relay(world, tmp_path)


@pytest.mark.parametrize("port", ["starttls", "smtps"])
def test_sslscan_finds_tls_and_no_weak_protocol_or_suite(sub: Submission, finding: Finding,
                                                         port: str) -> None:
    """sslscan (``--starttls-smtp`` on the SMTP port, TLS at once on 465): TLS 1.2 and 1.3
    only, every accepted suite strong."""
    tool = need("sslscan", "sslscan")
    how = (["--starttls-smtp", f"127.0.0.1:{sub.port}"] if port == "starttls"
           else [f"127.0.0.1:{sub.smtps_port}"])
    out = run([tool, "--no-colour", "--no-heartbleed", "--no-renegotiation", "--no-compression",
               "--no-fallback", "--no-groups", "--no-check-certificate", *how])
    finding(f"sslscan {port}", out)
    assert "did not appear to support STARTTLS" not in out, out
    assert "Testing SSL server 127.0.0.1" in out, out
    versions = dict(re.findall(r"^(SSLv[23]|TLSv1\.[0-3])\s+(enabled|disabled)", out, re.MULTILINE))
    assert versions == {"SSLv2": "disabled", "SSLv3": "disabled", "TLSv1.0": "disabled",
                        "TLSv1.1": "disabled", "TLSv1.2": "enabled", "TLSv1.3": "enabled"}, out
    suites = re.findall(r"^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", out, re.MULTILINE)
    assert suites, out
    assert not [s for s in suites if s[0] in WEAK_PROTOCOLS or WEAK_SUITE.search(s[1])], out
    clean_log(sub)


@pytest.mark.parametrize("port", ["starttls", "smtps"])
def test_testssl_protocols_and_ciphers(sub: Submission, finding: Finding, tmp_path: Path,
                                       port: str) -> None:
    """testssl.sh ``-p -E`` (protocols, ciphers per protocol; ``--starttls smtp`` on the SMTP
    port): STARTTLS detected, SSLv2/3 and TLS 1.0/1.1 not offered, no weak suite offered."""
    tool = need("testssl", "testssl.sh")
    report = tmp_path / f"testssl-{port}.json"
    how = (["--starttls", "smtp", f"127.0.0.1:{sub.port}"] if port == "starttls"
           else [f"127.0.0.1:{sub.smtps_port}"])
    out = run([tool, "-p", "-E", "--color", "0", "--quiet", "--warnings", "off", "--fast",
               "--jsonfile", str(report), *how], timeout=300)
    assert report.exists(), out
    entries = {e["id"]: e for e in json.loads(report.read_text())}
    finding(f"testssl {port}", "\n".join(f"{e['id']}: {e['severity']}: {e['finding']}"
                                         for e in entries.values()))
    if port == "starttls":
        assert entries.get("service", {}).get("finding") == "smtp", out
    for name in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert entries[name]["finding"].startswith("not offered"), entries[name]
    assert entries["TLS1_2"]["finding"].startswith("offered"), entries["TLS1_2"]
    assert entries["TLS1_3"]["finding"].startswith("offered"), entries["TLS1_3"]
    suites = [e["finding"] for name, e in entries.items() if name.startswith("cipher-")]
    assert suites, out
    assert not [s for s in suites if WEAK_SUITE.search(s)], suites
    clean_log(sub)


def test_openssl_s_client_starttls_and_implicit_tls(sub: Submission, finding: Finding) -> None:
    """``openssl s_client -starttls smtp`` reaches TLS 1.3 after STARTTLS; on 465, TLS then the
    greeting, and EHLO offers AUTH there but no STARTTLS; TLS 1.1 and a 3DES-only or
    anonymous-only client are refused on both."""
    tool = need("openssl", "openssl")
    starttls = ["-starttls", "smtp", "-connect", f"127.0.0.1:{sub.port}"]
    smtps = ["-connect", f"127.0.0.1:{sub.smtps_port}"]
    brief = run([tool, "s_client", *starttls, "-brief"], timeout=30)
    finding("openssl s_client -starttls smtp", brief)
    assert "Protocol version: TLSv1.3" in brief, brief
    session = subprocess.run([tool, "s_client", *smtps, "-quiet", "-crlf"],
                             input="EHLO audit.test\nQUIT\n", capture_output=True, text=True,
                             timeout=30, check=False)
    finding("openssl s_client (port 465)", session.stdout)
    assert session.stdout.startswith("220 "), session
    assert "250-AUTH LOGIN PLAIN" in session.stdout and "STARTTLS" not in session.stdout
    for how in (starttls, smtps):
        for weak in (["-tls1_1"], ["-tls1_2", "-cipher", "DES-CBC3-SHA"],
                     ["-tls1_2", "-cipher", "aNULL:@SECLEVEL=0"]):
            out = run([tool, "s_client", *how, *weak, "-brief"], timeout=30)
            assert "Protocol version" not in out, (weak, out)
    clean_log(sub)
    assert "TLS handshake failed" in sub.relay.logged("TLS handshake failed")


STAGES = ("CONNECT", "FIRST-HELO", "TLS", "HELO", "AUTH", "MAIL", "RCPT")


@pytest.mark.parametrize("port", ["starttls", "smtps"])
def test_swaks_quit_after_each_stage(sub: Submission, port: str) -> None:
    """swaks ``--quit-after`` each stage (with --tls, or --tls-on-connect on 465, and AUTH):
    every session ends with 221, nothing is queued, the relay answers on and logs no error."""
    tool = need("swaks", "swaks libnet-ssleay-perl")
    how = (["--port", str(sub.port), "--tls"] if port == "starttls"
           else ["--port", str(sub.smtps_port), "--tls-on-connect"])
    for stage in STAGES:
        done = subprocess.run([tool, "--server", "127.0.0.1", *how, "--auth", "PLAIN",
                               "--auth-user", USER, "--auth-password", PASSWORD, "--from",
                               "app@sender.test", "--to", "u@dest.test", "--quit-after", stage],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (stage, done.stdout)
        # with --tls-on-connect, swaks's "TLS" stop comes before it reads the greeting: its
        # QUIT is answered by the 220 it reads next, and it hangs up (a swaks quirk)
        early = port == "smtps" and stage == "TLS"
        assert early or "221 2.0.0" in done.stdout, (stage, done.stdout)
    assert sub.relay.queued() == []
    clean_log(sub)
