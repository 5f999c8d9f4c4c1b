"""Interop (issue 14): OpenDKIM from Debian, the independent DKIM verifier, checks signatures made
by dkimpy, as a milter in verify mode on a private receiving Postfix (tests/support/opendkim.py,
the ``dkim_peer`` fixture), keys published in the loopback DNS zone.

First the peer itself: a good RSA-2048 or Ed25519 signature arrives with ``dkim=pass``, a
tampered body with ``dkim=fail``, an unpublished selector with no pass, a stopped milter refuses
the mail (``milter_default_action = tempfail``). Then SESS-20: a dkimpy-signed message relayed
through the real ``mxroute serve`` to that Postfix still verifies (8-bit body, folded and very
long headers, lines starting with a dot), with ``simple/simple`` as well as ``relaxed/relaxed``.

Skipped with the reason when opendkim or Postfix is missing (or not root, which Postfix needs),
a failure instead under ``CI=true``.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.opendkim import DkimPeer, DkimResult, authentication_results, dkim_results
from tests.support.relay import World

pytestmark = pytest.mark.interop

SENDER = "a@sender.test"
RCPT = "u@interop.test"


@dataclass(frozen=True)
class Key:
    """A signing key as dkimpy takes it and its DNS record."""

    algorithm: bytes  # dkimpy's signature_algorithm
    private: bytes  # PEM (RSA) or the base64 32-byte seed (Ed25519), as dkimpy.sign wants
    record: str  # the TXT record's text

    def zone(self, selector: str, domain: str = "sender") -> str:
        """``SELECTOR._domainkey.DOMAIN IN TXT`` with the text in strings of 200 characters."""
        text = " ".join(f'"{self.record[i:i + 200]}"' for i in range(0, len(self.record), 200))
        return f"{selector}._domainkey.{domain} IN TXT {text}\n"


def _rsa_key() -> Key:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key(b"rsa-sha256", pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}")


def _ed25519_key() -> Key:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return Key(b"ed25519-sha256", base64.b64encode(seed),
               f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}")


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return _rsa_key()


@pytest.fixture(scope="module")
def ed_key() -> Key:
    return _ed25519_key()


def sign(message: bytes, key: Key, selector: str,
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
         headers: list[bytes] | None = None) -> bytes:
    """``message`` with one more DKIM-Signature (d=sender.test) at the top, made by dkimpy
    (``headers``: the fields to sign, dkimpy's choice by default)."""
    signature: bytes = dkim.sign(message, selector.encode(), b"sender.test", key.private,
                                 canonicalize=canonicalize, signature_algorithm=key.algorithm,
                                 include_headers=headers)
    return signature + message


def hand_over(peer: DkimPeer, message: bytes) -> bytes:
    """Send ``message`` to the peer's Postfix over SMTP; the message as it was held there."""
    with smtplib.SMTP(peer.host, peer.port, timeout=30) as client:
        client.sendmail(SENDER, [RCPT], message, mail_options=["BODY=8BITMIME"])
    [held] = peer.messages(1)
    return held


MESSAGE = (b"From: Alice <a@sender.test>\r\nTo: u@interop.test\r\n"
           b"Subject: interop with OpenDKIM\r\n"
           b"Date: Sun, 1 Mar 2026 12:00:00 +0000\r\nMessage-ID: <odk-1@sender.test>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\nHello,\r\n\r\nGr\xc3\xbc\xc3\x9fe.\r\n")


def test_opendkim_passes_dkimpy_rsa_signature(dkim_peer: DkimPeer, rsa_key: Key) -> None:
    """Issue 14: a dkimpy RSA-2048 signature (relaxed/relaxed), key published → dkim=pass."""
    dkim_peer.publish(rsa_key.zone("rsa1"))
    held = hand_over(dkim_peer, sign(MESSAGE, rsa_key, "rsa1"))
    assert dkim_results(held) == [DkimResult("pass", "sender.test", "rsa1", "rsa-sha256", None)]
    [field] = authentication_results(held)
    assert field.startswith("opendkim.interop.test;") and "dkim=pass (2048-bit key" in field


def test_opendkim_passes_dkimpy_ed25519_and_dual_signatures(dkim_peer: DkimPeer, rsa_key: Key,
                                                            ed_key: Key) -> None:
    """Issue 14 (RFC 8463): Debian's OpenDKIM verifies ed25519-sha256, alone and as the second
    signature beside RSA."""
    dkim_peer.publish(rsa_key.zone("rsa1") + ed_key.zone("ed1"))
    held = hand_over(dkim_peer, sign(MESSAGE, ed_key, "ed1"))
    assert dkim_results(held) == [
        DkimResult("pass", "sender.test", "ed1", "ed25519-sha256", None)]
    dkim_peer.clear()
    held = hand_over(dkim_peer, sign(sign(MESSAGE, rsa_key, "rsa1"), ed_key, "ed1"))
    assert sorted((r.result, r.selector, r.algorithm) for r in dkim_results(held)) == [
        ("pass", "ed1", "ed25519-sha256"), ("pass", "rsa1", "rsa-sha256")]


def test_opendkim_fails_a_tampered_body_whatever_the_message_claims(dkim_peer: DkimPeer,
                                                                    rsa_key: Key) -> None:
    """A body changed after signing → dkim=fail (the peer can say no); an Authentication-Results
    field that came with the message claiming the peer's authserv-id (a forged pass) is removed
    by OpenDKIM (RFC 8601 §5), and the helpers would not read it anyway (below Received:)."""
    dkim_peer.publish(rsa_key.zone("rsa1"))
    signed = sign(MESSAGE, rsa_key, "rsa1")
    forged = b"Authentication-Results: opendkim.interop.test; dkim=pass header.d=sender.test\r\n"
    held = hand_over(dkim_peer, forged + signed.replace(b"Hello,", b"Hello!"))
    [result] = dkim_results(held)
    assert (result.result, result.selector) == ("fail", "rsa1"), authentication_results(held)
    assert held.count(b"Authentication-Results:") == 1 and b"dkim=pass" not in held


def test_opendkim_unpublished_selector_and_unsigned_mail_do_not_pass(dkim_peer: DkimPeer,
                                                                     rsa_key: Key) -> None:
    """No key published for the selector → a non-pass result; unsigned mail → dkim=none (the
    milter ran)."""
    dkim_peer.publish(rsa_key.zone("rsa1"))
    held = hand_over(dkim_peer, sign(MESSAGE, rsa_key, "gone"))
    [result] = dkim_results(held)
    assert result.selector == "gone" and result.result not in ("pass", "none"), result
    dkim_peer.clear()
    held = hand_over(dkim_peer, MESSAGE)
    assert [r.result for r in dkim_results(held)] == ["none"]


def test_opendkim_stopped_milter_refuses_mail(dkim_peer: DkimPeer, rsa_key: Key) -> None:
    """milter_default_action = tempfail: with OpenDKIM down the peer answers 4xx, so a broken
    milter can never make a test pass; started again, it verifies again."""
    dkim_peer.publish(rsa_key.zone("rsa1"))
    dkim_peer.opendkim.stop()
    try:
        with (pytest.raises(smtplib.SMTPResponseException) as refused,
              smtplib.SMTP(dkim_peer.host, dkim_peer.port, timeout=30) as client):
            client.sendmail(SENDER, [RCPT], sign(MESSAGE, rsa_key, "rsa1"))
        assert 400 <= refused.value.smtp_code < 500, refused.value
        assert dkim_peer.postfix.held() == []
    finally:
        dkim_peer.opendkim.start()
    held = hand_over(dkim_peer, sign(MESSAGE, rsa_key, "rsa1"))
    assert [r.result for r in dkim_results(held)] == ["pass"]


# --- SESS-20: the relay must not alter what it carries -------------------------------------------

HARD = (
    b"From: =?utf-8?q?Gr=C3=BC=C3=9Fe?= (comment) <a@sender.test>\r\n"
    b"To: u@interop.test\r\n"
    b"Subject: a folded subject line that goes on\r\n and on across\r\n\tthree lines\r\n"
    b"Date: Sun, 1 Mar 2026 12:00:00 +0000\r\n"
    b"Message-ID: <odk-sess20@sender.test>\r\n"
    b"References: " + b" ".join(f"<ref-{n}-{'r' * 40}@sender.test>".encode()
                                for n in range(30)).replace(b"> <", b">\r\n <") + b"\r\n"
    b"X-Long: " + b"x" * 980 + b"\r\n"
    b"X-Spaces:   spaced\t value  \r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".\r\n..\r\n.leading dot\r\n. dot and space\r\n...three\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe2\x9c\x93\r\n"
    b"trailing spaces   \r\n\ttab first\r\n"
    + b"y" * 990 + b"\r\n"
    b"\r\n\r\nlast line\r\n"
)


def _dns_for(records: dict[str, str]) -> Callable[..., bytes]:
    """dkimpy's dnsfunc over the records this test published (the same text as the zone)."""
    def lookup(name: bytes | str, timeout: int = 5) -> bytes:
        key = name.decode() if isinstance(name, bytes) else name
        return records.get(key.rstrip("."), "").encode()
    return lookup


def test_sess20_relayed_through_serve_dkim_still_passes(dkim_peer: DkimPeer, rsa_key: Key,
                                                        ed_key: Key, tmp_path: Path) -> None:
    """SESS-20 (issue 14): a message signed by dkimpy twice (RSA simple/simple, Ed25519
    relaxed/relaxed; every header field signed) with an 8-bit body, folded and very long headers
    and dot lines goes through the real ``mxroute serve`` to the OpenDKIM-verifying Postfix: both
    signatures still pass, at OpenDKIM and at dkimpy, and the content after the added trace
    fields is the signed content byte for byte. (By hand: unfolding the Subject or changing the
    X-Spaces whitespace fails the simple/simple signature; unstuffing ``..`` or turning the 8-bit
    line into quoted-printable fails both.)"""
    dkim_peer.publish(rsa_key.zone("rsa1") + ed_key.zone("ed1")
                      + "sender IN MX 10 mx.sender.test.\nmx.sender IN A 127.0.3.9\n")
    every = [line.split(b":")[0].lower() for line in HARD.split(b"\r\n\r\n")[0].split(b"\r\n")
             if line[:1] not in (b" ", b"\t")]
    signed = sign(sign(HARD, rsa_key, "rsa1", (b"simple", b"simple"), every), ed_key, "ed1",
                  headers=every)
    with World.running(tmp_path, dkim_peer.dns) as world:
        relay = dkim_peer.relay(world)
        refused = relay.send(SENDER, [RCPT], signed, mail_options=["BODY=8BITMIME"])
        assert refused == {}
        messages = dkim_peer.messages(1, timeout=30)
        assert len(messages) == 1, relay.log()
    [held] = messages
    assert sorted((r.result, r.selector) for r in dkim_results(held)) == [
        ("pass", "ed1"), ("pass", "rsa1")], authentication_results(held)
    assert held.endswith(signed)  # below the added trace fields, byte for byte
    records = {"rsa1._domainkey.sender.test": rsa_key.record,
               "ed1._domainkey.sender.test": ed_key.record}
    for index in range(2):
        assert dkim.DKIM(held).verify(idx=index, dnsfunc=_dns_for(records)), index
