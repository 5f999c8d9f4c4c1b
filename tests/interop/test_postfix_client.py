"""Issue 17: Postfix as mxroute's client: a private Postfix whose ``relayhost`` is mxroute, set up
with the exact main.cf lines of docs/clients.md, relays plain, 8-bit and SMTPUTF8 mail that
arrives at the destination sink.

Three set-ups: ``relayhost`` alone (Postfix in relay_networks), STARTTLS + SASL AUTH, and implicit
TLS on the submissions port (``smtp_tls_wrappermode``) + SASL AUTH. Mail is injected into the
Postfix over SMTP (smtplib), as a program on that machine would hand it over. Needs Postfix, root
and libsasl2-modules (Postfix's SASL PLAIN/LOGIN client); a failure under CI=true.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import postfix
from tests.support.clients import (
    IN_CI,
    KINDS,
    PLAIN,
    UTF8,
    Submission,
    arrived,
    by_subject,
    received_with,
    replaced,
    snippet,
    submission_relay,
)
from tests.support.relay import World, wait_for

pytestmark = pytest.mark.interop

HOST = "127.0.17.1"


def postfix_ready() -> None:
    why = postfix.unavailable()
    if why is None and not any(Path("/usr/lib").glob("*/sasl2/libplain.so*")):
        why = "Postfix's SASL client needs libsasl2-modules (PLAIN/LOGIN)"
    if why:
        if IN_CI:
            pytest.fail(f"interop test cannot run in CI: {why}")
        pytest.skip(why)


def main_cf(sub: Submission, tmp: Path, mode: str) -> str:
    """The guide's main.cf lines for ``mode`` (the test's port and sasl_passwd path), after a
    relay-everything policy for the private instance."""
    policy = "smtpd_recipient_restrictions = permit_mynetworks, reject\nmydestination =\n"
    if mode == "clear":
        return policy + snippet("postfix-main.cf").splitlines()[0].replace("2525", str(sub.port))
    port = str(sub.smtps_port if mode == "smtps" else sub.port)
    passwd = tmp / "sasl_passwd"
    passwd.write_text(replaced(snippet("postfix-sasl_passwd"), {"2525": port}))
    passwd.chmod(0o600)
    lines = replaced(snippet("postfix-main.cf"), {
        "2525": str(sub.port), "/etc/postfix/sasl_passwd": str(passwd)})
    if mode == "smtps":
        lines += replaced(snippet("postfix-main.cf-smtps"), {"465": str(sub.smtps_port)})
    return policy + lines


@contextmanager
def postfix_client(extra: str) -> Iterator[postfix.PostfixInstance]:
    instance = postfix.start_postfix(HOST, extra=extra, prefix="mxroute-pfclient-")
    try:
        yield instance
    finally:
        postfix.stop_postfix(instance, instance.root)


@pytest.mark.parametrize("mode", ["clear", "starttls", "smtps"])
def test_postfix_relayhost_delivers_plain_8bit_and_smtputf8(world: World, tmp_path: Path,
                                                            mode: str) -> None:
    """Issue 17: Postfix with ``relayhost = [127.0.0.1]:PORT`` (+ the guide's TLS and SASL
    lines) hands each message to mxroute, which delivers it intact (SMTPUTF8 and 8BITMIME
    kept end to end); mxroute's Received: names the session (ESMTPSA after AUTH over TLS)."""
    postfix_ready()
    sink = world.sink(1)
    sub = submission_relay(world, tmp_path, trusted=mode == "clear")
    with postfix_client(main_cf(sub, tmp_path, mode)) as mta:
        for kind in KINDS:
            with smtplib.SMTP(mta.host, mta.port, timeout=30) as client:
                options = [*(["BODY=8BITMIME"] if kind is not PLAIN else []),
                           *(["SMTPUTF8"] if kind is UTF8 else [])]
                client.sendmail(kind.sender, [kind.rcpt], kind.message("\r\n"), options)
        wait_for(lambda: len(sink.messages) >= 3, timeout=60)
        log = (mta.root / "maillog").read_text(errors="replace")
        assert len(sink.messages) == 3, f"{log[-3000:]}\n{sub.relay.log()[-2000:]}"
    want = "ESMTP" if mode == "clear" else "ESMTPSA"
    for kind in KINDS:
        got = by_subject(sink.messages, kind)
        arrived(got, kind)
        word = received_with(got)
        assert word == (want.replace("ESMTP", "UTF8SMTP") if kind is UTF8 else want), word
        assert got.data is not None and b"from mx.interop.test" in got.data
