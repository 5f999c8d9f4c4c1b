"""Issue 16 §2: `explain` says what `serve` will do, through the real CLI and a real `serve`.

The intake's RCPT and MAIL verdicts (SEC-3, MX-13, SPF-13/DSN-13) by the intake's own functions,
compared with what a running `serve` answers; ``--helo``/``--egress-ip`` in loop detection
(MX-11); the hosts a running relay skips until their retry time (RTY-4) and its cached MTA-STS
policy (TLS-5), read from its spool; the ``--zone`` hint; why SPF was not checked (EXP-4).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.explaincli import run_explain
from tests.support.paths import ROOT
from tests.support.relay import MSG, Relay, World, wait_for
from tests.support.smtpsink import tls_available
from tests.support.stsserver import PolicyServer
from tests.support.tlsca import TestCA


def explain_as(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    """``mxroute explain ARGS`` with exactly the relay's own settings (its environment)."""
    return subprocess.run([sys.executable, "-m", "mxroute", "explain", *args], cwd=ROOT,
                          env=relay.env, capture_output=True, text=True, timeout=60, check=False)


def second_relay(world: World, name: str, **settings: Any) -> Relay:
    """Another serve in ``world`` on its own spool (killed with the world's)."""
    (world.tmp / name).mkdir()
    relay = Relay(world.tmp / name, world.dns, world.sink_port, **settings).start()
    world.relays.append(relay)
    return relay


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout, result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def serve_rcpt(relay: Relay, address: str) -> str:
    """What the running serve answers to RCPT TO:<address> from 127.0.0.1 (in relay_networks)."""
    with relay.client() as client:
        client.command_encoding = "utf-8"
        assert client.docmd("MAIL FROM:<a@dest.test> SMTPUTF8")[0] == 250
        code, text = client.docmd(f"RCPT TO:<{address}>")
    return f"{code} {text.decode()}"


def serve_mail(relay: Relay, sender: str) -> str:
    with relay.client() as client:
        code, text = client.docmd(f"MAIL FROM:<{sender}>")
    return f"{code} {text.decode()}"


RCPTS = ["user@[192.0.2.5]", "u%x@dest.test", "u@dest.test", "u@192.0.2.1", "ext.test!u@dest.test"]


def test_issue16_rcpt_verdict_is_the_intakes(world: World) -> None:
    """Issue 16 §2, SEC-3, MX-13: for each address explain reports the reply serve gives at RCPT
    (same function), and a refused one is permanent-failure (exit 69) naming the setting."""
    relay = world.relay()
    for address in RCPTS:
        said = serve_rcpt(relay, address)
        result = explain_as(relay, "--json", address)
        body = as_json(result)
        rcpt = body["intake"]["rcpt"]
        assert rcpt["reply"] == said, (address, rcpt, said)
        assert rcpt["accepted"] is said.startswith("250"), address
        if not rcpt["accepted"]:
            assert (result.returncode, body["status"]) == (69, "permanent-failure"), address
            assert rcpt["code"] == int(said[:3]) and said[4:].startswith(rcpt["status"])
            assert said in body["reason"], body["reason"]
    body = as_json(explain_as(relay, "--json", "user@[192.0.2.5]"))
    assert body["intake"]["rcpt"]["setting"] == "allow_address_literals = true"
    assert body["dsn_status"] == "5.1.2" and body["intake"]["route_verdict"]["status"] == \
        "deliverable"
    text = explain_as(relay, "user@[192.0.2.5]")
    assert text.returncode == 69
    assert "550 5.1.2 Address literals are not accepted here" in text.stdout
    assert "allow_address_literals = true" in text.stdout
    # the setting changes both: serve and explain accept it
    open_relay = second_relay(world, "literals", allow_address_literals=True)
    assert serve_rcpt(open_relay, "user@[127.0.0.7]") == "250 2.1.5 Ok"
    result = explain_as(open_relay, "--json", "user@[127.0.0.7]")
    assert result.returncode == 0 and as_json(result)["intake"]["rcpt"]["reply"] == "250 2.1.5 Ok"


def test_issue16_null_mx_sender_550_5_7_27_as_mail_from_gets(world: World) -> None:
    """Issue 16 §2, SPF-13: explain --sender at a null-MX domain reports the 550 5.7.27 that
    MAIL FROM gets from serve, exit 69, and null_mx_sender as the setting; a good sender is 250."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               "nullmx IN MX 0 .\nnullmx IN A 127.0.0.1\n")
    relay = world.relay()
    said = serve_mail(relay, "app@nullmx.test")
    assert said.startswith("550 5.7.27"), said
    result = explain_as(relay, "--json", "--sender", "app@nullmx.test", "u@dest.test")
    body = as_json(result)
    mail = body["intake"]["mail"]
    assert (mail["reply"], mail["accepted"], mail["setting"]) == (said, False,
                                                                   "null_mx_sender = off")
    assert (result.returncode, body["status"], body["dsn_status"]) == (69, "permanent-failure",
                                                                        "5.7.27")
    text = explain_as(relay, "--sender", "app@nullmx.test", "u@dest.test")
    assert text.returncode == 69 and said in text.stdout and "null_mx_sender = off" in text.stdout
    good = explain_as(relay, "--json", "--sender", "app@dest.test", "u@dest.test")
    assert good.returncode == 0
    assert as_json(good)["intake"]["mail"]["reply"] == serve_mail(relay, "app@dest.test")
    off = second_relay(world, "off", null_mx_sender="off")
    assert serve_mail(off, "app@nullmx.test") == "250 2.1.0 Ok"
    assert explain_as(off, "--sender", "app@nullmx.test", "u@dest.test").returncode == 0


def test_issue16_helo_and_egress_ip_feed_loop_detection(world: World) -> None:
    """Issue 16 §2, MX-11: --helo NAME and --egress-ip IP are this relay for loop detection, as
    they are for SPF: an MX that is either is pruned as self, and nothing left is 5.4.6."""
    relay = world.relay()
    base = as_json(explain_as(relay, "--json", "u@dest.test"))
    assert base["status"] == "deliverable"
    for option in (["--helo", "MX1.dest.test"], ["--egress-ip", world.ip(1)]):
        result = explain_as(relay, "--json", *option, "u@dest.test")
        body = as_json(result)
        assert (result.returncode, body["status"], body["dsn_status"]) == (
            69, "permanent-failure", "5.4.6"), (option, body["reason"])
        assert [p["reason"] for p in body["pruned"]] == ["self"], option
        assert "MX-11" in {d["rule"] for d in body["decisions"]}


def test_issue16_spool_shows_hosts_skipped_until_their_retry_time(world: World) -> None:
    """Issue 16 §2, RTY-4: a real serve defers mail to a dead loopback host; explain with the
    same settings shows that host skipped until its retry time (text and JSON), read-only from
    the running relay; with serve stopped it says the host memory went with it."""
    world.zone(f"dead IN MX 10 mx.dead.test.\nmx.dead IN A {world.ip(7)}\n"
               f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@dest.test", ["u@dead.test"], b"Subject: x\r\n\r\nbody\r\n")

    def skipped() -> list[dict[str, Any]]:
        body = as_json(explain_as(relay, "--json", "u@dead.test"))
        found: list[dict[str, Any]] = (body.get("relay") or {}).get("skipped_hosts", [])
        return found

    hosts = wait_for(skipped, timeout=20)
    assert hosts, relay.log()
    assert hosts[0]["address"] == world.ip(7) and hosts[0]["status"].startswith("4")
    assert hosts[0]["until"] > hosts[0]["since"]
    body = as_json(explain_as(relay, "--json", "u@dead.test"))
    assert body["relay"]["serve"] == "running" and body["relay"]["spool"] == str(relay.spool)
    assert body["status"] == "deliverable"  # routing is unchanged: the host is tried later
    text = explain_as(relay, "u@dead.test").stdout
    assert "skipped until" in text and f"mx.dead.test[{world.ip(7)}]" in text, text
    other = as_json(explain_as(relay, "--json", "u@dest.test"))
    assert other["relay"]["skipped_hosts"] == []  # only this plan's hosts
    assert relay.terminate() == 0
    stopped = as_json(explain_as(relay, "--json", "u@dead.test"))
    assert stopped["relay"]["serve"] == "not running"
    assert stopped["relay"]["skipped_hosts"] == []
    assert "remembered by a running serve only" in stopped["relay"]["note"]


@pytest.mark.skipif(not tls_available(), reason="the cryptography package is needed")
def test_issue16_spool_shows_the_mta_sts_policy_serve_cached(world: World) -> None:
    """Issue 16 §2, TLS-5: serve fetches and stores dest.test's MTA-STS policy while delivering;
    with the policy server gone, explain (same settings) shows that policy from the relay's
    store, text and JSON, and applies it from the cache, as delivery would."""
    ca = TestCA(world.tmp / "ca")
    world.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {world.ip(1)}\n"
               f"mta-sts.dest IN A {world.ip(80)}\n"
               '_mta-sts.dest IN TXT "v=STSv1; id=one"\n')
    mx1 = world.sink(1, starttls=True)
    mx1.tls_context = ca.server_context("mx1.dest.test")
    policy = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 86400\n"
    with PolicyServer(world.ip(80), ca.server_context("mta-sts.dest.test"), policy) as web:
        relay = world.relay(mta_sts_port=web.port, tls_ca_file=str(ca.ca_file))
        relay.send("a@dest.test", ["u@dest.test"], MSG)
        assert wait_for(lambda: mx1.messages, timeout=20), relay.log()
    assert wait_for(lambda: (relay.spool / "mta-sts.json").exists())
    body = as_json(explain_as(relay, "--json", "u@dest.test"))
    cached = body["relay"]["mta_sts_cached"]
    assert (cached["id"], cached["mode"], cached["mx"], cached["max_age"]) == (
        "one", "enforce", ["mx1.dest.test"], 86400)
    assert body["mta_sts"]["source"] == "cache" and body["status"] == "deliverable"
    text = explain_as(relay, "u@dest.test").stdout
    assert "MTA-STS policy cached: id one, mode enforce, mx mx1.dest.test" in text, text


def test_issue16_no_spool_no_relay_section(world: World) -> None:
    """Issue 16 §2: without a spool directory explain has no relay state to show (relay: null)."""
    result = run_explain(["--json", "--dns", world.dns.address, "u@dest.test"],
                         {"MXROUTE_SPOOL_DIR": str(world.tmp / "nowhere")})
    assert as_json(result)["relay"] is None


def test_issue16_zone_outside_every_loaded_zone_is_said() -> None:
    """Issue 16 §2, MX-5: with --zone, a domain outside every loaded zone says so (text and
    JSON); a name inside a loaded zone that does not exist is plain NXDOMAIN."""
    args = ["--zone", "config/demo.zone"]
    result = run_explain([*args, "--json", "u@elsewhere.example"])
    body = as_json(result)
    assert (result.returncode, body["status"]) == (69, "permanent-failure")
    hint = "not in any loaded zone (--zone config/demo.zone)"
    assert hint in body["reason"] and body["zones"] == {
        "files": ["config/demo.zone"], "zone": None, "note": hint}
    assert hint in run_explain([*args, "u@elsewhere.example"]).stdout
    inside = as_json(run_explain([*args, "--json", "u@nothere.demo.example"]))
    assert inside["status"] == "permanent-failure" and "loaded zone" not in inside["reason"]
    assert inside["zones"]["zone"] == "demo.example" and inside["zones"]["note"] is None
    literal = as_json(run_explain(["--json", "u@[127.0.0.1]"]))  # no --zone: zones is null
    assert literal["zones"] is None


def test_issue16_sender_without_egress_ip_says_why_spf_skipped() -> None:
    """Issue 16 §2, EXP-4: --sender without an egress IP: why SPF was not checked, text and
    JSON; with --egress-ip there is no such note."""
    args = ["--zone", "config/demo.zone", "--sender", "app@demo.example"]
    body = as_json(run_explain([*args, "--json", "u@demo.example"]))
    assert body["spf"] is None
    assert "no egress IP" in body["spf_skipped"] and "--egress-ip" in body["spf_skipped"]
    text = run_explain([*args, "u@demo.example"]).stdout
    assert "SPF not checked: no egress IP" in text
    checked = as_json(run_explain([*args, "--json", "--egress-ip", "192.0.2.99",
                                   "u@demo.example"]))
    assert checked["spf"]["result"] == "pass" and checked["spf_skipped"] is None
