"""The courier's pure parts: reply classification (one for lock-step and pipelined) and the
memory of unreachable hosts (RTY-4) under an injected clock."""

from __future__ import annotations

import asyncio

from mxroute.relay.courier.hosts import Endpoint, Hosts
from mxroute.relay.courier.replies import Kind, final_answer, mail_answer, rcpt_answer


def test_sess9_too_many_recipients_is_made_temporary() -> None:
    answer = rcpt_answer(552, "5.5.3 too many recipients", True)
    assert (answer.kind, answer.status) == (Kind.TOO_MANY, "4.5.3")
    assert rcpt_answer(452, "4.5.3 slow down", True).kind is Kind.TOO_MANY
    assert rcpt_answer(251, "user not local", False).kind is Kind.ACCEPTED


def test_mx17_permanent_and_temporary_answers() -> None:
    assert mail_answer(550, "5.7.1 no", True).kind is Kind.PERMANENT
    assert mail_answer(451, "later", False).status == "4.0.0"
    assert final_answer(421, "closing", False).kind is Kind.TEMPORARY
    assert final_answer(250, "2.0.0 ok", True).reply == "250 2.0.0 ok"


def test_rty4_unreachable_host_skipped_until_its_retry_time() -> None:
    now = [100.0]
    hosts = Hosts(clock=lambda: now[0])
    key = Endpoint("192.0.2.1", 25, None)
    hosts.failed(key, "4.4.1", "451 4.4.1 connect: refused", pause=60)
    skipped = hosts.skip(key)
    assert skipped is not None and skipped.reply == "451 4.4.1 connect: refused"
    now[0] = 161.0
    assert hosts.skip(key) is None and len(hosts) == 0


def test_rty4_first_contact_one_connection_the_rest_wait_for_its_verdict() -> None:
    hosts = Hosts()
    key = Endpoint("192.0.2.1", 25, None)
    order: list[str] = []

    async def first() -> None:
        async with hosts.contact(key) as known:
            assert known is None
            order.append("probing")
            await asyncio.sleep(0.01)
            hosts.failed(key, "4.4.1", "451 4.4.1 refused", pause=60)

    async def second() -> None:
        await asyncio.sleep(0)
        async with hosts.contact(key) as known:
            order.append("skipped" if known is not None else "tried")

    async def go() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(go())
    assert order == ["probing", "skipped"]
