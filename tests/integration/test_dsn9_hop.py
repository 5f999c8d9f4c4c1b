"""DSN-9 at the courier, through loopback sinks: whether the host that took the message
advertised DSN (it then got NOTIFY/ORCPT and owns success notices) is reported per recipient."""

from __future__ import annotations

import asyncio
from typing import Any

from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from tests.support.courierkit import MESSAGE, courier_settings
from tests.support.smtpsink import Sink


def deliver(sink: Sink, rcpt: Recipient, **env: Any) -> RecipientResult:
    settings = courier_settings()
    plan = Plan(
        "dest.test",
        Verdict.DELIVERABLE,
        "1 address",
        "2.0.0",
        targets=(Target("mx1.dest.test", 10, sink.host, 4, sink.port),),
    )

    async def go() -> RecipientResult:
        courier = Courier(settings)
        try:
            [result] = await courier.deliver(
                plan, Envelope("s@src.test", [rcpt], **env), [rcpt], MESSAGE
            )
            return result
        finally:
            await courier.close()

    result: RecipientResult = asyncio.run(asyncio.wait_for(go(), 30), debug=True)
    return result


def test_dsn9_dsn_hop_gets_the_parameters_and_is_marked_responsible() -> None:
    rcpt = Recipient("a@dest.test", notify=("SUCCESS",), orcpt="rfc822;A@dest.test")
    with Sink("127.0.1.1") as sink:
        result = deliver(sink, rcpt, ret="FULL", envid="E1")
        assert result.disposition is Disposition.DELIVERED and result.next_hop_dsn
        [msg] = sink.messages
        assert msg.mail_args.endswith(" RET=FULL ENVID=E1")
        assert msg.rcpt_args == ["TO:<a@dest.test> NOTIFY=SUCCESS ORCPT=rfc822;A@dest.test"]


def test_dsn9_hop_without_dsn_is_not_responsible() -> None:
    rcpt = Recipient("a@dest.test", notify=("SUCCESS",))
    with Sink("127.0.1.1", dsn=False) as sink:
        result = deliver(sink, rcpt, envid="E1")
        assert result.disposition is Disposition.DELIVERED and not result.next_hop_dsn
        assert (
            sink.messages[0].rcpt_args == ["TO:<a@dest.test>"]
            and "ENVID" not in sink.messages[0].mail_args
        )


def test_dsn9_helo_only_hop_is_not_responsible() -> None:
    rcpt = Recipient("a@dest.test", notify=("SUCCESS",))
    with Sink("127.0.1.1", esmtp=False) as sink:
        result = deliver(sink, rcpt)
        assert result.disposition is Disposition.DELIVERED and not result.next_hop_dsn
        assert sink.connections[0].helo == "relay.test" and not sink.connections[0].ehlo
