"""`mxroute explain` through the real CLI against a real loopback DNS server (EXP-1, EXP-2, EXP-5,
MX-*)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.explaincli import run_explain

ZONE = """
$ORIGIN t.
$TTL 300
@         IN SOA ns.t. host.t. 1 3600 600 86400 60
pref      IN MX 20 b.t.
pref      IN MX 10 a.t.
pref      IN MX 30 c.t.
a         IN A 127.0.1.1
b         IN A 127.0.1.2
c         IN A 127.0.1.3
implicit  IN A 127.0.1.3
nullmx    IN MX 0 .
nullmx    IN A 127.0.1.1
mixednull IN MX 0 .
mixednull IN MX 10 a.t.
noaddr    IN MX 10 nothing.t.
noaddr    IN A 127.0.1.1
numeric   IN MX 10 127.0.0.2.
alias     IN CNAME pref.t.
cnamemx   IN MX 10 mxalias.t.
mxalias   IN CNAME a.t.
self      IN MX 10 me.t.
self      IN MX 20 b.t.
selflast  IN MX 10 b.t.
selflast  IN MX 20 me.t.
me        IN A 127.0.9.9
private   IN MX 10 p.t.
p         IN A 10.1.1.1
p         IN A 169.254.169.254
p         IN AAAA ::ffff:127.0.0.1
dual      IN MX 10 d6.t.
d6        IN AAAA ::1
d6        IN A 127.0.1.6
halfbad   IN MX 10 sf.t.
halfbad   IN MX 20 nothing.t.
spf       IN TXT "v=spf1 ip4:127.0.0.2 -all"
relay     IN A 127.0.0.2
relay     IN TXT "v=spf1 ip4:127.0.0.2 -all"
2.0.0.127.in-addr.arpa. IN PTR relay.t.
"""


@pytest.fixture
def dns(dns_server: DNSServer) -> DNSServer:
    dns_server.set_zone(ZONE)
    dns_server.fail("sf.t")
    return dns_server


def as_json(
    dns: DNSServer, address: str, *extra: str, private: bool = True
) -> tuple[int, dict[str, Any]]:
    env = {
        "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true" if private else "false",
        "MXROUTE_DNS_TIMEOUT": "0.5",
    }
    result = run_explain(["--dns", dns.address, "--json", "--seed", "1", address, *extra], env)
    assert result.stderr == "" or result.returncode != 0, result.stderr
    return result.returncode, json.loads(result.stdout)


CASES = [
    # (address, exit code, status, plan addresses, pruned reasons, rule) — one per MX-* scenario
    ("u@pref.t", 0, "deliverable", ["127.0.1.1", "127.0.1.2", "127.0.1.3"], [], "MX-2"),
    ("u@implicit.t", 0, "deliverable", ["127.0.1.3"], [], "MX-7"),
    ("u@nx.t", 69, "permanent-failure", [], [], "MX-5"),
    ("u@nullmx.t", 69, "permanent-failure", [], [], "MX-10"),
    ("u@mixednull.t", 0, "deliverable", ["127.0.1.1"], ["null-mx-mixed"], None),
    ("u@noaddr.t", 69, "permanent-failure", [], ["no-address"], "MX-9"),
    ("u@numeric.t", 69, "permanent-failure", [], ["numeric-mx-target"], "MX-9"),
    ("u@alias.t", 0, "deliverable", ["127.0.1.1", "127.0.1.2", "127.0.1.3"], [], "MX-4"),
    ("u@cnamemx.t", 0, "deliverable", ["127.0.1.1"], [], "MX-12"),
    ("u@self.t", 69, "permanent-failure", [], ["self", "self"], "MX-11"),
    ("u@selflast.t", 0, "deliverable", ["127.0.1.2"], ["self"], "MX-11"),
    ("u@dual.t", 0, "deliverable", ["::1", "127.0.1.6"], [], "MX-15"),
    ("u@halfbad.t", 75, "temporary-failure", [], ["no-address"], "MX-9"),
    ("u@sf.t", 75, "temporary-failure", [], [], "MX-6"),
    # issue 16 §2: routed (MX-13), but the intake refuses literals (allow_address_literals)
    ("u@[127.0.0.4]", 69, "permanent-failure", ["127.0.0.4"], [], "MX-13"),
]


@pytest.mark.parametrize(
    ("address", "code", "status", "plan", "pruned", "rule"), CASES, ids=[c[0] for c in CASES]
)
def test_exp1_golden_cases(
    dns: DNSServer,
    address: str,
    code: int,
    status: str,
    plan: list[str],
    pruned: list[str],
    rule: str | None,
) -> None:
    returncode, body = as_json(dns, address)
    assert (returncode, body["status"]) == (code, status), body["reason"]
    assert [p["address"] for p in body["plan"]] == plan
    assert [p["reason"] for p in body["pruned"]] == pruned
    if rule:
        assert rule in {d["rule"] for d in body["decisions"]}


def test_exp1_json_has_every_contract_key(dns: DNSServer) -> None:
    _, body = as_json(dns, "u@pref.t")
    for key in (
        "address",
        "domain",
        "status",
        "reason",
        "null_mx",
        "implicit_mx",
        "mx",
        "plan",
        "pruned",
        "spf",
        "ptr",
        "dns",
    ):
        assert key in body
    assert body["mx"][0] == {"preference": 10, "exchange": "a.t", "ttl": 300}
    assert body["plan"][0] == {
        "exchange": "a.t",
        "preference": 10,
        "address": "127.0.1.1",
        "family": 4,
        "port": 25,
    }
    assert {"qname", "qtype", "rcode", "answers", "ttl", "ms", "cached"} <= set(body["dns"][0])
    assert body["dns"][0]["qname"] == "pref.t" and body["dns"][0]["qtype"] == "MX"


def test_mx10_null_mx_reason_and_status(dns: DNSServer) -> None:
    _, body = as_json(dns, "u@nullmx.t")
    assert (
        body["null_mx"] is True and body["dsn_status"] == "5.1.10" and "RFC 7505" in body["reason"]
    )
    assert not any(q["qtype"] in ("A", "AAAA") for q in body["dns"])  # never falls back to A


def test_sec11_private_targets_pruned_by_default(dns: DNSServer) -> None:
    code, body = as_json(dns, "u@private.t", private=False)
    assert code == 69 and body["dsn_status"] == "5.4.4"
    assert {p["address"] for p in body["pruned"]} == {
        "10.1.1.1",
        "169.254.169.254",
        "::ffff:7f00:1",
    }
    assert all(p["reason"] == "blocked-address" for p in body["pruned"])


def test_family_setting_and_cap(dns: DNSServer) -> None:
    _, body = as_json(dns, "u@dual.t")
    assert [p["family"] for p in body["plan"]] == [6, 4]
    env = {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true", "MXROUTE_ADDRESS_FAMILY": "ipv4-only"}
    result = run_explain(["--dns", dns.address, "--json", "u@dual.t"], env)
    assert [p["address"] for p in json.loads(result.stdout)["plan"]] == ["127.0.1.6"]


def test_exp1_record_then_replay_offline(dns: DNSServer, tmp_path: Path) -> None:
    recording = tmp_path / "case.zone"
    for address in ("u@pref.t", "u@nullmx.t", "u@implicit.t", "u@nx.t", "u@halfbad.t"):
        _, live = as_json(dns, address, "--record", str(recording))
        env = {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true"}
        replay = run_explain(["--zone", str(recording), "--json", "--seed", "1", address], env)
        offline = json.loads(replay.stdout)
        for key in ("status", "reason", "plan", "pruned", "mx", "null_mx", "implicit_mx"):
            assert offline[key] == live[key], (address, key)


def test_demo_zone_text_output() -> None:
    result = run_explain(["--zone", "config/demo.zone", "--seed", "1", "user@demo.example"])
    assert result.returncode == 0, result.stderr
    assert "deliverable" in result.stdout and "Plan (the order delivery will try)" in result.stdout
    assert "\x1b[" not in result.stdout  # no colour when not a terminal


def test_exp5_exit_64_for_a_malformed_address() -> None:
    result = run_explain(["--zone", "config/demo.zone", "not an address"])
    assert (
        result.returncode == 64
        and "Traceback" not in result.stderr
        and result.stderr.count("\n") == 1
    )


def test_exit_78_for_a_bad_setting() -> None:
    result = run_explain(
        ["--zone", "config/demo.zone", "u@demo.example"], {"MXROUTE_SMTP_PORT": "99999"}
    )
    assert (
        result.returncode == 78
        and "smtp_port" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_exit_64_for_bad_arguments() -> None:
    result = run_explain(["--no-such-flag", "u@demo.example"])
    assert result.returncode == 64


def test_exp5_a_malformed_dns_argument_is_a_usage_error_but_as_a_setting_a_config_error() -> None:
    result = run_explain(["--dns", "not an ip", "u@demo.example"])
    assert result.returncode == 64 and "--dns" in result.stderr and "Traceback" not in result.stderr
    result = run_explain(
        ["--zone", "config/demo.zone", "u@demo.example"], {"MXROUTE_DNS_SERVERS": '["not an ip"]'}
    )
    assert result.returncode == 78 and "dns_servers" in result.stderr


def test_exp1_probe_reports_banner_and_extensions_and_sends_no_mail(dns_server: DNSServer) -> None:
    from tests.support.smtpsink import Sink

    with Sink("127.0.1.41") as sink:  # nothing listens on 127.0.1.40: refused
        dns_server.set_zone("""
$ORIGIN p.
$TTL 300
@ IN SOA ns.p. h.p. 1 3600 600 86400 60
@ IN MX 10 down.p.
@ IN MX 20 up.p.
down IN A 127.0.1.40
up IN A 127.0.1.41
""")
        env = {
            "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true",
            "MXROUTE_SMTP_PORT": str(sink.port),
            "MXROUTE_CONNECT_TIMEOUT": "2",
        }
        result = run_explain(["--dns", dns_server.address, "--json", "--probe", "u@p"], env)
        body = json.loads(result.stdout)
        probe = body["probe"]
        assert probe["target"].startswith("up.p[127.0.1.41]"), probe
        assert probe["banner_code"] == 220 and "PIPELINING" in [
            e.upper() for e in probe["extensions"]
        ]
        assert probe["unreachable"] and "down.p" in probe["unreachable"][0]
        assert all(not c.transactions for c in sink.connections)  # EXP-1: no mail sent


# --- EXP-4: the sending identity (contract: "spf" and "ptr" objects) ------------------------------


def test_exp4_json_spf_and_ptr_objects_per_contract(dns: DNSServer) -> None:
    code, body = as_json(
        dns,
        "u@pref.t",
        "--sender",
        "a@spf.t",
        "--egress-ip",
        "127.0.0.2",
        "--egress-ip",
        "127.0.0.3",
        "--helo",
        "relay.t",
    )
    assert code == 0  # identity warnings never change the routing verdict
    spf, ptr = body["spf"], body["ptr"]
    assert (spf["result"], spf["sender"], spf["ip"]) == ("pass", "a@spf.t", "127.0.0.2")
    assert (
        spf["trace"]
        and spf["trace"][0]["term"] == "record"
        and spf["trace"][0]["domain"] == "spf.t"
    )
    assert (ptr["ip"], ptr["names"], ptr["forward_confirmed"], ptr["helo_matches"]) == (
        "127.0.0.2",
        ["relay.t"],
        True,
        True,
    )
    first, second = body["identity"]
    assert first["spf"] == spf and first["ptr"] == ptr and first["warnings"] == []
    assert second["spf"]["result"] == "fail" and second["ptr"]["forward_confirmed"] is False
    codes = [w["code"] for w in second["warnings"]]
    assert codes[0] == "spf-fail" and "ptr-missing" in codes and "helo-no-address" in codes
    assert second["warnings"][0]["fix"] == "add ip4:127.0.0.3 to spf.t's SPF record"
    assert any(
        q["qtype"] == "TXT" and q["qname"] == "spf.t" for q in body["dns"]
    )  # identity lookups are in the trace


def test_exp4_no_egress_ip_means_no_verdicts(dns: DNSServer) -> None:
    _, body = as_json(dns, "u@pref.t", "--sender", "a@spf.t")
    assert body["spf"] is None and body["ptr"] is None and body["identity"] == []
    # no SPF or PTR lookups (the only TXT question is delivery's MTA-STS one, TLS-5)
    assert not any(
        q["qtype"] in ("TXT", "PTR") and not q["qname"].startswith("_mta-sts.") for q in body["dns"]
    )


def test_exp4_settings_supply_egress_ips_and_sender_domain(dns: DNSServer) -> None:
    env = {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true", "MXROUTE_EGRESS_IPS": '["127.0.0.2"]',
           "MXROUTE_SENDER_DOMAIN": "spf.t", "MXROUTE_HELO_NAME": "relay.t"}
    result = run_explain(["--dns", dns.address, "--json", "u@pref.t"], env)
    body = json.loads(result.stdout)
    assert body["spf"]["sender"] == "postmaster@spf.t" and body["spf"]["result"] == "pass"
    assert body["ptr"]["helo_matches"] is True


def test_exp4_null_sender_checks_the_helo_identity(dns: DNSServer) -> None:
    _, body = as_json(
        dns, "u@pref.t", "--sender", "<>", "--egress-ip", "127.0.0.2", "--helo", "relay.t"
    )
    assert body["identity"][0]["sender"] is None
    assert body["spf"]["sender"] == "postmaster@relay.t" and body["spf"]["result"] == "pass"
    assert body["identity"][0]["helo_spf"] is None  # the HELO identity is the one checked, once


def test_exp4_text_shows_verdicts_warnings_and_fixes(dns: DNSServer) -> None:
    env = {"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true"}
    result = run_explain(
        [
            "--dns",
            dns.address,
            "--seed",
            "1",
            "--sender",
            "a@spf.t",
            "--egress-ip",
            "127.0.0.3",
            "--helo",
            "relay.t",
            "u@pref.t",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("Sending identity", 1)[1]
    assert "egress 127.0.0.3  HELO relay.t  sender a@spf.t" in section
    assert "warning spf-fail: spf.t's SPF gives fail for 127.0.0.3" in section
    assert "fix: add ip4:127.0.0.3 to spf.t's SPF record" in section
    assert "warning ptr-missing: 127.0.0.3 has no PTR record" in section


def test_exp4_bad_egress_ip_is_a_usage_error(dns: DNSServer) -> None:
    result = run_explain(["--dns", dns.address, "--egress-ip", "not-an-ip", "u@pref.t"])
    assert result.returncode == 64 and "Traceback" not in result.stderr
    assert "argument --egress-ip: 'not-an-ip' is not an IP address" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--zone", "/nonexistent/x.zone", "u@demo.example"],
        ["--zone", "{bad}", "u@demo.example"],
        ["--zone", "config/demo.zone", "--record", "/nonexistent/dir/x.zone", "u@demo.example"],
        [
            "--zone",
            "config/demo.zone",
            "--sender",
            "x@@y",
            "--egress-ip",
            "127.0.0.2",
            "u@demo.example",
        ],
        ["--zone", "config/demo.zone", "--sender", "a@", "u@demo.example"],
    ],
    ids=[
        "missing-zone",
        "unparseable-zone",
        "unwritable-record",
        "malformed-sender",
        "sender-without-domain",
    ],
)
def test_exp5_bad_input_files_and_sender_exit_64_with_one_line(
    args: list[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.zone"
    bad.write_text("this is not a zone file\n")
    result = run_explain([str(bad) if a == "{bad}" else a for a in args])
    assert result.returncode == 64, (result.returncode, result.stderr)
    assert (
        "Traceback" not in result.stderr and result.stderr.count("\n") == 1 and result.stdout == ""
    )
