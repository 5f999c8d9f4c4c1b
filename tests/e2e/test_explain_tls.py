"""EXP-3 (the configured TLS policy part): `mxroute explain` shows the destination's effective TLS
policy, looked up by the same function delivery uses (TLS-3), and `--probe` says whether the
probed host would satisfy it. MTA-STS (TLS-5/6) is in test_mta_sts_e2e.py; DANE (TLS-7) is not
implemented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import explain
from tests.support.smtpsink import Sink, tls_available

ZONE = """
$ORIGIN t.
$TTL 300
@       IN SOA ns.t. host.t. 1 3600 600 86400 60
bank    IN MX 10 mx.bank.t.
mx.bank IN A 127.0.1.51
shop    IN MX 10 mx.shop.t.
mx.shop IN A 127.0.1.52
"""


@pytest.fixture
def dns(dns_server: DNSServer) -> DNSServer:
    dns_server.set_zone(ZONE)
    return dns_server


def test_exp3_json_and_text_show_the_effective_policy(dns: DNSServer) -> None:
    table = {"bank.t": "verify", ".t": "encrypt"}
    body = json.loads(explain(dns, ["--json", "u@bank.t"], tls_policy_domains=table).stdout)
    assert body["tls"] == {"policy": "verify", "source": "tls_policy_domains", "match": "bank.t"}
    body = json.loads(explain(dns, ["--json", "u@shop.t"], tls_policy_domains=table).stdout)
    assert body["tls"] == {"policy": "encrypt", "source": "tls_policy_domains", "match": ".t"}
    body = json.loads(explain(dns, ["--json", "u@shop.t"]).stdout)
    assert body["tls"] == {"policy": "may", "source": "tls_policy"} and body["probe"] is None
    text = explain(dns, ["u@bank.t"], tls_policy_domains=table).stdout
    assert "tls policy  verify (from tls_policy_domains: bank.t)" in text
    assert (
        "tls policy  none (from tls_policy)" in explain(dns, ["u@shop.t"], tls_policy="none").stdout
    )


def test_exp3_bad_policy_is_a_config_error(dns: DNSServer) -> None:
    result = explain(dns, ["u@bank.t"], tls_policy="strict")
    assert (
        result.returncode == 78
        and result.stderr.count("\n") == 1
        and "setting tls_policy" in result.stderr
    )


def test_exp3_probe_host_without_starttls_fails_encrypt(dns: DNSServer) -> None:
    with Sink("127.0.1.52") as sink:
        result = explain(
            dns, ["--json", "--probe", "u@shop.t"], smtp_port=str(sink.port), tls_policy="encrypt"
        )
        probe = json.loads(result.stdout)["probe"]
        assert probe["starttls"] == "not offered" and probe["tls_policy"] == "encrypt"
        assert probe["tls_policy_satisfied"] is False
        assert probe["tls_policy_result"] == (
            f"451 4.7.5 TLS required (encrypt) but not offered by mx.shop.t[127.0.1.52]:{sink.port}"
        )
        assert all(not c.transactions for c in sink.connections)
        text = explain(
            dns, ["--probe", "u@shop.t"], smtp_port=str(sink.port), tls_policy="encrypt"
        ).stdout
        assert (
            "tls_policy_result" in text and "4.7.5 TLS required (encrypt) but not offered" in text
        )


def test_exp3_probe_may_is_always_satisfied(dns: DNSServer) -> None:
    with Sink("127.0.1.52") as sink:
        probe = json.loads(
            explain(dns, ["--json", "--probe", "u@shop.t"], smtp_port=str(sink.port)).stdout
        )["probe"]
        assert probe["tls_policy"] == "may" and probe["tls_policy_satisfied"] is True
        assert probe["tls_policy_result"].startswith("may: STARTTLS not offered")


@pytest.mark.skipif(
    not tls_available(), reason="the cryptography package is needed for certificates"
)
def test_exp3_probe_verify_with_ca_and_mx_certificate(dns: DNSServer, tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    sink = Sink("127.0.1.51", starttls=True)
    sink.tls_context = ca.server_context("mx.bank.t")
    with sink:
        args = ["--json", "--probe", "u@bank.t"]
        probe = json.loads(explain(dns, args, smtp_port=str(sink.port), tls_policy="verify",
                                   tls_ca_file=str(ca.ca_file)).stdout)["probe"]
        assert probe["starttls"].startswith("ok: TLS")
        assert (probe["tls_policy_satisfied"], probe["tls_policy_result"]) == (
            True, "verify: certificate verified for mx.bank.t")
        # without the CA the same host fails verification: delivery would defer it
        probe = json.loads(
            explain(dns, args, smtp_port=str(sink.port), tls_policy="verify").stdout
        )["probe"]
        assert probe["tls_policy_satisfied"] is False
        assert probe["tls_policy_result"].startswith(
            "451 4.7.5 TLS certificate verification failed for mx.bank.t"
        )
        # encrypt does not look at the certificate
        probe = json.loads(
            explain(dns, args, smtp_port=str(sink.port), tls_policy="encrypt").stdout
        )["probe"]
        assert probe["tls_policy_satisfied"] is True
        assert all(not c.transactions for c in sink.connections)
