"""TLS-5, TLS-6 and EXP-3 (MTA-STS) through the real program: `mxroute serve` and
`mxroute explain --json`.

The loopback DNS server publishes `_mta-sts.dest.test`, a real HTTPS server on 127.1.N.80
serves the policy with a certificate from tests/support/tlsca.py (``mta_sts_port`` and
``tls_ca_file`` are the test overrides), and the MX hosts are SMTP sinks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.relay import MSG, ROOT, World, free_port, scrape, wait_for
from tests.support.smtpsink import Sink, tls_available
from tests.support.stsserver import PolicyServer
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.skipif(not tls_available(),
                                reason="the cryptography package is needed for certificates")
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 86400\n"


def zone(world: World, txt_id: str = "one") -> None:
    world.zone(f"dest IN MX 5 mx2.dest.test.\ndest IN MX 10 mx1.dest.test.\n"
               f"mx1.dest IN A {world.ip(1)}\nmx2.dest IN A {world.ip(2)}\n"
               f"mta-sts.dest IN A {world.ip(80)}\n"
               f'_mta-sts.dest IN TXT "v=STSv1; id={txt_id}"\n'
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n")


def tls_sink(world: World, n: int, context: Any) -> Sink:
    sink = world.sink(n, starttls=True)
    sink.tls_context = context  # read at each connection
    return sink


def test_tls6_serve_delivers_only_to_the_policy_mx_and_keeps_the_policy(world: World) -> None:
    ca = TestCA(world.tmp / "ca")
    zone(world)
    mx2 = world.sink(2)  # the preferred MX, no TLS, not in the policy: must not be contacted
    mx1 = tls_sink(world, 1, ca.server_context("mx1.dest.test"))
    metrics = free_port()
    with PolicyServer(world.ip(80), ca.server_context("mta-sts.dest.test"), ENFORCE) as web:
        relay = world.relay(mta_sts_port=web.port, tls_ca_file=str(ca.ca_file),
                            metrics_listen=f"127.0.0.1:{metrics}")
        relay.send("a@sender.test", ["u@dest.test"], MSG)
        assert wait_for(lambda: mx1.messages, timeout=20), relay.log()
        assert mx2.connections == [] and mx1.connections[0].tls and len(web.requests) == 1
    assert wait_for(lambda: relay.queued() == [])
    seen = scrape(metrics)  # what an operator graphs: one fetch, one policy kept, mx2 skipped
    assert seen["mxroute_mta_sts_fetches_total"] == 1
    assert seen["mxroute_mta_sts_fetch_failures_total"] == 0
    assert seen["mxroute_mta_sts_policies"] == 1
    assert seen['mxroute_outbound_sessions_total{event="policy_skips"}'] >= 1
    log = relay.logged("MTA-STS policy of dest.test", "mx2.dest.test matches no mx pattern")
    assert "MTA-STS policy of dest.test: id one, mode enforce, mx mx1.dest.test" in log
    assert "mx2.dest.test matches no mx pattern" in log
    stored = json.loads((relay.spool / "mta-sts.json").read_text())
    assert stored["policies"]["dest.test"]["id"] == "one"


def test_tls6_serve_invalid_certificate_defers_4_7_5_without_plain_text(world: World) -> None:
    ca = TestCA(world.tmp / "ca")
    zone(world)
    mx1 = tls_sink(world, 1, ca.server_context("wrong.dest.test"))
    with PolicyServer(world.ip(80), ca.server_context("mta-sts.dest.test"), ENFORCE) as web:
        relay = world.relay(mta_sts_port=web.port, tls_ca_file=str(ca.ca_file))
        relay.send("a@sender.test", ["u@dest.test"], MSG)
        assert wait_for(lambda: "4.7.5" in relay.queue("show", relay.queued()[0]).stdout
                        if relay.queued() else False)
    assert mx1.messages == [] and all("MAIL" not in " ".join(c.commands) for c in mx1.connections)
    assert relay.queued(), "deferred, never bounced nor dropped"


def explain(dns: DNSServer, args: list[str], **settings: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update({"MXROUTE_HELO_NAME": "me.test", "PYTHONPATH": str(ROOT),
                "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true"})
    env.update({f"MXROUTE_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in settings.items()})
    return subprocess.run([sys.executable, "-m", "mxroute", "explain", "--dns", dns.address, *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
                          check=False)


def test_exp3_explain_json_and_text_show_the_mta_sts_decision(world: World, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    zone(world)
    with PolicyServer(world.ip(80), ca.server_context("mta-sts.dest.test"), ENFORCE) as web:
        settings = {"mta_sts_port": web.port, "tls_ca_file": str(ca.ca_file),
                    "spool_dir": str(tmp_path / "spool")}
        result = explain(world.dns, ["--json", "u@dest.test"], **settings)
        assert result.returncode == 0, result.stderr
        sts = json.loads(result.stdout)["mta_sts"]
        state = (sts["applied"], sts["txt"], sts["txt_id"], sts["source"])
        assert state == (True, "found", "one", "fetched")
        assert sts["policy"] == {"mode": "enforce", "mx": ["mx1.dest.test"], "max_age": 86400}
        assert sts["policy_id"] == "one" and sts["age"] == 0 and sts["error"] is None
        hosts = {h["exchange"]: h for h in sts["hosts"]}
        assert hosts["mx1.dest.test"]["eligible"] is True
        assert hosts["mx1.dest.test"]["tls"] == "verify"
        assert hosts["mx2.dest.test"] == {
            "exchange": "mx2.dest.test", "eligible": False, "tls": None,
            "reason": "451 4.7.5 MTA-STS policy of dest.test (enforce): "
                      "mx2.dest.test matches no mx pattern of the MTA-STS policy"}
        queries = json.loads(result.stdout)["dns"]
        assert any(q["qname"] == "_mta-sts.dest.test" and q["qtype"] == "TXT" for q in queries)
        text = explain(world.dns, ["u@dest.test"], **settings).stdout
        assert "mta-sts     enforce, mx mx1.dest.test, id one, max_age 86400 (fetched now)" in text
        assert "MTA-STS  (TXT id one; RFC 8461)" in text and "mx2.dest.test  no" in text
        web.status = 301
        result = explain(world.dns, ["--json", "u@dest.test"], **settings)
        sts = json.loads(result.stdout)["mta_sts"]
        assert (sts["source"], sts["policy"]) == ("none", None)
        assert "HTTP status 301" in sts["error"]
        assert all(h["eligible"] for h in sts["hosts"])
    table = explain(world.dns, ["--json", "u@dest.test"], tls_policy_domains={"dest.test": "may"})
    assert json.loads(table.stdout)["mta_sts"] == {
        "applied": False, "reason": "tls_policy_domains entry dest.test takes precedence"}
    off = explain(world.dns, ["--json", "u@dest.test"], mta_sts=False)
    assert json.loads(off.stdout)["mta_sts"] == {"applied": False, "reason": "mta_sts = false"}


def test_exp3_probe_contacts_only_the_host_delivery_would_use(world: World, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    zone(world)
    mx2 = world.sink(2)  # preferred, but ruled out by the policy
    mx1 = tls_sink(world, 1, ca.server_context("mx1.dest.test"))
    with PolicyServer(world.ip(80), ca.server_context("mta-sts.dest.test"), ENFORCE) as web:
        result = explain(world.dns, ["--json", "--probe", "u@dest.test"], mta_sts_port=web.port,
                         tls_ca_file=str(ca.ca_file), smtp_port=world.sink_port,
                         spool_dir=str(tmp_path / "spool"))
    probe = json.loads(result.stdout)["probe"]
    assert probe["target"] == f"mx1.dest.test[{world.ip(1)}]:{world.sink_port}"
    assert (probe["tls_policy"], probe["tls_policy_satisfied"]) == ("verify", True)
    assert probe["tls_policy_result"] == "verify: certificate verified for mx1.dest.test"
    refusal = ("451 4.7.5 MTA-STS policy of dest.test (enforce): "
               "mx2.dest.test matches no mx pattern of the MTA-STS policy")
    assert probe["skipped"] == [f"mx2.dest.test[{world.ip(2)}]:{world.sink_port}: {refusal}"]
    assert mx2.connections == [] and all(not c.transactions for c in mx1.connections)
