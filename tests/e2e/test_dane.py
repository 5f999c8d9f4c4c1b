"""TLS-7 and EXP-3 (DANE part) through the real program: `mxroute explain` shows the DANE posture
(DNSSEC status of the MX RRset and addresses, TLSA records, usable or not, what each host needs),
and `mxroute serve` delivers only to a host whose certificate matches its TLSA records.

The tests' DNS server sets AD for the names a validating resolver would call secure.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import explain
from tests.support.relay import MSG, ROOT, Relay, World, wait_for
from tests.support.smtpsink import Sink, tls_available

pytestmark = pytest.mark.skipif(not tls_available(),
                                reason="the cryptography package is needed for certificates")

DANE = {"dns_trust_ad": "true", "tls_policy_domains": {"bank.t": "dane"}}


def zone(port: int, *tlsa: str) -> str:
    """bank.t: MX 10 mx1 (127.1.0.61), MX 20 mx2 (127.1.0.62); TLSA lines as "host record"."""
    lines = ["$ORIGIN t.", "$TTL 300", "@ IN SOA ns.t. host.t. 1 3600 600 86400 60",
             "bank IN MX 10 mx1.bank.t.", "bank IN MX 20 mx2.bank.t.",
             "mx1.bank IN A 127.1.0.61", "mx2.bank IN A 127.1.0.62"]
    lines += [f"_{port}._tcp.{host}.bank.t. IN TLSA {record}"
              for host, record in (t.split(" ", 1) for t in tlsa)]
    return "\n".join(lines) + "\n"


def test_exp3_explain_json_shows_the_dane_posture(dns_server: DNSServer) -> None:
    dns_server.set_zone(zone(25, "mx1 3 1 1 " + "ab" * 32, "mx1 1 1 1 " + "cd" * 32,
                             "mx2 0 0 1 " + "ef" * 32))
    dns_server.secure = {".bank.t"}
    proc = explain(dns_server, ["--json", "u@bank.t"], **DANE)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["tls"] == {"policy": "dane", "source": "tls_policy_domains", "match": "bank.t"}
    mx1, mx2 = body["dane"]["hosts"]
    assert body["dane"]["mx_secure"] is True
    assert mx1["exchange"] == "mx1.bank.t" and mx1["requirement"] == "dane"
    assert mx1["addresses_secure"] is True
    tlsa = (mx1["tlsa_name"], mx1["tlsa_lookup"], mx1["tlsa_secure"])
    assert tlsa == ("_25._tcp.mx1.bank.t", "NOERROR", True)
    assert sorted((r["record"], r["usage"], r["usable"]) for r in mx1["records"]) == [
        ("1 1 1 " + "cd" * 32, "PKIX-EE", False), ("3 1 1 " + "ab" * 32, "DANE-EE", True)]
    assert mx2["requirement"] == "encrypt" and mx2["records"][0]["problem"].startswith("PKIX-TA(0)")
    rules = [d["text"] for d in body["decisions"] if d["rule"] == "TLS-7"]
    assert rules[0] == "TLS level dane: the MX RRset of bank.t is secure"
    assert rules[1].startswith("mx1.bank.t: dane: ")
    assert rules[2].startswith("mx2.bank.t: encrypt: ")


def test_exp3_explain_insecure_and_failed_lookups(dns_server: DNSServer) -> None:
    dns_server.set_zone(zone(25, "mx1 3 1 1 " + "ab" * 32))
    # no AD anywhere: DANE does not apply, nothing asked
    body = json.loads(explain(dns_server, ["--json", "u@bank.t"], **DANE).stdout)
    assert body["dane"]["mx_secure"] is False
    hosts = [(h["requirement"], h["tlsa_name"]) for h in body["dane"]["hosts"]]
    assert hosts == [("may", None), ("may", None)]
    assert not any(q["qtype"] == "TLSA" for q in body["dns"])
    # secure, but mx1's TLSA lookup fails: delivery would skip mx1 (4.7.5); mx2 has none (secure
    # denial): may
    dns_server.secure = {".bank.t"}
    dns_server.fail("_25._tcp.mx1.bank.t", "SERVFAIL", "TLSA")
    body = json.loads(explain(dns_server, ["--json", "u@bank.t"], **DANE).stdout)
    mx1, mx2 = body["dane"]["hosts"]
    assert (mx1["requirement"], mx1["tlsa_lookup"]) == ("defer", "SERVFAIL")
    assert (mx2["requirement"], mx2["tlsa_lookup"], mx2["tlsa_secure"]) == ("may", "NXDOMAIN", True)
    # both hosts' TLSA lookups fail: delivery can try nothing now, explain says so (exit 75, 4.7.5)
    dns_server.fail("_25._tcp.mx2.bank.t", "TIMEOUT", "TLSA")
    proc = explain(dns_server, ["--json", "u@bank.t"], dns_timeout="0.3", dns_attempts="1", **DANE)
    body = json.loads(proc.stdout)
    assert proc.returncode == 75
    assert (body["status"], body["dsn_status"]) == ("temporary-failure", "4.7.5")
    assert body["reason"] == ("DANE: the TLSA lookup of every MX host of bank.t failed: "
                              "_25._tcp.mx1.bank.t (SERVFAIL), _25._tcp.mx2.bank.t (TIMEOUT)")
    dns_server.heal()
    # a domain at another level shows no DANE object
    proc = explain(dns_server, ["--json", "u@bank.t"], dns_trust_ad="true")
    assert json.loads(proc.stdout)["dane"] is None


def test_exp3_explain_text_has_a_dane_section(dns_server: DNSServer, tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    anchor = TestCA(tmp_path / "ta").der
    dns_server.set_zone(zone(25, "mx1 3 1 1 " + "ab" * 32, "mx2 2 1 1 " + "cd" * 32,
                             f"mx2 2 0 0 {anchor.hex()}"))
    dns_server.secure = {".bank.t"}
    out = explain(dns_server, ["u@bank.t"], **DANE).stdout
    # a full trust-anchor certificate is shortened to one line, with its size
    shown = f"{anchor.hex()[:54]}... ({len(anchor)} bytes)"
    assert f"_25._tcp.mx2.bank.t  2 0 0 {shown}  DANE-TA  usable" in out
    assert "tls policy  dane (from tls_policy_domains: bank.t)" in out
    assert "DANE (TLS-7, RFC 7672)  MX RRset: secure" in out
    [mx1] = [line.split() for line in out.splitlines()
             if line.split()[:2] == ["mx1.bank.t", "secure"]]
    assert mx1[2:5] == ["NOERROR,", "secure", "dane"]
    assert "_25._tcp.mx2.bank.t  2 1 1 " in out
    assert "DANE-TA other than 2 0 0 needs the peer's certificate chain" in out


def test_exp3_probe_checks_the_certificate_against_tlsa(
    dns_server: DNSServer, tmp_path: Path,
) -> None:
    from tests.support.tlsca import TestCA

    context, _, spki = TestCA(tmp_path / "ca").server_leaf("mx1.bank.t")
    with Sink("127.1.0.61", starttls=True) as sink:
        sink.tls_context = context
        args = ["--json", "--probe", "u@bank.t"]
        dns_server.secure = {".bank.t"}
        dns_server.set_zone(zone(sink.port, f"mx1 3 1 1 {hashlib.sha256(spki).hexdigest()}"))
        proc = explain(dns_server, args, smtp_port=str(sink.port), **DANE)
        probe = json.loads(proc.stdout)["probe"]
        assert (probe["tls_policy"], probe["tls_policy_satisfied"]) == ("dane", True)
        assert probe["tls_policy_result"] == "dane: certificate matched a TLSA record of mx1.bank.t"
        dns_server.set_zone(zone(sink.port, "mx1 3 1 1 " + "00" * 32))
        proc = explain(dns_server, args, smtp_port=str(sink.port), **DANE)
        probe = json.loads(proc.stdout)["probe"]
        assert probe["tls_policy_satisfied"] is False
        assert probe["tls_policy_result"] == (
            f"451 4.7.5 DANE: TLS authentication of mx1.bank.t[127.1.0.61]:{sink.port}"
            " failed: the certificate matches none of 1 DANE-EE record(s)")
        assert all(not c.transactions for c in sink.connections)


# --- the relay ----------------------------------------------------------------------------

def dane_zone(world: World, record: str) -> None:
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n"
               f"_{world.sink_port}._tcp.mx1.dest IN TLSA {record}\n")
    world.dns.secure = {".dest.test"}


def test_tls7_relay_delivers_to_a_matching_host_over_tls(world: World, tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    context, _, spki = TestCA(tmp_path / "ca").server_leaf("mx1.dest.test")
    dane_zone(world, f"3 1 1 {hashlib.sha256(spki).hexdigest()}")
    sink = world.sink(1, starttls=True)
    sink.tls_context = context
    relay = world.relay(dns_trust_ad=True, tls_policy="dane")
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert sink.connections[0].tls and wait_for(lambda: relay.queued() == [])
    assert "status=sent" in relay.logged("status=sent")


def test_tls7_relay_defers_a_mismatched_host_4_7_5_never_plain_text(
    world: World, tmp_path: Path,
) -> None:
    from tests.support.tlsca import TestCA

    context, _, _ = TestCA(tmp_path / "ca").server_leaf("mx1.dest.test")
    dane_zone(world, "3 1 1 " + "00" * 32)
    sink = world.sink(1, starttls=True)
    sink.tls_context = context
    relay = world.relay(dns_trust_ad=True, tls_policy="dane", retry_min_seconds=300,
                        retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: "status=deferred" in relay.log())
    (queue_id,) = relay.queued()
    [rcpt] = json.loads(relay.queue("show", queue_id, "--json").stdout)["recipients"]
    assert rcpt["status"] == "4.7.5"
    assert rcpt["reply"].startswith("451 4.7.5 DANE: TLS authentication of mx1.dest.test[")
    assert "TLS-7" in relay.logged("TLS-7")
    assert sink.messages == [] and all(not c.transactions for c in sink.connections)
    assert all("MAIL" not in " ".join(c.commands) for c in sink.connections)


def test_tls7_dane_without_dns_trust_ad_is_a_config_error(world: World) -> None:
    """`serve` refuses to start (78, one line): DANE on answers nobody validated would be no DANE
    at all."""
    relay = Relay(world.tmp, world.dns, world.sink_port, tls_policy="dane")
    proc = subprocess.run([sys.executable, "-m", "mxroute", "serve"], cwd=ROOT, env=relay.env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 78
    assert proc.stderr.strip() == (
        "mxroute: configuration error: invalid settings: the TLS level dane needs "
        "dns_trust_ad = true (dns_servers must be a DNSSEC-validating resolver; TLS-7)")


def test_exp3_recorded_dane_decision_replays_offline(dns_server: DNSServer, tmp_path: Path) -> None:
    """`--record` keeps which answers were secure (as `; mxroute: SECURE name type`); `--zone`
    replays them."""
    dns_server.set_zone(zone(25, "mx1 3 1 1 " + "ab" * 32, "mx2 1 1 1 " + "cd" * 32))
    dns_server.secure = {".bank.t"}
    dns_server.fail("_25._tcp.mx2.bank.t", "SERVFAIL", "TLSA")
    recording = tmp_path / "bank.zone"
    args = ["--json", "--record", str(recording), "u@bank.t"]
    live = json.loads(explain(dns_server, args, **DANE).stdout)
    assert "; mxroute: SECURE bank.t. MX" in recording.read_text()
    dns_server.stop()
    command = [sys.executable, "-m", "mxroute", "explain", "--json", "--zone", str(recording),
               "u@bank.t"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MXROUTE_HELO_NAME": "me.t",
           "MXROUTE_DNS_TRUST_AD": "true", "MXROUTE_TLS_POLICY": "dane",
           "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true"}
    replay = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
                            check=False)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["dane"] == live["dane"]
    assert [h["requirement"] for h in live["dane"]["hosts"]] == ["dane", "defer"]
