"""TLS-3 and DSN-9 through the real `mxroute serve` (loopback DNS, sinks on loopback).

TLS-3: a required policy never sends mail in plain text; the 4.7.5 reason shows in
`queue show` and, once the message expires, in the bounce's Diagnostic-Code.
DSN-9: a DSN-capable next hop gets NOTIFY/ORCPT/RET/ENVID and the sender hears nothing
from us; a next hop without DSN makes us send a `relayed` DSN (RFC 3461 §5.2.3).
"""

from __future__ import annotations

import email
import email.policy
import json
import time
from email.message import Message
from pathlib import Path

import pytest

from tests.support.relay import MSG, World, rcpt_script, wait_for
from tests.support.smtpsink import tls_available

needs_tls = pytest.mark.skipif(not tls_available(),
                               reason="the cryptography package is needed for certificates")


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def report_groups(msg: Message) -> list[Message]:
    assert (msg.get_content_type() == "multipart/report"
            and msg.get_param("report-type") == "delivery-status")
    status = msg.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    return list(status.get_payload())


# --- DSN-9 ----------------------------------------------------------------------------------------

def test_dsn9_dsn_capable_hop_gets_the_parameters_and_no_local_success_dsn(world: World) -> None:
    sink = world.sink(1)  # advertises DSN
    sender_mx = world.sink(9)
    relay = world.relay()
    with relay.client() as client:
        client.sendmail("a@sender.test", ["u@dest.test"], MSG,
                        mail_options=["RET=HDRS", "ENVID=QQ+2B1"],
                        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;U@dest.test"])
    assert wait_for(lambda: sink.messages)
    [got] = sink.messages
    assert got.mail_args.endswith(" RET=HDRS ENVID=QQ+2B1")
    assert got.rcpt_args == ["TO:<u@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;U@dest.test"]
    assert wait_for(lambda: relay.queued() == [])
    time.sleep(0.5)
    assert sender_mx.messages == []  # the next hop is responsible for the success notice


def test_dsn9_hop_without_dsn_sender_gets_a_relayed_dsn(world: World) -> None:
    sink = world.sink(1, dsn=False)
    sender_mx = world.sink(9)
    relay = world.relay()
    with relay.client() as client:
        client.sendmail("a@sender.test", ["u@dest.test", "v@dest.test"], MSG,
                        mail_options=["ENVID=QQ42"],
                        rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;U@dest.test"])
    assert wait_for(lambda: sink.messages)
    [got] = sink.messages
    assert "ENVID" not in got.mail_args and "RET" not in got.mail_args  # not advertised: not sent
    assert all("NOTIFY" not in a and "ORCPT" not in a for a in got.rcpt_args)
    assert wait_for(lambda: sender_mx.messages, timeout=20)
    [dsn] = sender_mx.messages
    assert dsn.mail_from == "" and dsn.rcpt_to == ["a@sender.test"]
    msg = parse(dsn.data)
    assert (msg["Subject"] == "Successful Mail Delivery Report"
            and msg["Auto-Submitted"] == "auto-replied")
    per_message, *per_rcpt = report_groups(msg)
    assert (per_message["Reporting-MTA"] == "dns; relay.test"
            and per_message["Original-Envelope-Id"] == "QQ42")
    assert [g["Final-Recipient"] for g in per_rcpt] == ["rfc822; u@dest.test",
                                                        "rfc822; v@dest.test"]
    for group in per_rcpt:
        assert group["Action"] == "relayed" and group["Status"] == "2.0.0"
        assert group["Remote-MTA"] == "dns; mx1.dest.test"
        assert group["Diagnostic-Code"].startswith("smtp; 250 2.0.0 Ok: queued as S")
        assert group["Original-Recipient"] == "rfc822;U@dest.test"
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"  # no RET: headers only
    assert wait_for(lambda: relay.queued() == [])
    log = relay.logged("sender", "notification")
    assert "sender" in log and "notification" in log, log


def test_dsn9_no_relayed_dsn_without_notify_success(world: World) -> None:
    sink = world.sink(1, dsn=False)
    sender_mx = world.sink(9)
    relay = world.relay()
    with relay.client() as client:
        client.sendmail("a@sender.test", ["u@dest.test"], MSG,
                        rcpt_options=["NOTIFY=FAILURE,DELAY"])
        client.sendmail("a@sender.test", ["v@dest.test"], MSG)
    assert wait_for(lambda: len(sink.messages) == 2)
    assert wait_for(lambda: relay.queued() == [])
    time.sleep(0.5)
    assert sender_mx.messages == []


# --- TLS-3 ----------------------------------------------------------------------------------------

def test_tls3_encrypt_without_starttls_deferred_4_7_5_shown_by_queue_show(world: World) -> None:
    sink = world.sink(1)  # no STARTTLS
    relay = world.relay(tls_policy_domains={"dest.test": "encrypt"}, retry_min_seconds=300,
                        retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: "status=deferred" in relay.log())
    (queue_id,) = relay.queued()
    shown = json.loads(relay.queue("show", queue_id, "--json").stdout)
    [rcpt] = shown["recipients"]
    assert (rcpt["status"] == "4.7.5"
            and "TLS required (encrypt) but not offered by mx1.dest.test" in rcpt["reply"])
    assert rcpt["remote_reply"] is False and rcpt["hosts"] == {}  # DSN-6: mx1 never said it
    shown_text = relay.queue("show", queue_id).stdout
    assert ("TLS required (encrypt) but not offered" in shown_text
            and "(mxroute's own reason)" in shown_text)
    assert "TLS-3" in relay.logged("TLS-3")
    assert sink.messages == [] and all("MAIL" not in " ".join(c.commands) for c in sink.connections)


def test_tls3_expired_under_encrypt_bounce_carries_the_tls_reason(world: World) -> None:
    """TLS-3, DSN-6: the reason is mxroute's, so ``X-mxroute;`` and no Remote-MTA
    (RFC 3464 §2.3.5/§2.3.6)."""
    world.sink(1)  # no STARTTLS
    sender_mx = world.sink(9)  # the bounce itself goes out under the default policy (may)
    relay = world.relay(tls_policy_domains={"dest.test": "encrypt"}, queue_lifetime_seconds=0)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sender_mx.messages, timeout=20)
    [dsn] = sender_mx.messages
    _, group = report_groups(parse(dsn.data))
    assert group["Action"] == "failed" and group["Status"] == "4.7.5"
    diagnostic = " ".join(group["Diagnostic-Code"].split())  # unfolded
    assert diagnostic.startswith("X-mxroute; 451 4.7.5 TLS required (encrypt) "
                                 "but not offered by mx1.dest.test[")
    assert "Remote-MTA" not in group
    human = " ".join(parse(dsn.data).get_payload()[0].get_payload().split())
    assert "<u@dest.test>: 451 4.7.5 TLS required (encrypt)" in human and "said" not in human


def test_dsn6_remote_refusal_in_queue_show_is_the_hosts_reply(world: World) -> None:
    """DSN-6: a 4xx the host gave is shown as its reply, against the host, in ``queue show``."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "450 4.2.1 mailbox busy")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: "status=deferred" in relay.log())
    (queue_id,) = relay.queued()
    [rcpt] = json.loads(relay.queue("show", queue_id, "--json").stdout)["recipients"]
    assert (rcpt["reply"], rcpt["remote_reply"]) == ("450 4.2.1 mailbox busy", True)
    assert list(rcpt["hosts"].values()) == ["450 4.2.1 mailbox busy"]
    shown = relay.queue("show", queue_id).stdout
    assert ("450 4.2.1 mailbox busy (the remote's reply)" in shown
            and "mxroute's own reason" not in shown)


@needs_tls
def test_tls3_verify_through_the_relay_with_tls_ca_file(world: World, tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    sink = world.sink(1, starttls=True)
    sink.tls_context = ca.server_context("mx1.dest.test")
    relay = world.relay(tls_policy="verify", tls_ca_file=str(ca.ca_file))
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert sink.connections[0].tls
    assert wait_for(lambda: relay.queued() == [])
