"""The courier through real SMTP sinks on loopback (checklist A MX-15..17, B SESS-*, C TLS-1/2,
SEC-2/5/6)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any

import pytest

from mxroute.relay.courier.courier import Courier, canonical_data
from mxroute.relay.courier.replies import enhanced_status
from mxroute.relay.courier.transaction import dot_stuff
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.routing.route import policy_from_settings, route
from mxroute.settings import Settings
from mxroute.text import xtext
from tests.conftest import resolver_for
from tests.support.courierkit import MESSAGE, by, plan, target
from tests.support.courierkit import courier_settings as settings
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import ClosedPort, RawSink, Sink, tls_available


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded(), debug=True)


def deliver(
    the_plan: Plan,
    rcpts: list[str | Recipient],
    message: bytes = MESSAGE,
    *,
    sender: str = "s@src.test",
    courier: Courier | None = None,
    envelope: Envelope | None = None,
    **settings_overrides: Any,
) -> list[RecipientResult]:
    recipients = [r if isinstance(r, Recipient) else Recipient(r) for r in rcpts]
    env = envelope or Envelope(sender, recipients)

    async def go() -> list[RecipientResult]:
        c = courier or Courier(settings(**settings_overrides))
        try:
            return await c.deliver(the_plan, env, recipients, message, queue_id="Q1")
        finally:
            await c.close()  # in the same event loop that opened the connections

    return run(go())


# --- the basics ---------------------------------------------------------------------------


def test_delivers_envelope_and_content_as_given() -> None:
    with Sink("127.0.1.1") as sink:
        [result] = deliver(plan(target(1, sink)), ["a@dest.test"])
        assert result.disposition is Disposition.DELIVERED
        assert result.status == "2.0.0" and result.reply.startswith("250 2.0.0 Ok: queued as")
        assert result.remote_mta == f"mx1.dest.test[127.0.1.1]:{sink.port}"
        [conn] = sink.connections
        assert conn.helo == "relay.test" and conn.ehlo  # SESS-2: the configured name
        [msg] = sink.messages
        assert msg.mail_from == "s@src.test" and msg.rcpt_to == ["a@dest.test"]
        # SESS-13: SIZE= when advertised
        assert msg.mail_args == f"FROM:<s@src.test> SIZE={len(MESSAGE)}"
        assert msg.data == MESSAGE


def test_one_result_per_recipient_in_order() -> None:
    with Sink("127.0.1.1") as sink:
        results = deliver(plan(target(1, sink)), ["b@dest.test", "a@dest.test", "b@dest.test"])
        assert [r.recipient for r in results] == ["b@dest.test", "a@dest.test", "b@dest.test"]
        assert sink.messages[0].rcpt_to == ["b@dest.test", "a@dest.test"]  # a duplicate once


def test_plan_temporary_and_permanent_need_no_connection() -> None:
    temporary = Plan(
        "dest.test", Verdict.TEMPORARY, "MX lookup for dest.test failed: SERVFAIL", "4.4.3"
    )
    [r] = deliver(temporary, ["a@dest.test"])
    assert (r.disposition, r.status, r.remote_mta) == (Disposition.DEFERRED, "4.4.3", None)
    assert "SERVFAIL" in r.reply and r.reply.startswith("451 4.4.3")
    null_mx = Plan(
        "dest.test",
        Verdict.PERMANENT,
        "domain dest.test does not accept mail (null MX, RFC 7505)",
        "5.1.10",
    )
    [r] = deliver(null_mx, ["a@dest.test"])
    assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.1.10")
    assert r.reply.startswith("556 5.1.10")


# --- walking the plan: MX-15..17 ------------------------------------------------------------


def test_mx15_refused_address_then_next_in_order() -> None:
    with ClosedPort("127.0.1.1") as closed, Sink("127.0.1.2") as second, Sink("127.0.1.3") as third:
        [r] = deliver(plan(target(1, closed), target(2, second), target(3, third)), ["a@dest.test"])
        assert r.disposition is Disposition.DELIVERED
        assert r.remote_mta is not None and r.remote_mta.startswith("mx2.dest.test[127.0.1.2]")
        assert len(second.messages) == 1 and third.connections == []


@pytest.mark.parametrize("greeting", ["421 4.3.2 too busy", "554 5.7.1 go away"])
def test_mx17_4xx_and_5xx_greeting_skip_to_next_address(greeting: str) -> None:
    with Sink("127.0.1.1", replies={"GREETING": greeting}) as first, Sink("127.0.1.2") as second:
        [r] = deliver(plan(target(1, first), target(2, second)), ["a@dest.test"])
        assert r.disposition is Disposition.DELIVERED and len(second.messages) == 1
        assert len(first.connections) == 1 and first.connections[0].commands == []


def test_mx17_4xx_ehlo_skips_host() -> None:
    with (
        Sink("127.0.1.1", replies={"EHLO": "451 4.3.0 not now"}) as first,
        Sink("127.0.1.2") as second,
    ):
        [r] = deliver(plan(target(1, first), target(2, second)), ["a@dest.test"])
        assert r.disposition is Disposition.DELIVERED and len(second.messages) == 1
        assert first.connections[0].commands == ["EHLO relay.test"]


def test_mx17_rcpt_5xx_is_authoritative_other_mx_never_contacted() -> None:
    replies = {"RCPT": {"a@dest.test": "550 5.1.1 <a@dest.test>: no such user"}}
    with Sink("127.0.1.1", replies=replies) as first, Sink("127.0.1.2") as second:
        [r] = deliver(plan(target(1, first), target(2, second)), ["a@dest.test"])
        assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.1.1")
        assert r.reply == "550 5.1.1 <a@dest.test>: no such user"
        assert second.connections == []
        assert "DATA" not in first.connections[0].commands  # SESS-6: no DATA without a recipient


def test_mx17_421_mid_session_moves_on() -> None:
    with (
        Sink("127.0.1.1", replies={"MAIL": "421 4.3.2 shutting down"}) as first,
        Sink("127.0.1.2") as second,
    ):
        [r] = deliver(plan(target(1, first), target(2, second)), ["a@dest.test"])
        assert r.disposition is Disposition.DELIVERED and len(second.messages) == 1


def test_mx16_session_limit_counts_greeted_sessions() -> None:
    busy = {"GREETING": "421 4.3.2 busy"}
    with (
        Sink("127.0.1.1", replies=busy) as s1,
        ClosedPort("127.0.1.2") as closed,
        Sink("127.0.1.3", replies=busy) as s3,
        Sink("127.0.1.4") as s4,
    ):
        [r] = deliver(
            plan(target(1, s1), target(2, closed), target(3, s3), target(4, s4)),
            ["a@dest.test"],
            mx_session_limit=2,
        )
        # the refused address reached no greeting, so it does not count; two greeted sessions do
        assert len(s1.connections) == 1 and len(s3.connections) == 1 and s4.connections == []
        assert r.disposition is Disposition.DEFERRED
        assert r.reply == "421 4.3.2 busy" and r.status.startswith("4.")  # the last reason is kept
        assert r.remote_mta is not None and r.remote_mta.startswith("mx3.dest.test")


def test_all_addresses_exhausted_defers_with_last_reason() -> None:
    with (
        ClosedPort("127.0.1.1") as c1,
        Sink("127.0.1.2", replies={"GREETING": "554 5.3.2 no service"}) as s2,
    ):
        [r] = deliver(plan(target(1, c1), target(2, s2)), ["a@dest.test"])
        assert r.disposition is Disposition.DEFERRED
        # a skipped 5xx greeting is not a bounce
        assert r.reply == "554 5.3.2 no service" and r.status == "4.0.0"


# --- DSN-6: whose words a result carries (RFC 3464 §2.3.5/§2.3.6) ------------------------------


def test_dsn6_replies_the_remote_sent_are_marked_remote() -> None:
    """A 550/450 to RCPT, the reply after "." and a refused greeting are the host's own words."""
    replies = {
        "RCPT": {"b@dest.test": "550 5.1.1 no such user", "c@dest.test": "450 4.2.1 mailbox busy"}
    }
    with Sink("127.0.1.1", replies=replies) as sink:
        results = by(deliver(plan(target(1, sink)), ["a@dest.test", "b@dest.test", "c@dest.test"]))
        assert [(r.disposition, r.remote_reply) for r in results.values()] == [
            (Disposition.DELIVERED, True),
            (Disposition.BOUNCED, True),
            (Disposition.DEFERRED, True),
        ]
        assert results["b@dest.test"].reply == "550 5.1.1 no such user"
    with Sink("127.0.1.1", replies={"GREETING": "554 5.3.2 no service"}) as refusing:
        [r] = deliver(plan(target(1, refusing)), ["a@dest.test"])
        assert (r.disposition, r.reply, r.remote_reply) == (
            Disposition.DEFERRED,
            "554 5.3.2 no service",
            True,
        )


def test_dsn6_local_reasons_at_a_host_are_not_remote_replies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection refused, its RTY-4 skip, and a lost connection: mxroute's words, though a host
    is named."""
    caplog.set_level(logging.INFO, logger="mxroute.relay.courier.courier")
    with ClosedPort("127.0.1.1") as closed:
        courier = Courier(settings())

        async def twice() -> list[RecipientResult]:
            first = await courier.deliver(
                plan(target(1, closed)), Envelope("s@src.test"), [Recipient("a@dest.test")], MESSAGE
            )
            again = await courier.deliver(
                plan(target(1, closed)), Envelope("s@src.test"), [Recipient("a@dest.test")], MESSAGE
            )
            await courier.close()
            return first + again

        refused, skipped = run(twice())
        assert refused.reply.startswith("451 4.4.1 connect to mx1.dest.test[127.0.1.1]")
        assert "skipped until its retry time" in skipped.reply
        for r in (refused, skipped):
            assert (
                r.disposition is Disposition.DEFERRED
                and r.remote_mta is not None
                and r.remote_reply is False
            )
        lines = [
            rec.getMessage()
            for rec in caplog.records
            if rec.name == "mxroute.relay.courier.courier"
        ]
        assert len(lines) == 2 and all("said" not in line for line in lines)
        assert lines[0].endswith(f"status=deferred ({refused.reply})")
    with Sink("127.0.1.1", replies={"RCPT": "DROP"}) as dropping:
        [r] = deliver(plan(target(1, dropping)), ["a@dest.test"])
        assert (
            r.reply.startswith("451 4.4.2 lost connection with mx1.dest.test")
            and r.remote_reply is False
        )


# --- per-recipient replies: SESS-5..9 ------------------------------------------------------


def test_sess6_each_recipient_on_its_own_one_data() -> None:
    replies = {
        "RCPT": {"b@dest.test": "550 5.1.1 no such user", "c@dest.test": "450 4.2.1 mailbox busy"}
    }
    with Sink("127.0.1.1", replies=replies) as sink:
        results = by(deliver(plan(target(1, sink)), ["a@dest.test", "b@dest.test", "c@dest.test"]))
        assert results["a@dest.test"].disposition is Disposition.DELIVERED
        assert (results["b@dest.test"].disposition, results["b@dest.test"].status) == (
            Disposition.BOUNCED,
            "5.1.1",
        )
        assert (results["c@dest.test"].disposition, results["c@dest.test"].status) == (
            Disposition.DEFERRED,
            "4.2.1",
        )
        assert results["c@dest.test"].reply == "450 4.2.1 mailbox busy"
        assert sink.connections[0].commands.count("DATA") == 1


def test_sess6_rcpt_4xx_tries_the_backup_mx() -> None:
    with (
        Sink("127.0.1.1", replies={"RCPT": {"c@dest.test": "451 4.3.0 try later"}}) as first,
        Sink("127.0.1.2") as backup,
    ):
        results = by(
            deliver(plan(target(1, first), target(2, backup)), ["a@dest.test", "c@dest.test"])
        )
        assert results["a@dest.test"].remote_mta and results["a@dest.test"].remote_mta.startswith(
            "mx1."
        )
        assert results["c@dest.test"].disposition is Disposition.DELIVERED
        assert [m.rcpt_to for m in backup.messages] == [["c@dest.test"]]


def test_sess7_data_refused_no_body_sent() -> None:
    with Sink("127.0.1.1", replies={"DATA": "554 5.7.1 no data for you"}) as sink:
        results = deliver(plan(target(1, sink)), ["a@dest.test", "b@dest.test"])
        assert {(r.disposition, r.status) for r in results} == {(Disposition.BOUNCED, "5.7.1")}
        assert all(t.data is None for c in sink.connections for t in c.transactions)


@pytest.mark.parametrize(
    ("reply", "disposition", "status"),
    [
        ("554 5.6.0 content rejected", Disposition.BOUNCED, "5.6.0"),
        ("451 4.3.0 queue full", Disposition.DEFERRED, "4.3.0"),
    ],
)
def test_sess8_end_of_data_reply_covers_every_accepted_recipient(
    reply: str, disposition: Disposition, status: str
) -> None:
    with Sink(
        "127.0.1.1", replies={".": reply, "RCPT": {"x@dest.test": "550 5.1.1 unknown"}}
    ) as sink:
        results = by(deliver(plan(target(1, sink)), ["a@dest.test", "b@dest.test", "x@dest.test"]))
        for address in ("a@dest.test", "b@dest.test"):
            assert (
                results[address].disposition,
                results[address].status,
                results[address].reply,
            ) == (disposition, status, reply)
        assert results["x@dest.test"].status == "5.1.1"


def test_sess9_too_many_recipients_go_into_further_transactions() -> None:
    rcpts = [f"u{i}@dest.test" for i in range(7)]
    with Sink("127.0.1.1", max_recipients=3) as sink:
        results = deliver(plan(target(1, sink)), rcpts)
        assert all(r.disposition is Disposition.DELIVERED for r in results)
        assert [m.rcpt_to for m in sink.messages] == [rcpts[0:3], rcpts[3:6], rcpts[6:7]]
        assert len(sink.connections) == 1


def test_sess9_552_too_many_recipients_is_temporary() -> None:
    replies = {"RCPT": {"b@dest.test": "552 5.5.3 too many recipients"}}
    with Sink("127.0.1.1", replies=replies) as sink:
        results = by(deliver(plan(target(1, sink)), ["a@dest.test", "b@dest.test"]))
        assert results["a@dest.test"].disposition is Disposition.DELIVERED
        # RFC 5321 §4.5.3.1.10: b is tried in a further transaction, then deferred, never bounced
        assert (results["b@dest.test"].disposition, results["b@dest.test"].status) == (
            Disposition.DEFERRED,
            "4.5.3",
        )
        assert sink.connections[0].commands.count("RCPT TO:<b@dest.test>") == 2
        assert len(sink.messages) == 1


def test_sess5_multiline_reply_enhanced_code_taken_when_advertised() -> None:
    replies = {
        "RCPT": {"a@dest.test": "550 5.1.1 no such user\n550 5.1.1 see https://example.test"}
    }
    with Sink("127.0.1.1", replies=replies) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"])
        assert (
            r.status == "5.1.1"
            and r.reply == "550 5.1.1 no such user 5.1.1 see https://example.test"
        )


def test_sess5_enhanced_code_derived_when_not_advertised() -> None:
    replies = {"RCPT": {"a@dest.test": "550 5.1.1 no such user"}}
    with Sink("127.0.1.1", replies=replies, enhancedstatuscodes=False) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"])
        assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.0.0")


def test_sess5_enhanced_status_helper() -> None:
    assert enhanced_status(550, "5.7.1 relaying denied", True) == "5.7.1"
    assert enhanced_status(550, "4.7.1 class mismatch", True) == "5.0.0"
    assert enhanced_status(451, "try later", True) == "4.0.0"
    assert enhanced_status(250, "2.0.0 ok", False) == "2.0.0"


def test_sess1_helo_fallback_without_extension_parameters() -> None:
    with Sink("127.0.1.1", esmtp=False) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"])
        assert r.disposition is Disposition.DELIVERED
        [conn] = sink.connections
        assert conn.commands[:2] == ["EHLO relay.test", "HELO relay.test"] and not conn.ehlo
        assert sink.messages[0].mail_args == "FROM:<s@src.test>"  # no SIZE=, no BODY=


def test_sess3_rcpt_timeout_defers() -> None:
    with Sink("127.0.1.1", delays={"RCPT": 3.0}) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], rcpt_timeout=0.3)
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.4.2")
        assert "RCPT" in r.reply and sink.messages == []


def test_sess3_data_timeout_defers_with_or_without_pipelining() -> None:
    """SESS-3 (issue 23: DATA goes as a group of one on a pipelining session, its reply awaited
    with a timer): no 354 within data_init_timeout defers 4.4.2 naming DATA, no data sent."""
    for pipelining in (True, False):
        with Sink("127.0.53.1", delays={"DATA": 3.0}, pipelining=pipelining) as sink:
            [r] = deliver(plan(target(1, sink)), ["a@dest.test"], data_init_timeout=0.3)
            assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.4.2"), pipelining
            assert "in reply to DATA" in r.reply and sink.messages == []


def test_sess3_greeting_timeout_moves_to_next_address() -> None:
    with Sink("127.0.1.1", replies={"GREETING": "HANG"}) as slow, Sink("127.0.1.2") as second:
        [r] = deliver(
            plan(target(1, slow), target(2, second)), ["a@dest.test"], greeting_timeout=0.3
        )
        assert r.disposition is Disposition.DELIVERED and len(second.messages) == 1


def test_sess3_end_of_data_timeout_defers_without_trying_elsewhere() -> None:
    with Sink("127.0.1.1", delays={".": 3.0}) as slow, Sink("127.0.1.2") as second:
        [r] = deliver(
            plan(target(1, slow), target(2, second)), ["a@dest.test"], data_done_timeout=0.3
        )
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.4.2")
        assert "after end of data" in r.reply and second.connections == []


def test_sess3_default_timeouts_meet_rfc_minima() -> None:
    """RFC 5321 §4.5.3.2: greeting 5 min, MAIL 5, RCPT 5, DATA 2, data block 3, "." 10."""
    s = Settings(helo_name="relay.test")
    assert s.greeting_timeout >= 300 and s.mail_timeout >= 300 and s.rcpt_timeout >= 300
    assert s.data_init_timeout >= 120 and s.data_block_timeout >= 180 and s.data_done_timeout >= 600


def test_sess4_drop_after_end_of_data_defers_without_trying_elsewhere() -> None:
    with Sink("127.0.1.1", replies={".": "DROP"}) as first, Sink("127.0.1.2") as second:
        [r] = deliver(plan(target(1, first), target(2, second)), ["a@dest.test"])
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.4.2")
        assert "after end of data" in r.reply
        assert second.connections == []  # one duplicate risk at most, on the next retry


def test_sess4_drop_at_rcpt_moves_on() -> None:
    with Sink("127.0.1.1", replies={"RCPT": "DROP"}) as first, Sink("127.0.1.2") as second:
        [r] = deliver(plan(target(1, first), target(2, second)), ["a@dest.test"])
        assert r.disposition is Disposition.DELIVERED and len(second.messages) == 1


def test_sess17_mail_5xx_bounces_every_recipient_and_is_not_cached() -> None:
    with Sink("127.0.1.1", replies={"MAIL": ["550 5.7.1 sender refused"]}) as sink:
        courier = Courier(settings())

        async def go() -> tuple[list[RecipientResult], list[RecipientResult]]:
            try:
                env = Envelope("s@src.test")
                first = await courier.deliver(
                    plan(target(1, sink)), env, [Recipient("a@dest.test")], MESSAGE
                )
                second = await courier.deliver(
                    plan(target(1, sink)), env, [Recipient("a@dest.test")], MESSAGE
                )
                return first, second
            finally:
                await courier.close()

        first, second = run(go())
        assert (first[0].disposition, first[0].status) == (Disposition.BOUNCED, "5.7.1")
        assert second[0].disposition is Disposition.DELIVERED


# --- SIZE, 8BITMIME, SMTPUTF8: SESS-13..15 --------------------------------------------------


def test_sess13_size_limit_below_message_bounces_without_mail() -> None:
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 70
    with Sink("127.0.1.1", size_limit=1000) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], big)
        assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.3.4")
        assert not any(c.startswith("MAIL") for c in sink.connections[0].commands)


def test_sess13_no_size_advertised_delivers() -> None:
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 70
    with Sink("127.0.1.1", size_limit=None) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], big)
        assert r.disposition is Disposition.DELIVERED
        assert "SIZE=" not in sink.messages[0].mail_args


def test_sess14_8bit_to_peer_without_8bitmime_fails_5_6_3() -> None:
    body = MESSAGE + "Grüße\r\n".encode()
    with Sink("127.0.1.1", eightbitmime=False) as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], body)
        assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.6.3")
        assert not any(c.startswith("MAIL") for c in sink.connections[0].commands)


def test_sess14_8bit_sent_with_body_8bitmime_when_advertised() -> None:
    body = MESSAGE + "Grüße\r\n".encode()
    with Sink("127.0.1.1") as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], body)
        assert r.disposition is Disposition.DELIVERED
        assert "BODY=8BITMIME" in sink.messages[0].mail_args and sink.messages[0].data == body


def test_sess14_7bit_message_gets_no_body_parameter() -> None:
    with Sink("127.0.1.1") as sink:
        deliver(plan(target(1, sink)), ["a@dest.test"])
        assert "BODY=" not in sink.messages[0].mail_args


def test_sess15_utf8_address_to_peer_without_smtputf8_fails_5_6_7() -> None:
    with Sink("127.0.1.1", smtputf8=False) as sink:
        [r] = deliver(plan(target(1, sink)), ["用户@dest.test"])
        assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.6.7")
        assert not any(c.startswith("MAIL") for c in sink.connections[0].commands)


def test_sess15_utf8_address_sent_with_smtputf8() -> None:
    with Sink("127.0.1.1") as sink:
        [r] = deliver(
            plan(target(1, sink)),
            ["用户@dest.test"],
            envelope=Envelope("s@src.test", smtputf8=True),
        )
        assert r.disposition is Disposition.DELIVERED
        assert sink.messages[0].mail_args.endswith(" SMTPUTF8")
        assert sink.messages[0].rcpt_to == ["用户@dest.test"]


# --- bytes on the wire: SESS-10/11, SEC-2 ---------------------------------------------------

TRICKY = b"Subject: dots\n\n.\n..\n.x\nbare\rcr\r\nlast line without newline"


def test_sess10_11_dot_stuffing_and_crlf_on_the_wire() -> None:
    with RawSink("127.0.1.1") as raw:
        [r] = deliver(plan(target(1, raw)), ["a@dest.test"], TRICKY)
        assert r.disposition is Disposition.DELIVERED
        [wire] = raw.messages
        assert (
            wire
            == b"Subject: dots\r\n\r\n..\r\n...\r\n..x\r\nbare\r\ncr\r\nlast line without newline"
        )
        stream = raw.raw
        assert b"\r\n.\r\n" in stream
        # SESS-11: no CR without LF, no LF without CR anywhere on the wire
        assert (
            stream.replace(b"\r\n", b"").count(b"\r") == 0
            and stream.replace(b"\r\n", b"").count(b"\n") == 0
        )


def test_sess10_content_arrives_identical_once_canonical() -> None:
    with Sink("127.0.1.1") as sink:
        deliver(plan(target(1, sink)), ["a@dest.test"], TRICKY)
        assert sink.messages[0].data == canonical_data(TRICKY)


def test_sec2_smuggling_payload_cannot_end_data_at_a_vulnerable_next_hop() -> None:
    smuggle = (
        b"Subject: one\r\n\r\nbody\n.\r\nMAIL FROM:<spoof@evil.test>\r\n"
        b"RCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: two\r\n\r\nsmuggled\r\n\n.\n"
    )
    with RawSink("127.0.1.1", end="vulnerable") as raw:
        [r] = deliver(plan(target(1, raw)), ["a@dest.test"], smuggle)
        assert r.disposition is Disposition.DELIVERED
        assert raw.wait(lambda s: any(c.startswith("QUIT") for c in s.commands))
        assert len(raw.messages) == 1
        assert [c for c in raw.commands if c.upper().startswith("MAIL")] == [
            f"MAIL FROM:<s@src.test> SIZE={len(canonical_data(smuggle))}"
        ]


def test_pure_helpers_canonical_and_stuffing() -> None:
    assert canonical_data(b"a\nb\rc") == b"a\r\nb\r\nc\r\n"
    assert dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"


# --- SEC-5: nothing hostile reaches the wire ------------------------------------------------


def test_sec5_crlf_in_recipient_never_reaches_the_server() -> None:
    evil = '"a\r\nRCPT TO:<x@evil.test>"@dest.test'
    with Sink("127.0.1.1") as sink:
        results = by(deliver(plan(target(1, sink)), [evil, "ok@dest.test"]))
        assert (results[evil].disposition, results[evil].status) == (Disposition.BOUNCED, "5.1.3")
        assert results["ok@dest.test"].disposition is Disposition.DELIVERED
        assert not any("evil" in c for c in sink.connections[0].commands)


def test_sec5_bad_sender_bounces_without_connecting() -> None:
    with Sink("127.0.1.1") as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], sender="s@src.test>\r\nRSET")
        assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.1.7")
        assert sink.connections == []


def test_sec5_overlong_local_part_refused() -> None:
    [r] = deliver(plan(Target("mx", 10, "127.0.1.1", 4, 9)), ["x" * 65 + "@dest.test"])
    assert (r.disposition, r.status) == (Disposition.BOUNCED, "5.1.3")


# --- DSN parameters: DSN-9 ------------------------------------------------------------------


def test_dsn9_parameters_passed_through_when_advertised() -> None:
    rcpt = Recipient("a@dest.test", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;A+1@dest.test")
    env = Envelope("s@src.test", [rcpt], ret="HDRS", envid="id=42 x")
    with Sink("127.0.1.1") as sink:
        deliver(plan(target(1, sink)), [rcpt], envelope=env)
        msg = sink.messages[0]
        assert msg.mail_args.endswith(" RET=HDRS ENVID=id+3D42+20x")
        assert msg.rcpt_args == [
            "TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2B1@dest.test"
        ]


def test_dsn9_no_parameters_to_a_peer_without_dsn() -> None:
    rcpt = Recipient("a@dest.test", notify=("NEVER",), orcpt="rfc822;a@dest.test")
    with Sink("127.0.1.1", dsn=False) as sink:
        deliver(
            plan(target(1, sink)),
            [rcpt],
            envelope=Envelope("s@src.test", [rcpt], ret="FULL", envid="x"),
        )
        msg = sink.messages[0]
        assert msg.mail_args == f"FROM:<s@src.test> SIZE={len(MESSAGE)}" and msg.rcpt_args == [
            "TO:<a@dest.test>"
        ]


# --- TLS-1/2: opportunistic STARTTLS ---------------------------------------------------------


@pytest.mark.skipif(
    not tls_available(), reason="the cryptography package is needed for the sink's certificate"
)
def test_tls1_starttls_used_when_offered_and_ehlo_repeated() -> None:
    with Sink("127.0.1.1", starttls=True) as sink:
        courier = Courier(settings())
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], courier=courier)
        assert r.disposition is Disposition.DELIVERED
        [conn] = sink.connections
        assert conn.tls and conn.commands[:3] == ["EHLO relay.test", "STARTTLS", "EHLO relay.test"]
        assert courier.stats["tls"] == 1 and courier.stats["tls_fallbacks"] == 0


def test_tls1_failed_handshake_retries_same_host_in_plain_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # TLS-2: the server answers STARTTLS with an injected second reply, then talks nonsense.
    with (
        RawSink("127.0.1.1", starttls_reply="220 go\r\n250-FAKE\r\n") as raw,
        Sink("127.0.1.2") as second,
    ):
        courier = Courier(settings())
        caplog.set_level(logging.INFO)
        [r] = deliver(plan(target(1, raw), target(2, second)), ["a@dest.test"], courier=courier)
        assert r.disposition is Disposition.DELIVERED
        # the same host, in plain text
        assert r.remote_mta is not None and r.remote_mta.startswith("mx1.")
        assert raw.connections == 2 and len(raw.messages) == 1 and second.connections == []
        assert courier.stats["tls_fallbacks"] == 1
        assert any(
            "TLS handshake failed" in rec.getMessage() and "plain text" in rec.getMessage()
            for rec in caplog.records
            if rec.name == "mxroute.relay.courier.hosts"
        )


def test_tls1_starttls_refused_continues_in_plain_text() -> None:
    if not tls_available():
        pytest.skip("the cryptography package is needed for the sink's certificate")
    with Sink(
        "127.0.1.1", starttls=True, replies={"STARTTLS": "454 4.7.0 TLS not available"}
    ) as sink:
        courier = Courier(settings())
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], courier=courier)
        assert r.disposition is Disposition.DELIVERED and not sink.connections[0].tls
        assert courier.stats["tls_fallbacks"] == 1


# --- egress binding and connection reuse -----------------------------------------------------


def test_egress_ip_is_the_source_address() -> None:
    with Sink("127.0.1.1") as sink:
        [r] = deliver(plan(target(1, sink)), ["a@dest.test"], egress_ips=["127.0.0.7", "::1"])
        assert r.disposition is Disposition.DELIVERED
        assert sink.connections[0].peer[0] == "127.0.0.7"


def test_connection_reused_for_the_next_message_with_rset() -> None:
    with Sink("127.0.1.1") as sink:
        courier = Courier(settings())

        async def go() -> None:
            try:
                for n in range(3):
                    env = Envelope("s@src.test")
                    await courier.deliver(
                        plan(target(1, sink)), env, [Recipient(f"u{n}@dest.test")], MESSAGE
                    )
            finally:
                await courier.close()

        run(go())
        assert len(sink.connections) == 1 and len(sink.messages) == 3
        assert sink.connections[0].commands.count("RSET") == 2  # SESS-17: RSET between transactions
        assert courier.stats["reused"] == 2
        assert sink.wait(lambda s: s.connections[0].closed)  # close() QUITs idle connections


def test_connection_reuse_can_be_turned_off() -> None:
    with Sink("127.0.1.1") as sink:
        courier = Courier(settings(), reuse=False)

        async def go() -> None:
            try:
                for n in range(2):
                    await courier.deliver(
                        plan(target(1, sink)),
                        Envelope("s@src.test"),
                        [Recipient(f"u{n}@dest.test")],
                        MESSAGE,
                    )
            finally:
                await courier.close()

        run(go())
        assert len(sink.connections) == 2 and courier.stats["reused"] == 0


def test_idle_pool_size_follows_a_reload_of_destination_concurrency() -> None:
    """SESS-17: the idle connections kept per destination follow ``destination_concurrency``,
    also after a SIGHUP replaced the settings (the delivery process assigns
    ``courier.settings``)."""
    with Sink("127.0.1.1") as sink:
        courier = Courier(settings(destination_concurrency=1))

        async def burst(tag: str) -> int:
            await asyncio.gather(
                *(
                    courier.deliver(
                        plan(target(1, sink)),
                        Envelope("s@src.test"),
                        [Recipient(f"{tag}{n}@dest.test")],
                        MESSAGE,
                    )
                    for n in range(3)
                )
            )
            return len(courier.pool)

        async def go() -> tuple[int, int]:
            try:
                before = await burst("a")
                courier.settings = settings(destination_concurrency=3)  # what a reload does
                return before, await burst("b")
            finally:
                await courier.close()

        kept_before, kept_after = run(go())
        assert len(sink.messages) == 6
        assert kept_before == 1 and kept_after == 3


def test_idle_pooled_connection_closed_after_idle_timeout() -> None:
    with Sink("127.0.1.1") as sink:
        courier = Courier(settings(), idle_timeout=0.2)

        async def go() -> None:
            try:
                await courier.deliver(
                    plan(target(1, sink)),
                    Envelope("s@src.test"),
                    [Recipient("a@dest.test")],
                    MESSAGE,
                )
                await asyncio.sleep(0.5)
                await courier.deliver(
                    plan(target(1, sink)),
                    Envelope("s@src.test"),
                    [Recipient("b@dest.test")],
                    MESSAGE,
                )
            finally:
                await courier.close()

        run(go())
        assert len(sink.connections) == 2 and courier.stats["reused"] == 0
        assert sink.connections[0].commands[-1] == "QUIT"  # closed politely when it expired


def test_stale_pooled_connection_is_replaced() -> None:
    with Sink("127.0.1.1", replies={"RSET": ["421 4.4.2 idle too long"]}) as sink:
        courier = Courier(settings())

        async def go() -> list[RecipientResult]:
            try:
                await courier.deliver(
                    plan(target(1, sink)),
                    Envelope("s@src.test"),
                    [Recipient("a@dest.test")],
                    MESSAGE,
                )
                return await courier.deliver(
                    plan(target(1, sink)),
                    Envelope("s@src.test"),
                    [Recipient("b@dest.test")],
                    MESSAGE,
                )
            finally:
                await courier.close()

        [r] = run(go())
        assert r.disposition is Disposition.DELIVERED
        assert len(sink.connections) == 2 and len(sink.messages) == 2


# --- logging: one line per recipient, safe (SEC-6) -------------------------------------------


def test_log_line_per_recipient_postfix_style_and_sanitised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    replies = {"RCPT": {"b@dest.test": "550 5.1.1 gone \x1b[2J\x07 away"}}
    caplog.set_level(logging.INFO, logger="mxroute.relay.courier.courier")
    with Sink("127.0.1.1", replies=replies) as sink:
        deliver(plan(target(1, sink)), ["a@dest.test", "b@dest.test"])
        lines = [
            rec.getMessage()
            for rec in caplog.records
            if rec.name == "mxroute.relay.courier.courier"
        ]
        assert len(lines) == 2
        relay = f"mx1.dest.test[127.0.1.1]:{sink.port}"
        assert lines[0].startswith(f"Q1: to=<a@dest.test>, relay={relay}, delay=")
        assert ", dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as " in lines[0]
        # DSN-6: a refusal is logged as the host's words, as Postfix's "host X said:"
        assert lines[1].endswith(
            f"dsn=5.1.1, status=bounced (host {relay} said: 550 5.1.1 gone ?[2J? away)"
        )
        assert all("\x1b" not in line and "\n" not in line for line in lines)


# --- through the loopback DNS server: route() then deliver ------------------------------------


def test_routed_plan_prefers_lower_preference_and_falls_back(dns_server: DNSServer) -> None:
    with ClosedPort("127.0.2.1") as closed, Sink("127.0.2.2", port=closed.port) as backup:
        dns_server.set_zone(
            "$ORIGIN dest.test.\n$TTL 300\n"
            "@ IN SOA ns.dest.test. h.dest.test. 1 3600 600 86400 300\n"
            "@ IN MX 20 mx2\n@ IN MX 10 mx1\n"
            "mx1 IN A 127.0.2.1\nmx2 IN A 127.0.2.2\n"
        )
        s = settings(
            smtp_port=closed.port, allow_private_destinations=True, address_family="ipv4-only"
        )

        async def go() -> list[RecipientResult]:
            routed = await route(
                resolver_for(dns_server), "dest.test", policy_from_settings(s), random.Random(1), s
            )
            the_plan = routed.plan
            assert [t.exchange for t in the_plan.targets] == ["mx1.dest.test", "mx2.dest.test"]
            courier = Courier(s)
            try:
                return await courier.deliver(
                    the_plan, Envelope("s@src.test"), [Recipient("a@dest.test")], MESSAGE,
                    tls=routed.tls,
                )
            finally:
                await courier.close()

        [r] = run(go())
        assert r.disposition is Disposition.DELIVERED
        assert r.remote_mta == f"mx2.dest.test[127.0.2.2]:{closed.port}"
        assert len(backup.messages) == 1
