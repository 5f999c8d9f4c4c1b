"""TLS-3: TLS policy levels per destination, through real SMTP sinks on loopback.

none / may / encrypt / verify (Postfix smtp_tls_security_level and policy maps).
Under encrypt/verify a missing STARTTLS, a refused STARTTLS, a failed handshake or
a failed verification defers that host with 4.7.5 and moves on; never plain text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.tls.policy import of_settings
from tests.support.courierkit import MESSAGE
from tests.support.courierkit import courier_settings as settings
from tests.support.smtpsink import RawSink, Sink, tls_available

pytestmark = pytest.mark.skipif(
    not tls_available(), reason="the cryptography package is needed for certificates"
)


def target(n: int, server: Sink | RawSink, exchange: str | None = None) -> Target:
    return Target(
        f"mx{n}.dest.test" if exchange is None else exchange, 10 * n, server.host, 4, server.port
    )


def plan(*targets: Target, domain: str = "dest.test") -> Plan:
    return Plan(
        domain, Verdict.DELIVERABLE, f"{len(targets)} address(es) to try", "2.0.0", targets=targets
    )


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded(), debug=True)


def deliver(the_plan: Plan, courier: Courier, rcpt: str = "a@dest.test") -> RecipientResult:
    recipient = Recipient(rcpt)

    async def go() -> RecipientResult:
        try:
            [result] = await courier.deliver(
                the_plan, Envelope("s@src.test", [recipient]), [recipient], MESSAGE,
                tls=of_settings(the_plan.domain, courier.settings), queue_id="Q1",
            )
            return result
        finally:
            await courier.close()

    result: RecipientResult = run(go())
    return result


def tls_sink(host: str, context: Any = None, **kwargs: Any) -> Sink:
    sink = Sink(host, starttls=True, **kwargs)
    if context is not None:
        sink.tls_context = context  # read at each connection: set before the first one
    return sink


# --- encrypt -----------------------------------------------------------------------------------


def test_tls3_encrypt_without_starttls_defers_4_7_5_and_sends_no_mail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with RawSink("127.0.1.1") as raw:
        courier = Courier(settings(tls_policy="encrypt"))
        r = deliver(plan(target(1, raw)), courier)
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        host = f"mx1.dest.test[127.0.1.1]:{raw.port}"
        assert r.reply == f"451 4.7.5 TLS required (encrypt) but not offered by {host}"
        assert r.remote_mta == f"mx1.dest.test[127.0.1.1]:{raw.port}"
        # DSN-6: the host said no such thing; the TLS-3 reason is ours
        assert r.remote_reply is False
        assert raw.messages == [] and not any(
            c.upper().startswith(("MAIL", "RCPT", "DATA")) for c in raw.commands
        )
        assert raw.commands[0] == "EHLO relay.test" and raw.connections == 1  # no plain-text retry
    assert any(
        "TLS required (encrypt) but not offered" in rec.getMessage() and "TLS-3" in rec.getMessage()
        for rec in caplog.records
        if rec.name == "mxroute.relay.courier.hosts"
    )


def test_tls3_encrypt_moves_on_to_the_next_host_that_offers_tls() -> None:
    with Sink("127.0.1.1") as plain, tls_sink("127.0.1.2") as secure:
        courier = Courier(settings(tls_policy="encrypt"))
        r = deliver(plan(target(1, plain), target(2, secure)), courier)
        assert (
            r.disposition is Disposition.DELIVERED
            and r.remote_mta is not None
            and r.remote_mta.startswith("mx2.")
        )
        assert plain.messages == [] and plain.connections[0].commands[0] == "EHLO relay.test"
        assert "MAIL" not in " ".join(plain.connections[0].commands)
        [conn] = secure.connections
        assert conn.tls and conn.commands[:3] == ["EHLO relay.test", "STARTTLS", "EHLO relay.test"]


def test_tls3_encrypt_self_signed_certificate_is_enough() -> None:
    with tls_sink("127.0.1.1") as sink:  # the sink's own self-signed certificate for sink.test
        courier = Courier(settings(tls_policy="encrypt"))
        r = deliver(plan(target(1, sink)), courier)
        assert (
            r.disposition is Disposition.DELIVERED
            and sink.connections[0].tls
            and len(sink.messages) == 1
        )


def test_tls3_encrypt_starttls_refused_defers_no_plain_text() -> None:
    with tls_sink("127.0.1.1", replies={"STARTTLS": "454 4.7.0 TLS not available"}) as sink:
        courier = Courier(settings(tls_policy="encrypt"))
        r = deliver(plan(target(1, sink)), courier)
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        assert "refused STARTTLS: 454 4.7.0 TLS not available" in r.reply
        assert sink.messages == [] and [c.commands for c in sink.connections] == [
            ["EHLO relay.test", "STARTTLS"]
        ]
        assert courier.stats["tls_fallbacks"] == 0


def test_tls3_encrypt_failed_handshake_never_retried_in_plain_text() -> None:
    # TLS-1 would retry this host in plain text; TLS-3 encrypt must not.
    with RawSink("127.0.1.1", starttls_reply="220 go\r\n") as raw:
        courier = Courier(settings(tls_policy="encrypt"))
        r = deliver(plan(target(1, raw)), courier)
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        assert "but the handshake with mx1.dest.test" in r.reply
        assert raw.connections == 1 and raw.messages == [] and b"MAIL FROM" not in raw.raw


# --- verify ------------------------------------------------------------------------------------


def test_tls3_verify_self_signed_certificate_defers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with tls_sink("127.0.1.1") as sink:
        courier = Courier(settings(tls_policy="verify"))
        r = deliver(plan(target(1, sink)), courier)
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        assert r.reply.startswith(
            "451 4.7.5 TLS certificate verification failed for mx1.dest.test[127.0.1.1]"
        )
        assert "self-signed" in r.reply or "self signed" in r.reply
        assert sink.messages == [] and len(sink.connections) == 1  # never plain text
    assert any(
        "verification failed" in rec.getMessage()
        for rec in caplog.records
        if rec.name == "mxroute.relay.courier.hosts"
    )


def test_tls3_verify_with_own_ca_and_certificate_for_the_mx_name_delivers(tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    with tls_sink("127.0.1.1", ca.server_context("mx1.dest.test")) as sink:
        courier = Courier(settings(tls_policy="verify", tls_ca_file=ca.ca_file))
        r = deliver(plan(target(1, sink)), courier)
        assert r.disposition is Disposition.DELIVERED, r.reply
        assert sink.connections[0].tls and len(sink.messages) == 1


def test_tls3_verify_name_mismatch_defers_and_next_matching_host_delivers(tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    with (
        tls_sink("127.0.1.1", ca.server_context("other.dest.test")) as wrong,
        tls_sink("127.0.1.2", ca.server_context("mx2.dest.test")) as right,
    ):
        courier = Courier(settings(tls_policy="verify", tls_ca_file=ca.ca_file))
        r = deliver(plan(target(1, wrong), target(2, right)), courier)
        assert (
            r.disposition is Disposition.DELIVERED
            and r.remote_mta is not None
            and r.remote_mta.startswith("mx2.")
        )
        assert wrong.messages == [] and len(right.messages) == 1


def test_tls3_verify_name_mismatch_reason_kept_when_nothing_qualifies(tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    with tls_sink("127.0.1.1", ca.server_context("other.dest.test")) as wrong:
        courier = Courier(settings(tls_policy="verify", tls_ca_file=ca.ca_file))
        r = deliver(plan(target(1, wrong)), courier)
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        assert "verification failed" in r.reply and "mx1.dest.test" in r.reply
        assert wrong.messages == []


def test_tls3_verify_address_literal_has_no_name_to_check(tmp_path: Path) -> None:
    with tls_sink("127.0.1.1") as sink:
        courier = Courier(settings(tls_policy="verify"))
        r = deliver(
            plan(target(1, sink, exchange=""), domain="[127.0.1.1]"), courier, "a@[127.0.1.1]"
        )
        assert (r.disposition, r.status) == (
            Disposition.DEFERRED,
            "4.7.5",
        ) and "needs an MX host name" in r.reply
        assert sink.messages == []


# --- none and may --------------------------------------------------------------------------------


def test_tls3_none_never_sends_starttls_even_when_offered() -> None:
    with RawSink("127.0.1.1", starttls_reply="220 go\r\n") as raw:
        courier = Courier(settings(tls_policy="none"))
        r = deliver(plan(target(1, raw)), courier)
        assert r.disposition is Disposition.DELIVERED
        assert b"STARTTLS" not in raw.raw and b"MAIL FROM:<s@src.test>" in raw.raw
        assert len(raw.messages) == 1


def test_tls3_may_is_the_default_and_uses_starttls() -> None:
    assert settings().tls_policy == "may" and settings().tls_policy_domains == {}
    with tls_sink("127.0.1.1") as sink:
        r = deliver(plan(target(1, sink)), Courier(settings()))
        assert r.disposition is Disposition.DELIVERED and sink.connections[0].tls


# --- per-domain policies and connection reuse ---------------------------------------------


def test_tls3_per_domain_policy_applies_only_to_that_domain() -> None:
    s = settings(tls_policy_domains={".secure.test": "encrypt"})
    with Sink("127.0.1.1") as plain:
        courier = Courier(s)
        r = deliver(plan(target(1, plain), domain="dest.test"), courier)
        assert r.disposition is Disposition.DELIVERED
        courier = Courier(s)
        r = deliver(
            plan(target(1, plain), domain="mail.secure.test"), courier, "a@mail.secure.test"
        )
        assert (r.disposition, r.status) == (Disposition.DEFERRED, "4.7.5")
        assert [m.rcpt_to for m in plain.messages] == [["a@dest.test"]]


def test_tls3_pooled_plain_session_not_reused_for_a_stricter_domain() -> None:
    s = settings(tls_policy_domains={"secure.test": "encrypt"})

    async def go(courier: Courier, plain: Sink) -> tuple[RecipientResult, RecipientResult]:
        try:
            a, b = Recipient("a@dest.test"), Recipient("b@secure.test")
            [first] = await courier.deliver(
                plan(target(1, plain)), Envelope("s@src.test", [a]), [a], MESSAGE
            )
            [second] = await courier.deliver(
                plan(target(1, plain), domain="secure.test"),
                Envelope("s@src.test", [b]),
                [b],
                MESSAGE,
                tls=of_settings("secure.test", s),
            )
            return first, second
        finally:
            await courier.close()

    with Sink("127.0.1.1") as plain:
        courier = Courier(s)
        first, second = run(go(courier, plain))
        assert first.disposition is Disposition.DELIVERED
        assert (second.disposition, second.status) == (Disposition.DEFERRED, "4.7.5")
        assert [m.rcpt_to for m in plain.messages] == [["a@dest.test"]]
        assert courier.stats["reused"] == 0


def test_tls3_verified_session_reused_for_the_same_mx_name(tmp_path: Path) -> None:
    from tests.support.tlsca import TestCA

    ca = TestCA(tmp_path / "ca")
    s = settings(tls_policy="verify", tls_ca_file=ca.ca_file)

    async def go(courier: Courier) -> list[RecipientResult]:
        out = []
        try:
            for rcpt in ("a@dest.test", "b@dest.test"):
                r = Recipient(rcpt)
                out += await courier.deliver(
                    plan(target(1, sink)), Envelope("s@src.test", [r]), [r], MESSAGE,
                    tls=of_settings("dest.test", s),
                )
            return out
        finally:
            await courier.close()

    with tls_sink("127.0.1.1", ca.server_context("mx1.dest.test")) as sink:
        courier = Courier(s)
        results = run(go(courier))
        assert [r.disposition for r in results] == [Disposition.DELIVERED] * 2
        assert courier.stats["reused"] == 1 and len(sink.connections) == 1


def test_tls3_verify_follows_a_reloaded_tls_ca_file(tmp_path: Path) -> None:
    """SIGHUP replaces courier.settings: the next verify handshake uses the new tls_ca_file."""
    from tests.support.tlsca import TestCA

    old_ca, new_ca = TestCA(tmp_path / "old"), TestCA(tmp_path / "new")
    with tls_sink("127.0.1.1", new_ca.server_context("mx1.dest.test")) as sink:
        courier = Courier(settings(tls_policy="verify", tls_ca_file=old_ca.ca_file))
        r = deliver(plan(target(1, sink)), courier)
        assert (r.disposition, r.status) == (
            Disposition.DEFERRED,
            "4.7.5",
        ) and "verification failed" in r.reply
        courier.settings = settings(tls_policy="verify", tls_ca_file=new_ca.ca_file)
        r = deliver(plan(target(1, sink)), courier)
        assert r.disposition is Disposition.DELIVERED and len(sink.messages) == 1
