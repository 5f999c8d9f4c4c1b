"""issue 16 §1: the courier at a routed next hop — upstream AUTH (RFC 4954) after TLS only, and
implicit TLS for ``smtps://`` next hops (RFC 8314 §3.3).

Plans are built by hand as ``routing.route()`` builds them for a ``routes`` rule
(``Plan.route`` = the chosen rule, the TLS level the rule's). Peers are real servers on
loopback: aiosmtpd with an authenticator (tests/support/smtpsink.py ``auth=``), an implicit-TLS
aiosmtpd listener, and ``mxroute serve`` itself with ``auth_credentials_file``. Certificates come
from tests/support/tlsca.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.routing.rules import Chosen
from mxroute.settings import Settings
from mxroute.settingsrules import RouteRule
from mxroute.tls.policy import TlsPolicy
from tests.support.courierkit import MESSAGE, courier_settings
from tests.support.relay import World, wait_for
from tests.support.smtpsink import RawSink, Sink, tls_available
from tests.support.tlsca import TestCA

pytestmark = pytest.mark.skipif(
    not tls_available(), reason="the cryptography package is needed for certificates"
)

SECRET = "hunter2-upstream-Secret"  # must never appear in a log line, a reply or a result
USER = "relay-user"


def secret_file(tmp_path: Path, secret: str = SECRET, name: str = "upstream.secret") -> Path:
    path = tmp_path / name
    path.write_text(secret + "\n")  # a trailing newline, as editors leave it, is not the secret
    return path


def chosen(next_hop: str, *, password_file: Path | None = None, user: str = USER,
           tls: str | None = None, number: int = 1) -> Chosen:
    """Rule ``number`` sending dest.test to ``next_hop`` (with AUTH when ``password_file``)."""
    auth = {"username": user, "password_file": str(password_file)} if password_file else None
    return Chosen(number, RouteRule.model_validate(
        {"match": "dest.test", "next_hop": next_hop, "auth": auth, "tls": tls}))


def routed(rule: Chosen, *targets: Target) -> Plan:
    """The plan ``route()`` gives for ``rule``: the next hop's addresses, ``route`` set."""
    return Plan("dest.test", Verdict.DELIVERABLE, f"{len(targets)} address(es) to try", "2.0.0",
                targets=targets, route=rule)


def hop(sink: Sink | RawSink, name: str = "hop.test") -> Target:
    """The next hop ``[name]:port`` at the sink's address (exchange: the name TLS verifies)."""
    return Target(name, 0, sink.host, 4, sink.port)


def level(rule: Chosen) -> TlsPolicy:
    """The TLS level ``route()`` gives a routed plan (the rule's, else ``tls_policy``)."""
    return TlsPolicy(level=rule.tls_level or "may", source="routes", match=f"rule {rule.number}")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


def deliver(courier: Courier, *plans: Plan) -> list[RecipientResult]:
    """One message per plan, in order, on one courier (pool and host memory shared)."""

    async def go() -> list[RecipientResult]:
        out = []
        try:
            for n, the_plan in enumerate(plans, start=1):
                recipient = Recipient("a@dest.test")
                [result] = await courier.deliver(
                    the_plan, Envelope("s@src.test", [recipient]), [recipient], MESSAGE,
                    tls=level(the_plan.route) if the_plan.route else TlsPolicy(),
                    queue_id=f"Q{n}",
                )
                out.append(result)
        finally:
            await courier.close()
        return out

    results: list[RecipientResult] = run(go())
    return results


def settings(ca: TestCA, **overrides: Any) -> Settings:
    return courier_settings(tls_ca_file=ca.ca_file, **overrides)


def auth_sink(host: str, ca: TestCA, name: str = "hop.test", **kwargs: Any) -> Sink:
    """An upstream that offers STARTTLS (a certificate for ``name``) and requires AUTH."""
    sink = Sink(host, starttls=True, auth={USER: SECRET, "other-user": "other-secret"}, **kwargs)
    sink.tls_context = ca.server_context(name)
    return sink


def ours(caplog: pytest.LogCaptureFixture) -> str:
    """What mxroute (and aiosmtplib) logged: not the test peer's own debug log (``mail.log``)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))


def no_secret(*texts: str) -> None:
    """Neither the secret nor its base64 forms (AUTH PLAIN / LOGIN) appear in ``texts``."""
    forms = [SECRET, base64.b64encode(SECRET.encode()).decode(),
             base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode()]
    for text in texts:
        for form in forms:
            assert form not in text


# --- AUTH after STARTTLS ------------------------------------------------------------------------


def test_auth_plain_after_starttls_and_second_ehlo_delivers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 16 §1: AUTH (RFC 4954 §4) only after STARTTLS and the EHLO that follows it
    (RFC 3207 §4.2); PLAIN preferred to LOGIN; the secret from password_file, never logged."""
    caplog.set_level(logging.DEBUG)
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    with auth_sink("127.0.16.1", ca) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DELIVERED, result
        conn = sink.connections[0]
        assert conn.tls and conn.auth == [("PLAIN", USER, True)]
        assert conn.commands[:4] == ["EHLO relay.test", "STARTTLS", "EHLO relay.test", "AUTH PLAIN"]
        assert conn.commands[4].startswith("MAIL FROM:<s@src.test>")
        assert len(sink.messages) == 1
    assert "tls=TLSv1.3/" in caplog.text and "/verified" in caplog.text
    no_secret(ours(caplog), result.reply)


def test_auth_login_when_the_upstream_offers_only_login(tmp_path: Path) -> None:
    """issue 16 §1: the mechanism is one the upstream advertises (LOGIN when only LOGIN)."""
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    with auth_sink("127.0.16.2", ca, auth_mechanisms=("LOGIN",)) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DELIVERED, result
        assert sink.connections[0].auth == [("LOGIN", USER, True)]


def test_cram_md5_preferred_when_offered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """issue 16 §1: the strongest mechanism offered: CRAM-MD5 (RFC 2195, the secret never on
    the wire) before PLAIN and LOGIN."""
    caplog.set_level(logging.DEBUG)
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    with auth_sink("127.0.16.13", ca, auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5")) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DELIVERED, result
        assert sink.connections[0].auth == [("CRAM-MD5", USER, True)]
    no_secret(ours(caplog))


def test_wrong_password_defers_with_the_upstreams_535_and_backs_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 16 §1: 535 (wrong credentials) is a deferral (4.7.8) carrying the upstream's reply,
    never a bounce; the host is then skipped until its retry time (RTY-4), so a queue of
    messages makes one failed login per retry cycle, not one per message; one mechanism is
    tried, not each in turn (no login storm)."""
    caplog.set_level(logging.DEBUG)
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path, "wrong-" + SECRET))
    with auth_sink("127.0.16.3", ca) as sink:
        first, second, third = deliver(
            Courier(settings(ca)), *[routed(rule, hop(sink))] * 3
        )
        assert first.disposition is Disposition.DEFERRED, first
        assert first.status == "4.7.8"
        assert first.reply.startswith("535 5.7.8 "), first.reply
        assert first.remote_reply and first.remote_mta == str(hop(sink))
        assert second.disposition is third.disposition is Disposition.DEFERRED
        assert "retry time" in second.reply and "535" in second.reply
        assert len(sink.connections) == 1 and len(sink.connections[0].auth) == 1
        assert not sink.messages and "MAIL" not in " ".join(sink.connections[0].commands)
    assert "status=deferred (host hop.test[127.0.16.3]" in caplog.text
    assert "said: 535 5.7.8" in caplog.text
    no_secret(ours(caplog), first.reply)
    assert "wrong-" not in ours(caplog)


def test_auth_temporary_failure_454_defers(tmp_path: Path) -> None:
    """issue 16 §1: any refusal of AUTH is a deferral (here 454 4.7.0), never a bounce."""
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    with auth_sink("127.0.16.4", ca, replies={"AUTH": "454 4.7.0 try again later"}) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DEFERRED
        assert (result.status, result.reply[:9]) == ("4.7.0", "454 4.7.0")
        assert not sink.messages


def test_connection_lost_during_auth_defers_naming_the_command_not_the_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 16 §1, SESS-4: the upstream drops the connection in reply to AUTH: deferral
    (4.4.2) "in reply to AUTH PLAIN", the credentials in no reply and no log line."""
    caplog.set_level(logging.DEBUG)
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    with auth_sink("127.0.16.16", ca, replies={"AUTH": "DROP"}) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DEFERRED
        assert result.status == "4.4.2" and "in reply to AUTH PLAIN" in result.reply, result
        assert not sink.messages
    no_secret(ours(caplog), result.reply)


def test_ip_literal_next_hop_with_starttls_verifies_the_ip_san(tmp_path: Path) -> None:
    """issue 16 §1: ``[127.0.16.15]:port`` with AUTH (level verify): STARTTLS verified against
    the address's IP SAN, then AUTH."""
    ca = TestCA(tmp_path / "ca")
    with auth_sink("127.0.16.15", ca, name="127.0.16.15") as sink:
        rule = chosen(f"[127.0.16.15]:{sink.port}", password_file=secret_file(tmp_path))
        [result] = deliver(Courier(settings(ca)), routed(rule, Target("", 0, sink.host, 4,
                                                                      sink.port)))
        assert result.disposition is Disposition.DELIVERED, result
        assert sink.connections[0].auth == [("PLAIN", USER, True)]


def test_auth_not_offered_after_tls_defers_and_sends_no_mail(tmp_path: Path) -> None:
    """issue 16 §1: an upstream that offers no AUTH after TLS: deferral (4.7.0), no MAIL sent
    unauthenticated."""
    ca = TestCA(tmp_path / "ca")
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    sink = Sink("127.0.16.5", starttls=True)
    sink.tls_context = ca.server_context("hop.test")
    with sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DEFERRED
        assert result.status == "4.7.0" and "AUTH" in result.reply
        commands = sink.connections[0].commands
        assert not any(c.startswith(("MAIL", "AUTH")) for c in commands), commands


@pytest.mark.parametrize("starttls", ["not offered", "refused"])
def test_auth_is_never_sent_in_plain_text(tmp_path: Path, starttls: str) -> None:
    """issue 16 §1: with ``tls = "may"`` and no TLS (STARTTLS not offered, or refused), AUTH is
    not sent: a rule with AUTH requires TLS (``may`` = ``encrypt``): deferral 4.7.5 (TLS-3); no
    credentials cross the wire in plain text."""
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path), tls="may")
    kwargs: dict[str, Any] = (
        {"starttls": True, "replies": {"STARTTLS": "454 4.7.0 TLS not available"}}
        if starttls == "refused" else {}
    )
    with Sink("127.0.16.6", **kwargs) as sink:
        [result] = deliver(Courier(courier_settings()), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DEFERRED
        assert result.status == "4.7.5" and "TLS" in result.reply, result.reply
        assert len(sink.connections) == 1
        assert all(not c.startswith(("AUTH", "MAIL")) for c in sink.connections[0].commands)


def test_failed_handshake_with_auth_is_not_retried_in_plain_text(tmp_path: Path) -> None:
    """issue 16 §1: ``tls = "may"`` with AUTH: a failed STARTTLS handshake is a deferral
    (4.7.5); no second, plain-text connection is made (TLS-1's fallback does not apply)."""
    rule = chosen("[hop.test]:587", password_file=secret_file(tmp_path), tls="may")
    with RawSink("127.0.16.14", starttls_reply="220 go\r\n") as raw:
        [result] = deliver(Courier(courier_settings()), routed(rule, hop(raw)))
        assert result.disposition is Disposition.DEFERRED
        assert result.status == "4.7.5" and "TLS" in result.reply, result.reply
        assert raw.connections == 1 and b"AUTH" not in raw.raw


@pytest.mark.parametrize("problem", ["missing", "a directory", "empty"])
def test_unusable_password_file_defers_naming_the_file_and_connects_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    """issue 16 §1: a missing, unreadable or empty password_file is a deferral (4.3.5) with a
    log line naming the file; the upstream is not contacted and not backed off."""
    ca = TestCA(tmp_path / "ca")
    path = tmp_path / "upstream.secret"
    if problem == "a directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    rule = chosen("[hop.test]:587", password_file=path)
    with auth_sink("127.0.16.7", ca) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DEFERRED
        assert result.status == "4.3.5" and str(path) in result.reply, result.reply
        assert not sink.connections
    assert f"password_file {path}" in caplog.text


# --- implicit TLS (smtps://, RFC 8314) ----------------------------------------------------------


def smtps_sink(host: str, context: Any, **kwargs: Any) -> Sink:
    sink = Sink(host, implicit_tls=True, **kwargs)
    sink.tls_context = context
    return sink


def test_smtps_next_hop_speaks_tls_from_the_first_byte_then_auth(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 16 §1, RFC 8314 §3.3: ``smtps://host:port``: TLS from the first byte (no
    STARTTLS), the certificate verified for the host, then EHLO and AUTH."""
    caplog.set_level(logging.INFO)
    ca = TestCA(tmp_path / "ca")
    rule = chosen("smtps://hop.test:465", password_file=secret_file(tmp_path))
    with smtps_sink("127.0.16.8", ca.server_context("hop.test"),
                    auth={USER: SECRET}) as sink:
        [result] = deliver(Courier(settings(ca)), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DELIVERED, result
        conn = sink.connections[0]
        assert conn.tls and conn.commands[:2] == ["EHLO relay.test", "AUTH PLAIN"]
        assert conn.auth == [("PLAIN", USER, True)]
    assert "/verified" in caplog.text


def test_smtps_ip_literal_next_hop_verifies_the_ip_san(tmp_path: Path) -> None:
    """issue 16 §1: ``smtps://127.0.16.9:port`` (no name): the certificate is verified against
    the address (an IP SAN); a certificate without it is refused (4.7.5), never plain text."""
    ca = TestCA(tmp_path / "ca")
    with smtps_sink("127.0.16.9", ca.server_context("127.0.16.9")) as good:
        rule = chosen(f"smtps://127.0.16.9:{good.port}")
        [result] = deliver(Courier(settings(ca)), routed(rule, Target("", 0, good.host, 4,
                                                                      good.port)))
        assert result.disposition is Disposition.DELIVERED, result
        assert good.connections[0].tls
    with smtps_sink("127.0.16.10", ca.server_context("other.test")) as wrong:
        rule = chosen(f"smtps://127.0.16.10:{wrong.port}")
        [result] = deliver(Courier(settings(ca)), routed(rule, Target("", 0, wrong.host, 4,
                                                                      wrong.port)))
        assert result.disposition is Disposition.DEFERRED
        assert result.status == "4.7.5", result
        assert not wrong.messages


def test_smtps_to_a_plain_text_listener_defers_and_never_falls_back(tmp_path: Path) -> None:
    """issue 16 §1: a smtps:// next hop that does not speak TLS: deferral; no second, plain-text
    connection (implicit TLS has no opportunistic fallback)."""
    rule = chosen("smtps://hop.test:465", tls="may")
    with Sink("127.0.16.11") as sink:
        [result] = deliver(Courier(courier_settings()), routed(rule, hop(sink)))
        assert result.disposition is Disposition.DEFERRED, result
        assert not sink.messages
        assert all(not c.commands for c in sink.connections)


# --- connection reuse ---------------------------------------------------------------------------


def test_an_authenticated_session_is_reused_only_for_its_own_rule(tmp_path: Path) -> None:
    """issue 16 §1, SESS-17: a pooled session authenticated for rule 1 (user A) is reused for
    rule 1's next message, never for rule 2 (user B) at the same address, nor for mail to the
    same address without a rule."""
    ca = TestCA(tmp_path / "ca")
    first = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    other = chosen("[hop.test]:587", password_file=secret_file(tmp_path, "other-secret", "b"),
                   user="other-user", number=2)
    with auth_sink("127.0.16.12", ca) as sink:
        plain = Plan("dest.test", Verdict.DELIVERABLE, "1 address(es) to try", "2.0.0",
                     targets=(hop(sink),))
        results = deliver(Courier(settings(ca)), routed(first, hop(sink)),
                          routed(first, hop(sink)), routed(other, hop(sink)), plain)
        assert [r.disposition for r in results[:3]] == [Disposition.DELIVERED] * 3, results
        assert [c.auth for c in sink.connections[:2]] == [
            [("PLAIN", USER, True)], [("PLAIN", "other-user", True)]
        ]
        # without a rule: a session of its own, unauthenticated (the sink refuses its MAIL: 530)
        assert len(sink.connections) == 3 and sink.connections[2].auth == []
        assert results[3].disposition is not Disposition.DELIVERED
        assert len(sink.messages) == 3


# --- mxroute serve as the upstream --------------------------------------------------------------


def serve_upstream(world: World, tmp_path: Path, ca: TestCA) -> Any:
    """``mxroute serve`` requiring AUTH of non-local clients: STARTTLS with a certificate for
    hop.test, ``auth_credentials_file`` naming USER."""
    from mxroute.relay.intake.auth import hash_password

    cert, key = ca.leaf_files("hop.test")
    creds = tmp_path / "credentials"
    creds.write_text(f"{USER}:{hash_password(SECRET)}\n")
    world.sink(1)
    return world.relay(relay_networks=["127.0.0.9/32"], tls_cert_file=str(cert),
                       tls_key_file=str(key), auth_credentials_file=str(creds))


def test_courier_authenticates_to_mxroute_serve(world: World, tmp_path: Path) -> None:
    """issue 16 §1: the upstream is ``mxroute serve`` with ``auth_credentials_file``: the
    message is accepted after STARTTLS + AUTH and the upstream delivers it; a wrong password
    gets serve's 535, a deferral."""
    world.zone(f"dest.test. IN MX 10 mx.dest.test.\nmx.dest.test. IN A {world.ip(1)}")
    ca = TestCA(tmp_path / "ca")
    upstream = serve_upstream(world, tmp_path, ca)
    target = Target("hop.test", 0, "127.0.0.1", 4, upstream.port)
    good = chosen("[hop.test]:587", password_file=secret_file(tmp_path))
    bad = chosen("[hop.test]:587", password_file=secret_file(tmp_path, "nope", "bad"), number=2)
    ok, wrong = deliver(Courier(settings(ca)), routed(good, target), routed(bad, target))
    assert ok.disposition is Disposition.DELIVERED, ok
    assert wrong.disposition is Disposition.DEFERRED
    assert (wrong.status, wrong.reply[:9]) == ("4.7.8", "535 5.7.8"), wrong
    sink = world.sinks[0]
    assert wait_for(lambda: len(sink.messages) == 1)
    assert b"with ESMTPSA" in sink.messages[0].data
