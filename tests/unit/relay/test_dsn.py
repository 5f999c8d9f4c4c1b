"""RFC 3464 / RFC 6522 reports, parsed back with Python's ``email`` package (checklist E
DSN-2..6/11, SEC-6)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import Message

import pytest

from mxroute.relay.dsn import MAX_RETURN_SIZE, build_dsn, dsn_recipient
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.text import safe_text

ARRIVAL = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 12, 5, 0, tzinfo=UTC)
ORIGINAL = (b"From: Sender <s@src.test>\r\nTo: a@dest.test\r\nSubject: quarterly numbers\r\n"
            b"Message-ID: <orig-1@src.test>\r\n\r\nThe body, which is private.\r\n")


MX1 = "mx1.dest.test[192.0.2.1]:25"
NO_SUCH_USER = "550 5.1.1 <a@dest.test>: no such user"


def bounced(address: str, status: str = "5.1.1", reply: str = NO_SUCH_USER,
            relay: str | None = MX1) -> RecipientResult:
    """A recipient refused by the remote's own reply (RFC 3464 §2.3.6 diagnostic-type smtp)."""
    return RecipientResult(address, Disposition.BOUNCED, status, reply, relay,
                           remote_reply=relay is not None)


def build(results: list[RecipientResult], *, envelope: Envelope | None = None,
          action: str = "failed", message: bytes = ORIGINAL, **kw: object) -> bytes:
    env = envelope or Envelope("s@src.test", [Recipient(r.recipient) for r in results])
    return build_dsn(reporting_mta="relay.test", envelope=env, message=message, results=results,
                     action=action, arrival=ARRIVAL, recipients=env.recipients, now=NOW,
                     message_id="<dsn-1@relay.test>", **kw)


def parse(raw: bytes) -> Message:
    assert b"\r\n" in raw and raw.replace(b"\r\n", b"").count(b"\n") == 0  # CRLF only
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def status_groups(msg: Message) -> list[Message]:
    """The message/delivery-status part's field groups: [per-message, per-recipient...]."""
    part = msg.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    return list(part.get_payload())


def test_dsn4_structure_multipart_report_three_parts() -> None:
    msg = parse(build([bounced("a@dest.test")]))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not msg.defects and all(not p.defects for p in parts)


def test_dsn11_headers() -> None:
    msg = parse(build([bounced("a@dest.test")]))
    assert msg["From"] == "MAILER-DAEMON@relay.test (Mail Delivery System)"
    assert msg["To"] == "<s@src.test>"
    assert msg["Date"] == "Sun, 01 Mar 2026 12:05:00 +0000"
    assert msg["Message-ID"] == "<dsn-1@relay.test>"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"


def test_dsn5_dsn6_every_field() -> None:
    rcpts = [Recipient("a@dest.test", orcpt="rfc822;A@Dest.test"), Recipient("b@dest.test")]
    env = Envelope("s@src.test", rcpts, envid="QQ314159")
    results = [bounced("a@dest.test"),
               RecipientResult("b@dest.test", Disposition.BOUNCED, "5.4.4",
                               "550 5.4.4 no usable MX host for dest.test")]
    per_message, first, second = status_groups(parse(build(results, envelope=env)))
    assert dict(per_message.items()) == {
        "Reporting-MTA": "dns; relay.test",
        "Original-Envelope-Id": "QQ314159",
        "Arrival-Date": "Sun, 01 Mar 2026 12:00:00 +0000",
    }
    assert dict(first.items()) == {
        "Original-Recipient": "rfc822;A@Dest.test",
        "Final-Recipient": "rfc822; a@dest.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx1.dest.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 <a@dest.test>: no such user",
        "Last-Attempt-Date": "Sun, 01 Mar 2026 12:05:00 +0000",
    }
    # no remote answered: no Remote-MTA, the local reason is not passed off as an SMTP reply
    assert "Remote-MTA" not in second and "Original-Recipient" not in second
    assert second["Diagnostic-Code"] == "X-mxroute; 550 5.4.4 no usable MX host for dest.test"


def test_dsn5_no_envid_no_field() -> None:
    per_message = status_groups(parse(build([bounced("a@dest.test")])))[0]
    assert "Original-Envelope-Id" not in per_message


def test_dsn10_delayed_has_will_retry_until_and_4xx_status() -> None:
    result = RecipientResult("a@dest.test", Disposition.DEFERRED, "4.4.1",
                             "451 4.4.1 connect to mx: refused", MX1)
    until = datetime(2026, 3, 6, 12, 0, 0, tzinfo=UTC)
    msg = parse(build([result], action="delayed", will_retry_until=until))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    group = status_groups(msg)[1]
    assert (group["Action"], group["Status"]) == ("delayed", "4.4.1")
    assert group["Will-Retry-Until"] == "Fri, 06 Mar 2026 12:00:00 +0000"
    assert "Fri, 06 Mar 2026" in msg.get_payload()[0].get_payload()


def test_dsn6_status_class_follows_action() -> None:
    odd = RecipientResult("a@dest.test", Disposition.DEFERRED, "2.0.0", "250 huh", None)
    assert status_groups(parse(build([odd], action="delayed")))[1]["Status"] == "4.0.0"
    expired = RecipientResult("a@dest.test", Disposition.DEFERRED, "4.4.7", "451 4.4.7 expired",
                              None)
    assert status_groups(parse(build([expired], action="failed")))[1]["Status"] == "4.4.7"  # RTY-3
    assert status_groups(parse(build([odd], action="failed")))[1]["Status"] == "5.0.0"


def test_relayed_and_delivered_reports() -> None:
    ok = RecipientResult("a@dest.test", Disposition.DELIVERED, "2.0.0", "250 2.0.0 queued", MX1,
                         remote_reply=True)
    for action in ("relayed", "delivered"):
        msg = parse(build([ok], action=action))
        assert msg["Subject"] == "Successful Mail Delivery Report"
        assert status_groups(msg)[1]["Action"] == action
        assert status_groups(msg)[1]["Status"] == "2.0.0"
        assert "Will-Retry-Until" not in status_groups(msg)[1]


def test_dsn6_remote_reply_is_smtp_with_remote_mta() -> None:
    """DSN-6, RFC 3464 §2.3.5/§2.3.6: the remote's own reply → Remote-MTA and ``smtp;`` (as
    Postfix)."""
    msg = parse(build([bounced("a@dest.test")]))
    group = status_groups(msg)[1]
    assert group["Remote-MTA"] == "dns; mx1.dest.test"
    assert group["Diagnostic-Code"] == "smtp; 550 5.1.1 <a@dest.test>: no such user"
    human = msg.get_payload()[0].get_payload()
    assert f"<a@dest.test> (host {MX1} said): {NO_SUCH_USER}" in human


LOCAL_REASONS = [  # mxroute's own reasons, each recorded against the host it concerned
    ("4.7.5", f"451 4.7.5 TLS required (encrypt) but not offered by {MX1}"),  # TLS-3
    ("4.7.5", ("451 4.7.5 MTA-STS policy of dest.test (enforce): mx1.dest.test matches no mx "
               "pattern")),  # TLS-6
    ("4.7.5", ("451 4.7.5 DANE: TLSA lookup _25._tcp.mx1.dest.test failed (SERVFAIL): not "
               f"delivering to {MX1}")),  # TLS-7
    ("4.4.1", ("451 4.4.1 connect to mx1.dest.test[192.0.2.1]:25: Connection refused "
               "(host skipped until its retry time, RTY-4)")),  # RTY-4
    ("4.4.1", "451 4.4.1 connect to mx1.dest.test[192.0.2.1]:25: Connection refused"),
    ("4.4.2", f"451 4.4.2 lost connection with {MX1} in reply to RCPT: TimeoutError"),
    ("5.3.4", f"552 5.3.4 message size 2000 exceeds the fixed limit 1000 of {MX1}"),
]


@pytest.mark.parametrize(("status", "reason"), LOCAL_REASONS)
@pytest.mark.parametrize("action", ["failed", "delayed"])
def test_dsn6_local_reason_is_x_mxroute_and_names_no_remote_mta(status: str, reason: str,
                                                                 action: str) -> None:
    """DSN-6, RFC 3464 §2.3.5/§2.3.6: a reason mxroute made itself (TLS-3/6/7, RTY-4, connect,
    timeout, SIZE) is ``X-mxroute;`` and no Remote-MTA, even though a host was involved (Postfix:
    DSN_BY_LOCAL_MTA)."""
    result = RecipientResult("a@dest.test", Disposition.DEFERRED, status, reason, MX1)
    assert result.remote_reply is False  # the default: no claim that a remote said it
    msg = parse(build([result], action=action))
    group = status_groups(msg)[1]
    assert "Remote-MTA" not in group
    assert " ".join(group["Diagnostic-Code"].split()) == f"X-mxroute; {reason}"
    human = msg.get_payload()[0].get_payload()
    assert "said" not in human and f"<a@dest.test>: {reason[:40]}" in " ".join(human.split())


def test_address_literal_relay_gives_the_ip_as_remote_mta() -> None:
    result = bounced("a@[192.0.2.7]", relay="[192.0.2.7]:25")
    assert result.remote_reply
    assert status_groups(parse(build([result])))[1]["Remote-MTA"] == "dns; 192.0.2.7"


def test_human_part_lists_every_recipient() -> None:
    results = [bounced("a@dest.test"), bounced("b@dest.test", reply="550 5.1.1 b unknown")]
    text = parse(build(results)).get_payload()[0].get_payload()
    assert "This is the mail system at host relay.test." in text
    assert f"<a@dest.test> (host {MX1} said): {NO_SUCH_USER}" in text
    assert "<b@dest.test>" in text


# --- RET (RFC 3461 §4.3) and the size cap (DSN-11) --------------------------------------------

def test_ret_absent_returns_headers_only() -> None:
    third = parse(build([bounced("a@dest.test")])).get_payload()[2]
    assert third.get_content_type() == "text/rfc822-headers"
    body = third.get_payload()
    assert "Subject: quarterly numbers" in body and "private" not in body


def test_ret_hdrs_returns_headers_only() -> None:
    env = Envelope("s@src.test", [Recipient("a@dest.test")], ret="HDRS")
    third = parse(build([bounced("a@dest.test")], envelope=env)).get_payload()[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert "private" not in third.get_payload()


def test_ret_full_returns_the_message() -> None:
    env = Envelope("s@src.test", [Recipient("a@dest.test")], ret="FULL")
    third = parse(build([bounced("a@dest.test")], envelope=env)).get_payload()[2]
    assert third.get_content_type() == "message/rfc822"
    [inner] = third.get_payload()
    assert inner["Subject"] == "quarterly numbers" and "private" in inner.get_payload()


def test_ret_full_too_large_returns_headers() -> None:
    env = Envelope("s@src.test", [Recipient("a@dest.test")], ret="FULL")
    big = ORIGINAL + (b"x" * 76 + b"\r\n") * (MAX_RETURN_SIZE // 78 + 10)
    raw = build([bounced("a@dest.test")], envelope=env, message=big)
    third = parse(raw).get_payload()[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert len(raw) < 10_000
    small_cap = build([bounced("a@dest.test")], envelope=env, max_return_size=10)
    assert parse(small_cap).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_boundary_never_inside_the_returned_original() -> None:
    env = Envelope("s@src.test", [Recipient("a@dest.test")], ret="FULL")
    first = parse(build([bounced("a@dest.test")], envelope=env))
    boundary = first.get_boundary()
    assert boundary is not None
    hostile = ORIGINAL + f"--{boundary}--\r\n".encode()
    msg = parse(build([bounced("a@dest.test")], envelope=env, message=hostile))
    assert msg.get_boundary() != boundary and len(msg.get_payload()) == 3


def test_smtputf8_original_uses_rfc6533_types() -> None:
    env = Envelope("s@src.test", [Recipient("用户@dest.test")], smtputf8=True, ret="FULL")
    message = "Subject: Grüße\r\n\r\nHallo\r\n".encode()
    raw = build([bounced("用户@dest.test")], envelope=env, message=message)
    msg = parse(raw)
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/global-delivery-status", "message/global"]
    assert "Final-Recipient: utf-8; 用户@dest.test" in raw.decode("utf-8")
    assert msg["Content-Transfer-Encoding"] == "8bit"


# --- DSN-2/3: who gets it -----------------------------------------------------------------

@pytest.mark.parametrize(("sender", "expected"), [
    ("s@src.test", "s@src.test"),
    ("<s@src.test>", "s@src.test"),
    ("@a.test,@b.test:u@d.test", "u@d.test"),
    ("<@a.test:u@d.test>", "u@d.test"),
    ("", None),
    ("<>", None),
    ("s@src.test\r\nBcc: x@evil.test", None),
])
def test_dsn2_dsn3_recipient(sender: str, expected: str | None) -> None:
    assert dsn_recipient(sender) == expected


def test_dsn3_never_a_report_for_the_null_sender() -> None:
    with pytest.raises(ValueError):
        build([bounced("a@dest.test")], envelope=Envelope("", [Recipient("a@dest.test")]))


def test_dsn2_source_route_stripped_in_to_header() -> None:
    msg = parse(build([bounced("a@dest.test")], envelope=Envelope("<@relay.test:u@src.test>")))
    assert msg["To"] == "<u@src.test>"


def test_unknown_action_refused() -> None:
    with pytest.raises(ValueError):
        build([bounced("a@dest.test")], action="bounced")


# --- SEC-6: peer text cannot inject headers or break the report ------------------------------

def test_sec6_reply_text_cannot_inject_fields_or_headers() -> None:
    evil = "550 5.1.1 no\r\nX-Injected: yes\r\n\r\n--boundary\x1b[2J\x00"
    result = RecipientResult("a@dest.test", Disposition.BOUNCED, "5.1.1", evil,
                             "mx1.dest.test\r\nX-Evil: 1[192.0.2.1]:25", remote_reply=True)
    env = Envelope("s@src.test",
                   [Recipient("a@dest.test", orcpt="rfc822;a@dest.test\r\nX-Orcpt: 1")],
                   envid="E\r\nX-Envid: 1")
    raw = build([result], envelope=env)
    msg = parse(raw)
    assert b"\x1b" not in raw and b"\x00" not in raw
    assert msg["X-Injected"] is None and msg["X-Evil"] is None
    per_message, group = status_groups(msg)
    assert "X-Envid" not in per_message and "X-Orcpt" not in group and "X-Injected" not in group
    assert group["Diagnostic-Code"].startswith(
        "smtp; 550 5.1.1 no??X-Injected: yes????--boundary?[2J?")
    assert len(msg.get_payload()) == 3


def test_sec6_long_reply_is_folded_under_the_line_limit() -> None:
    long_reply = "550 5.7.1 " + " ".join(["word"] * 400)
    raw = build([bounced("a@dest.test", reply=long_reply)])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    group = status_groups(parse(raw))[1]
    assert group["Diagnostic-Code"].startswith("smtp; 550 5.7.1 word word")


def test_safe_text() -> None:
    assert safe_text("a\r\nb\tc\x7fd") == "a??b?c?d"
    assert safe_text("x" * 600, 20) == "x" * 17 + "..."
    assert safe_text("Grüße") == "Grüße"
