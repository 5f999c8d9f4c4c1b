"""`mxroute explain ADDRESS --from AUTHOR`: the deliverability verdict through the real CLI over a
loopback zone (issue 14 §3; RFC 7489 §3.1 alignment, §6.6.3 discovery; SPF-10 for the SPF part).

Golden cases: pass by DKIM only, pass by SPF only, fail (no key published / key mismatch / SPF
misses the egress IP and no key), none (no record), the organizational domain's record with
``sp=``, ``adkim=s`` with a subdomain From, DNS trouble (SERVFAIL, a dead server) ->
temporary-failure. The exit code stays the routing verdict's; without --from nothing changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import explain, run_explain
from tests.support.paths import ROOT
from tests.support.relay import free_port

EGRESS = "127.0.0.2"
DMARC_KEYS = {"domain", "record", "policy", "org_domain", "spf_aligned", "dkim_aligned",
              "verdict", "reason"}


def _keygen(directory: Path, domain: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-m", "mxroute", "dkim", "keygen", domain, "s1",
                           "--dir", str(directory), "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    made: dict[str, str] = json.loads(done.stdout)
    return made


def _quoted(text: str) -> str:
    return " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    """Two RSA keys made by `mxroute dkim keygen`: the configured one and another one."""
    directory = tmp_path_factory.mktemp("dkim")
    return _keygen(directory, "a.t"), _keygen(directory, "b.t")


@pytest.fixture
def zone(dns_server: DNSServer, keys: tuple[dict[str, str], dict[str, str]]
         ) -> dict[str, Any]:
    mine, other = keys
    good, bad = _quoted(mine["txt"]), _quoted(other["txt"])
    dns_server.set_zone(f"""
$ORIGIN t.
$TTL 300
@                      IN SOA ns.t. host.t. 1 3600 600 86400 60
dest                   IN MX 10 mx.dest.t.
mx.dest                IN A 127.0.1.1
relay                  IN A {EGRESS}
2.0.0.127.in-addr.arpa. IN PTR relay.t.
_dmarc.dkimonly        IN TXT "v=DMARC1; p=reject"
dkimonly               IN TXT "v=spf1 -all"
s1._domainkey.dkimonly IN TXT {good}
_dmarc.spfonly         IN TXT "v=DMARC1; p=quarantine; rua=mailto:d@spfonly.t"
spfonly                IN TXT "v=spf1 ip4:{EGRESS} -all"
_dmarc.nokey           IN TXT "v=DMARC1; p=reject"
nokey                  IN TXT "v=spf1 -all"
_dmarc.mismatch        IN TXT "v=DMARC1; p=reject"
mismatch               IN TXT "v=spf1 -all"
s1._domainkey.mismatch IN TXT {bad}
_dmarc.spfmiss         IN TXT "v=spf1 ip4:192.0.2.1 -all"
_dmarc.spfmiss         IN TXT "v=DMARC1; p=reject"
spfmiss                IN TXT "v=spf1 ip4:192.0.2.1 -all"
norecord               IN TXT "v=spf1 ip4:{EGRESS} -all"
_dmarc.org             IN TXT "v=DMARC1; p=reject; sp=quarantine"
s1._domainkey.org      IN TXT {good}
mail.org               IN TXT "v=spf1 -all"
_dmarc.strict          IN TXT "v=DMARC1; p=reject; adkim=s"
s1._domainkey.strict   IN TXT {good}
_dmarc.ready           IN TXT "v=DMARC1; p=none"
ready                  IN TXT "v=spf1 ip4:{EGRESS} -all"
s1._domainkey.ready    IN TXT {good}
_dmarc.flaky           IN TXT "v=DMARC1; p=reject"
flaky                  IN TXT "v=spf1 ip4:{EGRESS} -all"
""")
    dns_server.fail("_dmarc.flaky.t")
    signed = ("dkimonly.t", "nokey.t", "mismatch.t", "org.t", "strict.t", "ready.t")
    return {"dkim_keys": [{"domain": d, "selector": "s1", "key_file": mine["key_file"]}
                          for d in signed], "dns_timeout": "0.5", "dns_attempts": "1"}


def _run(dns: DNSServer, settings: dict[str, Any], author: str, *more: str
         ) -> tuple[int, dict[str, Any]]:
    done = explain(dns, ["u@dest.t", "--from", author, "--egress-ip", EGRESS, "--json", *more],
                   **settings)
    assert done.returncode in (0, 75), done.stderr
    body: dict[str, Any] = json.loads(done.stdout)
    assert set(body["dkim"]) == {"signing", "domain", "selectors"}
    assert DMARC_KEYS <= set(body["dmarc"]), body["dmarc"]
    assert isinstance(body["dmarc"]["bulk_sender_ready"], bool)
    return done.returncode, body


def test_pass_by_dkim_only(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    """issue 14: DKIM aligned, SPF fails the egress IP -> pass; not bulk-ready (SPF too)."""
    code, body = _run(dns_server, zone, "x@dkimonly.t")
    dmarc, dkim = body["dmarc"], body["dkim"]
    assert code == 0
    assert dkim == {"signing": True, "domain": "dkimonly.t",
                    "selectors": [{"selector": "s1", "algorithm": "rsa", "published": "ok"}]}
    assert (dmarc["verdict"], dmarc["dkim_aligned"], dmarc["spf_aligned"]) == ("pass", True, False)
    assert dmarc["domain"] == dmarc["org_domain"] == "dkimonly.t"
    assert (dmarc["record"], dmarc["policy"]) == ("v=DMARC1; p=reject", "reject")
    assert dmarc["bulk_sender_ready"] is False
    assert f"add ip4:{EGRESS} to dkimonly.t's SPF record" in dmarc["fixes"]
    assert body["identity"][0]["sender"] == "x@dkimonly.t"  # --sender defaults to --from


def test_pass_by_spf_only(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    """issue 14: SPF passes for the egress IP and the envelope domain is the From domain."""
    _, body = _run(dns_server, zone, "x@spfonly.t")
    dmarc = body["dmarc"]
    assert body["dkim"] == {"signing": False, "domain": None, "selectors": []}
    assert (dmarc["verdict"], dmarc["spf_aligned"], dmarc["dkim_aligned"]) == ("pass", True, False)
    assert dmarc["policy"] == "quarantine" and not dmarc["bulk_sender_ready"]
    assert any(fix.startswith("sign for spfonly.t: mxroute dkim keygen spfonly.t")
               for fix in dmarc["fixes"])


def test_both_align_bulk_sender_ready(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    """SPF and DKIM pass and align, a record with p=none: ready for the bulk-sender rules."""
    _, body = _run(dns_server, zone, "x@ready.t")
    dmarc = body["dmarc"]
    assert (dmarc["verdict"], dmarc["spf_aligned"], dmarc["dkim_aligned"]) == ("pass", True, True)
    assert dmarc["policy"] == "none" and dmarc["bulk_sender_ready"] is True
    assert dmarc["fixes"] == []
    text = explain(dns_server, ["u@dest.t", "--from", "x@ready.t", "--egress-ip", EGRESS], **zone)
    assert "nothing to fix" in text.stdout


def test_fail_when_the_key_is_not_published(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    """issue 14: the relay signs, but nobody published the key: fail, and what to publish.
    The text output says it too; the exit code stays the route's (deliverable: 0)."""
    code, body = _run(dns_server, zone, "x@nokey.t")
    dmarc = body["dmarc"]
    assert code == 0
    assert body["dkim"]["selectors"] == [{"selector": "s1", "algorithm": "rsa",
                                          "published": "missing"}]
    assert (dmarc["verdict"], dmarc["spf_aligned"], dmarc["dkim_aligned"]) == ("fail", False,
                                                                                False)
    assert "publish the key for s1._domainkey.nokey.t" in dmarc["fixes"]
    assert "p=reject" in dmarc["reason"]
    text = explain(dns_server, ["u@dest.t", "--from", "x@nokey.t", "--egress-ip", EGRESS], **zone)
    assert text.returncode == 0, text.stderr
    assert "publish the key for s1._domainkey.nokey.t" in text.stdout
    assert f"add ip4:{EGRESS} to nokey.t's SPF record" in text.stdout
    assert "DMARC" in text.stdout and "fail" in text.stdout


def test_fail_on_key_mismatch(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    _, body = _run(dns_server, zone, "x@mismatch.t")
    assert body["dkim"]["selectors"][0]["published"] == "mismatch"
    assert body["dmarc"]["verdict"] == "fail"
    assert any("s1._domainkey.mismatch.t" in fix for fix in body["dmarc"]["fixes"])


def test_fail_when_spf_misses_the_egress_ip_and_nothing_signs(dns_server: DNSServer,
                                                              zone: dict[str, Any]) -> None:
    """An SPF record at _dmarc.X is not a DMARC record (discarded, RFC 7489 §6.6.3 step 2)."""
    _, body = _run(dns_server, zone, "x@spfmiss.t")
    dmarc = body["dmarc"]
    assert dmarc["verdict"] == "fail" and dmarc["record"] == "v=DMARC1; p=reject"
    assert body["dkim"]["signing"] is False
    assert f"add ip4:{EGRESS} to spfmiss.t's SPF record" in dmarc["fixes"]


def test_none_without_a_record(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    _, body = _run(dns_server, zone, "x@norecord.t")
    dmarc = body["dmarc"]
    assert (dmarc["verdict"], dmarc["record"], dmarc["policy"]) == ("none", None, None)
    assert dmarc["spf_aligned"] is True and dmarc["bulk_sender_ready"] is False
    assert 'publish TXT "v=DMARC1; p=none" at _dmarc.norecord.t' in dmarc["fixes"]


def test_organizational_domain_record_and_sp(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    """No _dmarc.mail.org.t: the organizational domain's record applies, with its sp=; the
    org domain's key aligns relaxed. From the org domain itself, p= applies."""
    _, body = _run(dns_server, zone, "x@mail.org.t")
    dmarc = body["dmarc"]
    assert (dmarc["domain"], dmarc["org_domain"]) == ("mail.org.t", "org.t")
    assert dmarc["record"] == "v=DMARC1; p=reject; sp=quarantine"
    assert (dmarc["policy"], dmarc["verdict"], dmarc["dkim_aligned"]) == ("quarantine", "pass",
                                                                          True)
    _, body = _run(dns_server, zone, "x@org.t")
    assert body["dmarc"]["policy"] == "reject" and body["dmarc"]["verdict"] == "pass"


def test_adkim_strict_with_a_subdomain_from(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    """adkim=s: the key for strict.t verifies but d=strict.t is not mail.strict.t."""
    _, body = _run(dns_server, zone, "x@mail.strict.t")
    dmarc = body["dmarc"]
    assert body["dkim"]["selectors"][0]["published"] == "ok"
    assert (dmarc["verdict"], dmarc["dkim_aligned"]) == ("fail", False)
    assert "adkim=s" in dmarc["reason"]
    assert any("add a key for mail.strict.t" in fix for fix in dmarc["fixes"])
    _, body = _run(dns_server, zone, "x@strict.t")
    assert body["dmarc"]["verdict"] == "pass"


def test_envelope_sender_in_another_domain_does_not_align(dns_server: DNSServer,
                                                          zone: dict[str, Any]) -> None:
    """--sender stays the envelope sender: SPF passes for norecord.t, which is not spfonly.t."""
    _, body = _run(dns_server, zone, "x@spfonly.t", "--sender", "b@norecord.t")
    dmarc = body["dmarc"]
    assert body["identity"][0]["sender"] == "b@norecord.t"
    assert (dmarc["verdict"], dmarc["spf_aligned"]) == ("fail", False)
    assert "send with an envelope sender (MAIL FROM) under spfonly.t" in dmarc["fixes"]


def test_servfail_is_a_temporary_failure(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    code, body = _run(dns_server, zone, "x@flaky.t")
    assert code == 0  # the route is fine
    assert body["dmarc"]["verdict"] == "temporary-failure"
    assert "SERVFAIL" in body["dmarc"]["reason"]


def test_dead_dns_server_is_a_temporary_failure(tmp_path: Path) -> None:
    """Nothing answers at all: DMARC cannot be told, and the route is temporary (75)."""
    dead = f"127.0.0.1:{free_port()}"
    done = run_explain(["--dns", dead, "u@dest.t", "--from", "x@a.t", "--egress-ip", EGRESS,
                        "--json"], {"MXROUTE_DNS_TIMEOUT": "0.3", "MXROUTE_DNS_ATTEMPTS": "1"})
    assert done.returncode == 75, done.stderr
    assert json.loads(done.stdout)["dmarc"]["verdict"] == "temporary-failure"


def test_without_from_nothing_changes(dns_server: DNSServer, zone: dict[str, Any]) -> None:
    done = explain(dns_server, ["u@dest.t", "--egress-ip", EGRESS, "--json"], **zone)
    body = json.loads(done.stdout)
    assert done.returncode == 0 and "dkim" not in body and "dmarc" not in body
    text = explain(dns_server, ["u@dest.t", "--egress-ip", EGRESS], **zone)
    assert "DMARC" not in text.stdout


def test_bad_from_address_is_a_usage_error(dns_server: DNSServer) -> None:
    done = explain(dns_server, ["u@dest.t", "--from", "not an address"])
    assert done.returncode == 64 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
