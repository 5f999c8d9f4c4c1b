"""Issue 16 §1: ``mxroute explain`` shows the ``routes`` rule that applies and the plan it
yields, text and JSON (``route``: the rule's object, or null), by the same ``route()`` delivery
calls; ``--sender`` chooses a sender-dependent rule (EXP-1, EXP-2)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import run_explain

ZONE = """
$ORIGIN t.
$TTL 300
@         IN SOA ns.t. host.t. 1 3600 600 86400 60
dest      IN MX 10 mx.dest.t.
mx.dest   IN A 192.0.2.10
hub       IN MX 10 mx.hub.t.
mx.hub    IN A 127.0.5.3
relay     IN A 127.0.5.4
"""


@pytest.fixture
def dns(dns_server: DNSServer) -> DNSServer:
    dns_server.set_zone(ZONE)
    return dns_server


def explain(dns: DNSServer, args: list[str], routes: list[dict[str, Any]]) -> Any:
    """``explain --dns`` with ``routes`` and allow_private_destinations left false."""
    return run_explain(["--dns", dns.address, *args],
                       {"MXROUTE_ROUTES": json.dumps(routes), "MXROUTE_CONNECT_TIMEOUT": "2"})


RULES = [
    {"match": "*", "sender": "@vip.t", "next_hop": "[relay.t]:2600"},
    {"match": "dest.t", "next_hop": "hub.t:2525"},
]


def test_json_route_object_and_the_hop_plan(dns: DNSServer) -> None:
    """issue 16: ``route`` names the rule; the plan is the MX of hub.t at port 2525, a loopback
    address allowed for the configured hop; TLS from the rule, MTA-STS not consulted."""
    done = explain(dns, ["--json", "u@dest.t"], RULES)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["route"] == {"rule": 2, "match": "dest.t", "sender": None,
                             "next_hop": "hub.t:2525", "mx_lookup": True,
                             "implicit_tls": False, "auth": False, "tls": None}
    assert [(t["exchange"], t["address"], t["port"]) for t in body["plan"]] == [
        ("mx.hub.t", "127.0.5.3", 2525)]
    assert [m["exchange"] for m in body["mx"]] == ["mx.hub.t"]
    assert body["decisions"][0]["rule"] == "ROUTE"
    assert body["decisions"][0]["ref"] == "routes rule 2"
    assert body["tls"] == {"policy": "may", "source": "routes", "match": "rule 2"}
    assert body["mta_sts"]["applied"] is False and "next hop" in body["mta_sts"]["reason"]


def test_text_names_the_rule(dns: DNSServer) -> None:
    """issue 16: the text form has a ``route`` line and the hop's MX heading."""
    done = explain(dns, ["u@dest.t"], RULES)
    assert done.returncode == 0, done.stderr
    assert "rule 2 (dest.t) → hub.t:2525" in done.stdout
    assert "MX records of hub.t" in done.stdout
    assert re.search(r"1\s+mx\.hub\.t\s+10\s+127\.0\.5\.3\s+IPv4\s+2525", done.stdout)
    assert "tls policy  may (from routes: rule 2)" in done.stdout


def test_route_is_null_without_a_matching_rule(dns: DNSServer) -> None:
    """issue 16: no rule for the domain → ``route`` null, the MX plan at port 25 (the private
    screen applies as ever)."""
    done = explain(dns, ["--json", "u@hub.t"], RULES)
    body = json.loads(done.stdout)
    assert body["route"] is None
    assert [t["exchange"] for t in body["plan"]] == []
    assert body["status"] == "permanent-failure" and done.returncode == 69
    assert any(p["reason"] == "blocked-address" for p in body["pruned"])
    text = explain(dns, ["u@hub.t"], RULES).stdout
    assert "→" not in text


def test_sender_chooses_the_sender_rule(dns: DNSServer) -> None:
    """issue 16: ``--sender boss@vip.t`` → rule 1 ([relay.t]:2600, no MX lookup); without
    ``--sender`` a sender-dependent rule does not apply."""
    done = explain(dns, ["--json", "--sender", "boss@vip.t", "u@dest.t"], RULES)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["route"]["rule"] == 1 and body["route"]["sender"] == "@vip.t"
    assert [(t["exchange"], t["address"], t["port"]) for t in body["plan"]] == [
        ("relay.t", "127.0.5.4", 2600)]
    assert body["mx"] == []
    other = json.loads(explain(dns, ["--json", "--sender", "a@x.t", "u@dest.t"], RULES).stdout)
    assert other["route"]["rule"] == 2


def test_auth_rule_shows_auth_never_the_secret(dns: DNSServer, tmp_path: Path) -> None:
    """issue 16: ``auth`` true and TLS ``verify`` for a rule with AUTH; the secret's file is not
    read by explain and its content appears nowhere."""
    secret = tmp_path / "upstream.secret"
    secret.write_text("s3cr3t-Value\n")
    rules = [{"match": "*", "next_hop": "smtps://relay.t",
              "auth": {"username": "app", "password_file": str(secret)}}]
    for args in (["--json", "u@dest.t"], ["u@dest.t"]):
        done = explain(dns, args, rules)
        assert done.returncode == 0, done.stderr
        assert "s3cr3t" not in done.stdout + done.stderr
    body = json.loads(explain(dns, ["--json", "u@dest.t"], rules).stdout)
    assert body["route"]["auth"] is True and body["route"]["implicit_tls"] is True
    assert body["tls"]["policy"] == "verify"
    assert [t["port"] for t in body["plan"]] == [465]


def test_unusable_hop_is_temporary(dns: DNSServer) -> None:
    """issue 16: a hop that does not exist → temporary-failure (exit 75), never permanent."""
    done = explain(dns, ["--json", "u@dest.t"], [{"match": "*", "next_hop": "[gone.t]:2600"}])
    body = json.loads(done.stdout)
    assert done.returncode == 75 and body["status"] == "temporary-failure"
    assert body["dsn_status"].startswith("4.") and "[gone.t]:2600" in body["reason"]


DANE_ZONE = """
$ORIGIN t.
$TTL 300
@         IN SOA ns.t. host.t. 1 3600 600 86400 60
hub       IN MX 10 mx1.hub.t.
mx1.hub   IN A 127.1.0.71
_2526._tcp.mx1.hub.t. IN TLSA 3 1 1 {digest}
"""


@pytest.mark.parametrize("next_hop", ["[mx1.hub.t]:2526", "hub.t:2526"])
def test_dane_at_the_next_hop_when_its_tls_says_so(dns_server: DNSServer, next_hop: str) -> None:
    """issue 16 + TLS-7: a rule with tls = "dane" → the TLSA records of the hop's host at the
    rule's port (for [host] its secure address records stand for the MX RRset: no MX is asked)."""
    dns_server.set_zone(DANE_ZONE.format(digest="ab" * 32))
    dns_server.secure = {".hub.t"}
    rules = [{"match": "*", "next_hop": next_hop, "tls": "dane"}]
    done = run_explain(["--dns", dns_server.address, "--json", "u@dest.t"],
                       {"MXROUTE_ROUTES": json.dumps(rules), "MXROUTE_DNS_TRUST_AD": "true"})
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["tls"] == {"policy": "dane", "source": "routes", "match": "rule 1"}
    (host,) = body["dane"]["hosts"]
    assert (host["exchange"], host["requirement"]) == ("mx1.hub.t", "dane")
    assert host["tlsa_name"] == "_2526._tcp.mx1.hub.t"
    assert body["dane"]["mx_secure"] is True
    assert not any(q["qname"] == "dest.t" for q in body["dns"])


def test_probe_speaks_implicit_tls_to_an_smtps_hop(dns: DNSServer, tmp_path: Path) -> None:
    """issue 16 §1, RFC 8314 §3.3, EXP-3: ``explain --probe`` reaches an ``smtps://`` next hop
    as delivery does, TLS from the first byte (not a plain-text greeting it would wait for in
    vain), verifies the hop's certificate and reports the TLS verdict."""
    from tests.support.relay import free_port
    from tests.support.smtpsink import Sink, tls_available
    from tests.support.tlsca import TestCA

    if not tls_available():
        pytest.skip("the cryptography package is needed for certificates")
    ca = TestCA(tmp_path / "ca")
    sink = Sink("127.0.5.4", free_port(), implicit_tls=True)
    sink.tls_context = ca.server_context("relay.t")
    sink.start()
    try:
        rules = [{"match": "dest.t", "next_hop": f"smtps://relay.t:{sink.port}"}]
        done = run_explain(["--dns", dns.address, "--json", "--probe", "u@dest.t"],
                           {"MXROUTE_ROUTES": json.dumps(rules), "MXROUTE_CONNECT_TIMEOUT": "5",
                            "MXROUTE_TLS_CA_FILE": str(ca.ca_file)})
        probe = json.loads(done.stdout)["probe"]
        assert probe["target"] == f"relay.t[127.0.5.4]:{sink.port}", probe
        assert probe["banner_code"] == 220
        assert probe["starttls"].startswith("implicit: ok"), probe
        assert (probe["tls_policy"], probe["tls_policy_satisfied"]) == ("verify", True), probe
        assert not sink.messages
    finally:
        sink.stop()
