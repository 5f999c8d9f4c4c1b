"""Issue 17: the programs that hand mail to mxroute, each against the real ``mxroute serve`` set up
as docs/clients.md says, each checked at the destination sink.

Python smtplib, swaks, msmtp, bsd-mailx and PHP mail() through ``mxroute sendmail``; each sends
plain, 8-bit and SMTPUTF8 mail where it can, in clear (a client in relay_networks), with
STARTTLS + AUTH, and with implicit TLS on the submissions port + AUTH (RFC 8314 §3.3).
Postfix as a client: test_postfix_client.py. A missing program is a failure under CI=true.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import (
    EIGHT_BIT,
    KINDS,
    PASSWORD,
    PLAIN,
    USER,
    UTF8,
    Kind,
    Submission,
    arrived,
    by_subject,
    need,
    received_with,
    replaced,
    sendmail_link,
    snippet,
    submission_relay,
)
from tests.support.relay import World, wait_for
from tests.support.smtpsink import Sink, Transaction

pytestmark = pytest.mark.interop

MODES = ("clear", "starttls", "smtps")  # clear: a trusted client, no TLS, no AUTH


def at_sink(sink: Sink, sub: Submission, count: int) -> list[Transaction]:
    """The sink's transactions once ``count`` arrived (bounded wait)."""
    wait_for(lambda: len(sink.messages) >= count, timeout=40)
    assert len(sink.messages) == count, sub.relay.log()[-3000:]
    return list(sink.messages)


def check_all(messages: list[Transaction], kinds: tuple[Kind, ...], mode: str,
              declares_8bit: bool = True) -> None:
    """Every kind arrived intact, through a session as ``mode`` says (Received: ... with)."""
    for kind in kinds:
        got = by_subject(messages, kind)
        arrived(got, kind, declares_8bit=declares_8bit)
        word = received_with(got)
        want = {"clear": "ESMTP", "starttls": "ESMTPSA", "smtps": "ESMTPSA"}[mode]
        assert word in (want, "UTF8SMTP" + want.removeprefix("ESMTP")), (kind.name, word)
        if kind is UTF8:
            assert word.startswith("UTF8SMTP"), word  # RFC 6531 §3.7.3


def client_context(sub: Submission) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(sub.cert))  # verifies 127.0.0.1 (an IP SAN)


@pytest.mark.parametrize("mode", MODES)
def test_smtplib_sends_plain_8bit_and_smtputf8(world: World, tmp_path: Path, mode: str) -> None:
    """Issue 17: Python's smtplib: EHLO, STARTTLS (or SMTP_SSL on the submissions port), AUTH
    PLAIN, MAIL with BODY=8BITMIME / SMTPUTF8; each message arrives byte-exact."""
    sink = world.sink(1)
    sub = submission_relay(world, tmp_path, trusted=mode == "clear")
    for kind in KINDS:
        client = (smtplib.SMTP_SSL("127.0.0.1", sub.smtps_port, context=client_context(sub),
                                   timeout=30) if mode == "smtps"
                  else smtplib.SMTP("127.0.0.1", sub.port, timeout=30))
        with client:
            client.ehlo("client.test")
            if mode == "starttls":
                client.starttls(context=client_context(sub))
                client.ehlo("client.test")
            if mode != "clear":
                client.login(USER, PASSWORD)
            options = [*(["BODY=8BITMIME"] if kind is not PLAIN else []),
                       *(["SMTPUTF8"] if kind is UTF8 else [])]
            client.sendmail(kind.sender, [kind.rcpt], kind.message("\r\n"), options)
    check_all(at_sink(sink, sub, 3), KINDS, mode)


def swaks(sub: Submission, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks against the relay in ``mode`` (clear with --pipeline; --tls / --tls-on-connect with
    --auth)."""
    tool = need("swaks", "swaks libnet-ssleay-perl")
    how = {"clear": ["--port", str(sub.port), "--pipeline"],
           "starttls": ["--port", str(sub.port), "--tls", "--auth", "PLAIN"],
           "smtps": ["--port", str(sub.smtps_port), "--tls-on-connect", "--auth", "LOGIN"]}[mode]
    login = ["--auth-user", USER, "--auth-password", PASSWORD] if mode != "clear" else []
    return subprocess.run([tool, "--server", "127.0.0.1", "--helo", "swaks.test", *how, *login,
                           *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("mode", MODES)
def test_swaks_sends_plain_and_8bit(world: World, tmp_path: Path, mode: str) -> None:
    """Issue 17: swaks --pipeline / --tls / --tls-on-connect with --auth. Debian 12's swaks
    (20201014) has no 8BITMIME or SMTPUTF8 option: its 8-bit text goes undeclared, as many
    scripts send it, and arrives byte-exact; it cannot send an SMTPUTF8 address."""
    sink = world.sink(1)
    sub = submission_relay(world, tmp_path, trusted=mode == "clear")
    for kind in (PLAIN, EIGHT_BIT):
        data = tmp_path / f"{kind.name}.eml"
        data.write_bytes(kind.message("\r\n").removesuffix(b"\r\n"))  # swaks ends the line
        done = swaks(sub, mode, "--from", kind.sender, "--to", kind.rcpt, "--data", str(data))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "250 2.0.0 Ok: queued as" in done.stdout, done.stdout
    check_all(at_sink(sink, sub, 2), (PLAIN, EIGHT_BIT), mode, declares_8bit=False)


def msmtprc(sub: Submission, tmp: Path, mode: str) -> Path:
    """The guide's msmtprc (its smtps lines added for ``smtps``; TLS and AUTH off for
    ``clear``), with the test's port and trust file, mode 600 as msmtp demands."""
    text = replaced(snippet("msmtprc"), {"2525": str(sub.port),
                                         "/etc/mxroute/cert.pem": str(sub.cert)})
    if mode == "smtps":
        text += replaced(snippet("msmtprc-smtps"), {"465": str(sub.smtps_port)})
    if mode == "clear":
        text = replaced(text, {"tls on": "tls off", "auth on": "auth off"})
    path = tmp / f"msmtprc-{mode}"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_msmtp_sends_plain_8bit_and_smtputf8(world: World, tmp_path: Path, mode: str) -> None:
    """Issue 17: msmtp (the sendmail of many containers) with the guide's msmtprc: ``tls on``,
    ``auth on``; ``tls_starttls off`` on the submissions port. msmtp declares neither 8BITMIME
    nor SMTPUTF8: 8-bit text arrives byte-exact, a UTF-8 address is refused with the reason."""
    tool = need("msmtp", "msmtp")
    sink = world.sink(1)
    sub = submission_relay(world, tmp_path, trusted=mode == "clear")
    config = msmtprc(sub, tmp_path, mode)

    def msmtp(kind: Kind) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([tool, "-C", str(config), "-f", kind.sender, "--", kind.rcpt],
                              input=kind.message(), capture_output=True, timeout=60, check=False)

    for kind in (PLAIN, EIGHT_BIT):
        done = msmtp(kind)
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    check_all(at_sink(sink, sub, 2), (PLAIN, EIGHT_BIT), mode, declares_8bit=False)
    # msmtp (1.8.23) sends no SMTPUTF8: a UTF-8 address is refused, said clearly, exit 65
    refused = msmtp(UTF8)
    assert refused.returncode == 65, refused
    assert "553 5.6.7 Non-ASCII address needs SMTPUTF8" in refused.stderr.decode()


def test_bsd_mailx_through_mxroute_sendmail(world: World, tmp_path: Path) -> None:
    """Issue 17: ``mail`` (bsd-mailx) calls sendmail, which is mxroute (operators.md): plain,
    8-bit and SMTPUTF8 (a UTF-8 recipient) reach the sink through the guide's relay."""
    mail = need("mail", "bsd-mailx")
    sink = world.sink(1)
    sub = submission_relay(world, tmp_path, trusted=True)
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={sendmail_link(tmp_path)}\n")
    env = dict(sub.relay.env, MAILRC=str(mailrc), HOME=str(tmp_path), LANG="C.UTF-8")
    for kind in KINDS:
        done = subprocess.run([mail, "-s", kind.subject, "-r", kind.sender, kind.rcpt],
                              input=kind.body.encode(), env=env, capture_output=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    messages = at_sink(sink, sub, 3)
    for kind in KINDS:
        got = by_subject(messages, kind)
        assert got.mail_from == kind.sender and got.rcpt_to == [kind.rcpt], got
        assert got.data is not None and got.data.endswith(kind.body.replace("\n", "\r\n").encode())
        assert ("SMTPUTF8" in got.mail_args.upper()) == (kind is UTF8), got.mail_args
        assert ("BODY=8BITMIME" in got.mail_args.upper()) == (kind is not PLAIN), got.mail_args


PHP_SEND = ("$h = \"MIME-Version: 1.0\\r\\nContent-Type: text/plain; charset=utf-8\";"
            "exit(mail($argv[1], $argv[2], $argv[3], $h, '-f' . $argv[4]) ? 0 : 1);")


def test_php_mail_through_sendmail_path(world: World, tmp_path: Path) -> None:
    """Issue 17: PHP's mail() with the guide's php.ini ``sendmail_path`` (mxroute as
    /usr/sbin/sendmail, ``-t -i``): plain, 8-bit and SMTPUTF8 reach the sink; PHP's own
    To:/Subject: headers and the fifth argument's ``-f`` envelope sender are kept. (PHP ends
    the body with a newline of its own: the body is passed without one.)"""
    php = need("php", "php-cli")
    sink = world.sink(1)
    sub = submission_relay(world, tmp_path, trusted=True)
    ini = tmp_path / "php.ini"
    ini.write_text(replaced(snippet("php.ini"),
                            {"/usr/sbin/sendmail": str(sendmail_link(tmp_path))}))
    env = dict(sub.relay.env, HOME=str(tmp_path))
    for kind in KINDS:
        done = subprocess.run([php, "-c", str(ini), "-r", PHP_SEND, "--", kind.rcpt,
                               kind.subject, kind.body.rstrip("\n"), kind.sender], env=env,
                              capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    messages = at_sink(sink, sub, 3)
    for kind in KINDS:
        got = by_subject(messages, kind)
        assert got.mail_from == kind.sender and got.rcpt_to == [kind.rcpt], got
        assert got.data is not None and got.data.endswith(kind.body.replace("\n", "\r\n").encode())
        assert f"To: {kind.rcpt}".encode() in got.data
        assert ("SMTPUTF8" in got.mail_args.upper()) == (kind is UTF8), got.mail_args
