"""Interop (issue 14 §1): what `mxroute serve` signs, OpenDKIM from Debian verifies — the
independent implementation beside dkimpy. The real relay signs at intake (RSA-2048 then Ed25519)
and delivers to the OpenDKIM-verifying Postfix (tests/support/opendkim.py, the ``dkim_peer``
fixture); both signatures must come back ``dkim=pass``, for a hard message (8-bit body, folded
and very long headers, WSP runs, dot lines, trailing blank lines) and for mxroute's own DSN.

Skipped with the reason when opendkim or Postfix is missing (or not root), a failure instead
under ``CI=true``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mxroute.identity.dkim.keys import generate, load_key, write_key
from mxroute.identity.dkim.record import build_txt
from tests.support.opendkim import DkimPeer, authentication_results, dkim_results
from tests.support.relay import World, wait_for

pytestmark = pytest.mark.interop

HARD = (
    b"From: =?utf-8?q?Gr=C3=BC=C3=9Fe?= (comment) <a@sender.test>\r\n"
    b"To: u@interop.test\r\n"
    b"Subject: a folded subject line that goes on\r\n and on across\r\n\tthree lines\r\n"
    b"Date: Thu, 3 Dec 2026 03:00:00 +0000\r\n"
    b"Message-ID: <sign-1@sender.test>\r\n"
    b"References: " + b" ".join(f"<ref-{n}-{'r' * 40}@sender.test>".encode()
                                for n in range(30)).replace(b"> <", b">\r\n <") + b"\r\n"
    b"X-Long: " + b"x" * 980 + b"\r\n"
    b"X-Spaces:   spaced\t value  \r\n"
    b"List-Unsubscribe: <https://sender.test/u/1>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".\r\n..\r\n.leading dot\r\n. dot and space\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe2\x9c\x93\r\n"
    b"trailing spaces   \r\n\ttab first\r\n  two  \t runs\r\n"
    + b"y" * 990 + b"\r\n"
    b"\r\n\r\nlast line\r\n\r\n\r\n"
)


def published(tmp_path: Path) -> tuple[list[dict[str, str]], str]:
    """Keys for sender.test (RSA s-rsa, Ed25519 s-ed) and relay.test (the DSNs' From: domain),
    as dkim_keys entries, and their zone lines."""
    entries, zone = [], ""
    for domain, selector, algorithm in (("sender", "s-rsa", "rsa"), ("sender", "s-ed", "ed25519"),
                                        ("relay", "bounce", "rsa")):
        path = tmp_path / f"{domain}.{selector}.pem"
        write_key(generate(algorithm), path)
        text = build_txt(algorithm, load_key(path).public_b64())
        strings = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
        zone += f"{selector}._domainkey.{domain} IN TXT {strings}\n"
        entries.append({"domain": f"{domain}.test", "selector": selector, "key_file": str(path)})
    return entries, zone


def test_serve_signatures_pass_opendkim(dkim_peer: DkimPeer, tmp_path: Path) -> None:
    """Issue 14 §1: RSA-2048 and Ed25519 signatures made by serve on a hard message → OpenDKIM
    says dkim=pass for both."""
    keys, zone = published(tmp_path)
    dkim_peer.publish(zone)
    with World.running(tmp_path, dkim_peer.dns) as world:
        relay = dkim_peer.relay(world, dkim_keys=keys)
        assert relay.send("a@sender.test", ["u@interop.test"], HARD,
                          mail_options=["BODY=8BITMIME"]) == {}
        [held] = dkim_peer.messages(1, timeout=30)
    assert sorted((r.result, r.domain, r.selector, r.algorithm) for r in dkim_results(held)) == [
        ("pass", "sender.test", "s-ed", "ed25519-sha256"),
        ("pass", "sender.test", "s-rsa", "rsa-sha256")], authentication_results(held)


def test_serve_signed_dsn_passes_opendkim(dkim_peer: DkimPeer, tmp_path: Path) -> None:
    """Issue 14 §1: mxroute's own bounce (From: MAILER-DAEMON@relay.test) is signed with
    relay.test's key; OpenDKIM passes it."""
    keys, zone = published(tmp_path)
    dkim_peer.publish(zone)
    with World.running(tmp_path, dkim_peer.dns) as world:
        relay = dkim_peer.relay(world, dkim_keys=keys)
        message = HARD.replace(b"To: u@interop.test", b"To: x@no-such-domain.test")
        assert relay.send("a@interop.test", ["x@no-such-domain.test"], message,
                          mail_options=["BODY=8BITMIME", "RET=FULL"]) == {}
        [held] = dkim_peer.messages(1, timeout=30)
        assert wait_for(lambda: relay.queued() == [], timeout=15)
    assert b"Undelivered Mail Returned to Sender" in held
    results = [(r.result, r.domain, r.selector) for r in dkim_results(held)]
    assert results == [("pass", "relay.test", "bounce")], authentication_results(held)
