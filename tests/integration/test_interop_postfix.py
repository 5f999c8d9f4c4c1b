"""Interop: mxroute's courier delivering to a real Postfix smtpd (Debian's postfix package).

Each test module run starts a private Postfix instance (``postfix -c DIR start``)
with its own config, queue and data directories in a temporary directory,
listening on 127.0.3.1 only; every message is put on *hold* by an access rule, so
nothing is delivered anywhere and ``postcat`` shows exactly what Postfix received
(envelope, DSN parameters, content). The instance is stopped afterwards.

Skipped with a reason when Postfix is not installed (or we are not root, which
``postfix start`` needs) — unless ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from mxroute.relay.courier.courier import Courier, canonical_data
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.settings import Settings
from tests.support.postfix import PostfixInstance, start_postfix, stop_postfix, unavailable

pytestmark = pytest.mark.interop

HOST = "127.0.3.1"


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixInstance]:
    why = unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"interop test cannot run in CI: {why}")
        pytest.skip(why)
    instance = start_postfix(HOST, tls=True)
    try:
        yield instance
    finally:
        stop_postfix(instance, instance.root)


@pytest.fixture
def mta(postfix: PostfixInstance) -> Iterator[PostfixInstance]:
    postfix.clear()
    yield postfix
    postfix.clear()


def _deliver(mta: PostfixInstance, recipients: list[Recipient], message: bytes,
             envelope: Envelope | None = None,
             **kw: Any) -> tuple[list[RecipientResult], Courier]:
    settings = Settings(helo_name="relay.test", connect_timeout=5, greeting_timeout=10)
    courier = Courier(settings, **kw)
    plan = Plan("interop.test", Verdict.DELIVERABLE, "1 address", "2.0.0",
                targets=(Target("mx.interop.test", 10, mta.host, 4, mta.port),))
    env = envelope or Envelope("s@src.test", recipients)

    async def go() -> list[RecipientResult]:
        try:
            return await courier.deliver(plan, env, recipients, message, queue_id="IOP1")
        finally:
            await courier.close()

    return asyncio.run(asyncio.wait_for(go(), 60)), courier


MESSAGE = (b"From: s@src.test\r\nTo: a@interop.test\r\nSubject: interop\r\n"
           b"Date: Sun, 1 Mar 2026 12:00:00 +0000\r\n"
           b"Message-ID: <interop-1@src.test>\r\n\r\nline one\n.\n..two\n.three\nlast")


def test_interop_postfix_accepts_and_content_is_exact(mta: PostfixInstance) -> None:
    """SESS-10/11 against a real smtpd: dots and line endings arrive as the canonical original."""
    [r], _ = _deliver(mta, [Recipient("a@interop.test")], MESSAGE)
    assert r.disposition is Disposition.DELIVERED, r.reply
    assert r.reply.startswith("250 2.0.0 Ok: queued as ") and r.status == "2.0.0"
    [queue_id] = mta.wait_held(1)
    assert r.reply.endswith(queue_id)
    envelope = mta.postcat(queue_id, "-e")
    assert "sender: s@src.test" in envelope and "recipient: a@interop.test" in envelope
    body = mta.body(queue_id)
    assert body == canonical_data(MESSAGE).split(b"\r\n\r\n", 1)[1]
    headers = mta.postcat(queue_id, "-h")
    assert "from relay.test" in headers  # SESS-2: our EHLO name in Postfix's Received:


def test_interop_postfix_per_recipient_replies_and_enhanced_codes(mta: PostfixInstance) -> None:
    """SESS-5/6: Postfix's 550 5.1.1 fails one recipient, the other is taken."""
    results, _ = _deliver(mta, [Recipient("a@interop.test"), Recipient("nobody@interop.test")],
                          MESSAGE)
    got = {r.recipient: r for r in results}
    assert got["a@interop.test"].disposition is Disposition.DELIVERED
    bad = got["nobody@interop.test"]
    assert (bad.disposition, bad.status) == (Disposition.BOUNCED, "5.1.1")
    assert bad.reply.startswith("550 5.1.1 ") and "no such user here" in bad.reply
    [queue_id] = mta.wait_held(1)
    assert "recipient: nobody@interop.test" not in mta.postcat(queue_id, "-e")


def test_interop_postfix_recipient_limit_leftovers_in_further_transactions(
        mta: PostfixInstance) -> None:
    """SESS-9: smtpd_recipient_limit=3 answers 452 4.5.3; the rest follow in new transactions."""
    rcpts = [Recipient(f"u{i}@interop.test") for i in range(7)]
    results, _ = _deliver(mta, rcpts, MESSAGE)
    assert all(r.disposition is Disposition.DELIVERED for r in results), [r.reply for r in results]
    held = mta.wait_held(3)
    assert len(held) == 3
    seen = sorted(line.split(": ", 1)[1] for q in held for line in mta.postcat(q, "-e").splitlines()
                  if line.startswith("recipient: "))
    assert seen == sorted(r.address for r in rcpts)


def test_interop_postfix_dsn_parameters_and_8bitmime(mta: PostfixInstance) -> None:
    """DSN-9 and SESS-14: parameters pass through; 8-bit content goes with BODY=8BITMIME."""
    rcpt = Recipient("a@interop.test", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;A@interop.test")
    env = Envelope("s@src.test", [rcpt], ret="HDRS", envid="env+id=1")
    message = MESSAGE + "\r\nGrüße\r\n".encode()
    [r], _ = _deliver(mta, [rcpt], message, env)
    assert r.disposition is Disposition.DELIVERED, r.reply
    [queue_id] = mta.wait_held(1)
    envelope = mta.postcat(queue_id, "-e")
    assert "envelope_id=env+id=1" in envelope
    assert "ret_flags=2" in envelope  # HDRS
    assert "notify_flags=6" in envelope  # SUCCESS|FAILURE
    assert "dsn_orig_rcpt=rfc822;A@interop.test" in envelope
    assert mta.body(queue_id).endswith("Grüße\r\n".encode())


def test_interop_postfix_starttls_opportunistic(mta: PostfixInstance) -> None:
    """TLS-1: Postfix offers STARTTLS; the courier uses it and Postfix records the TLS session."""
    if not mta.tls:
        pytest.skip("the cryptography package is needed to make Postfix a certificate")
    [r], courier = _deliver(mta, [Recipient("a@interop.test")], MESSAGE)
    assert r.disposition is Disposition.DELIVERED, r.reply
    assert courier.stats["tls"] == 1 and courier.stats["tls_fallbacks"] == 0
    [queue_id] = mta.wait_held(1)
    assert "with ESMTPS" in mta.postcat(queue_id, "-h")


def test_interop_postfix_connection_reuse(mta: PostfixInstance) -> None:
    """Two messages over one connection, RSET between them (SESS-17)."""
    settings = Settings(helo_name="relay.test", connect_timeout=5, greeting_timeout=10)
    courier = Courier(settings, starttls=False)
    plan = Plan("interop.test", Verdict.DELIVERABLE, "1 address", "2.0.0",
                targets=(Target("mx.interop.test", 10, mta.host, 4, mta.port),))

    async def go() -> list[RecipientResult]:
        try:
            out = []
            for n in range(2):
                out += await courier.deliver(plan, Envelope("s@src.test"),
                                             [Recipient(f"r{n}@interop.test")], MESSAGE)
            return out
        finally:
            await courier.close()

    results = asyncio.run(asyncio.wait_for(go(), 60))
    assert all(r.disposition is Disposition.DELIVERED for r in results)
    assert courier.stats["connections"] == 1 and courier.stats["reused"] == 1
    assert len(mta.wait_held(2)) == 2
