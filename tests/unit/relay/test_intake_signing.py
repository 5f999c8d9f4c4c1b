"""The intake's signing policy (issue 14 §1), on real aiosmtpd sessions: senders by network and
by AUTH user, dkim_required refusals, a key's signature not repeated, a signing failure deferred
(451 4.3.0, counted), large messages signed in a worker thread."""

from __future__ import annotations

import asyncio
from typing import Any

import dkim
import pytest
from aiosmtpd.smtp import LoginPassword, Session

from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import DkimPrivateKey, generate, load_key, write_key
from mxroute.identity.dkim.record import build_txt
from mxroute.identity.dkim.sign import DkimSigner, SigningKey
from mxroute.relay.intake.signing import LARGE, IntakeSigning
from mxroute.settings import DkimKey, Settings

MSG = b"From: a@example.com\r\nTo: u@dest.test\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> DkimPrivateKey:
    path = tmp_path_factory.mktemp("k") / "k.pem"
    write_key(generate("ed25519"), path)
    return load_key(path)


def policy(private: DkimPrivateKey, senders: list[str] | None = None,
           required: bool = False) -> IntakeSigning:
    config = DkimKey(domain="example.com", selector="s1", key_file=private.path,
                     senders=senders)
    return IntakeSigning(Settings(dkim_required=required), DkimSigner([SigningKey(config,
                                                                                  private)]))


def session(ip: str = "127.0.0.1", user: str | None = None) -> Session:
    made = Session(asyncio.new_event_loop())
    made.loop.close()
    made.peer = (ip, 40000)  # type: ignore[assignment]
    if user is not None:
        made.authenticated = True
        made.auth_data = LoginPassword(user.encode(), b"pw")
    return made


def run(signing: IntakeSigning, client: Session, content: bytes) -> tuple[bytes, str | None]:
    """The message as the intake spools it (the fields ``sign`` returns on top), and the
    refusal."""
    fields, refusal = asyncio.run(signing.sign(client, content, "QID"))
    return fields + content, refusal


def verifies(private: DkimPrivateKey, message: bytes) -> bool:
    record = build_txt("ed25519", private.public_b64()).encode()
    return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: record))


def test_every_relaying_client_by_default(private: DkimPrivateKey) -> None:
    signed, refusal = run(policy(private), session("192.0.2.1"), MSG)
    assert refusal is None and signed.startswith(b"DKIM-Signature:") and verifies(private, signed)


@pytest.mark.parametrize(("ip", "user", "signed"), [
    ("10.1.2.3", None, True), ("::ffff:10.1.2.3", None, True), ("192.0.2.1", None, False),
    ("192.0.2.1", "alice", True), ("192.0.2.1", "mallory", False),
])
def test_senders(private: DkimPrivateKey, ip: str, user: str | None, signed: bool) -> None:
    out, refusal = run(policy(private, ["10.0.0.0/8", "alice"]), session(ip, user), MSG)
    assert refusal is None and out.startswith(b"DKIM-Signature:") is signed


def test_dkim_required_refusals(private: DkimPrivateKey) -> None:
    strict = policy(private, ["10.0.0.0/8"], required=True)
    assert run(strict, session("192.0.2.1"), MSG) == (
        MSG, ("550 5.7.1 Message cannot be DKIM-signed: not allowed to send mail signed for "
             "example.com"))
    two = b"From: a@example.com\r\n" + MSG
    assert run(strict, session("10.0.0.1"), two)[1] == (
        "550 5.7.1 Message cannot be DKIM-signed: 2 From: headers")
    assert run(policy(private), session(), two) == (two, None)  # not required: relayed unsigned


def test_not_signed_twice(private: DkimPrivateKey) -> None:
    signing = policy(private)
    once, _ = run(signing, session(), MSG)
    assert run(signing, session(), once) == (once, None)
    assert signing.stats.signed[("example.com", "s1")] == 1


class _Broken:
    """A private key whose signing fails, as OpenSSL can at run time."""

    def sign(self, data: bytes) -> bytes:
        raise ValueError("key refused by the provider")

    def public_key(self) -> Any:
        raise ValueError("no")


def test_signing_failure_is_451_and_counted(private: DkimPrivateKey) -> None:
    broken = DkimPrivateKey(private.path, _Broken())  # type: ignore[arg-type]
    config = DkimKey(domain="example.com", selector="s1", key_file=private.path)
    signing = IntakeSigning(Settings(), DkimSigner([SigningKey(config, broken)]))
    assert run(signing, session(), MSG) == (MSG, ("451 4.3.0 Temporary signing failure, try "
                                                 "again later"))
    assert signing.stats.failures == 1 and not signing.stats.signed


def test_large_message_signed_off_the_loop(private: DkimPrivateKey) -> None:
    big = MSG + (b"z" * 998 + b"\r\n") * (LARGE // 1000 + 1)
    threads: list[str] = []
    signing = policy(private)
    original = signing._sign

    def spy(*args: Any) -> tuple[bytes, str | None]:
        import threading

        threads.append(threading.current_thread().name)
        return original(*args)

    signing._sign = spy  # type: ignore[method-assign]
    signed, refusal = run(signing, session(), big)
    assert refusal is None and verifies(private, signed)
    assert threads and threads[0] != "MainThread"
    assert canon.split_message(signed).values("dkim-signature")
