"""Issue 21 §2, abuse and hardening gaps, through the real ``mxroute serve`` (SEC-8, SEC-10,
DUR-3, TLS-1): session caps (life, junk commands), AUTH guessing per client address, TLS minimum
versions in and out, certificate/key permissions, and the spool's own permissions.

Clients come from 127.0.31.x (this suite's loopback addresses); sinks from the World (127.1.N.x).
"""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import ssl
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from mxroute.relay.intake.auth import AUTH_FAILURE_DELAY, hash_password
from tests.support.rawclient import Raw
from tests.support.relay import MSG, ROOT, Relay, World, rcpt_script, wait_for
from tests.support.smtpsink import tls_files

pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-31"
WRONG = ["wrong-guess-one", "wrong-guess-two", "wrong-guess-three"]


def _client_context(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        context.maximum_version = maximum
    return context


def _tls_client(relay: Relay, source: str, maximum: ssl.TLSVersion | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=10, source_address=(source, 0))
    client.ehlo("client.test")
    client.starttls(context=_client_context(maximum))
    client.ehlo("client.test")
    return client


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_session_caps_junk_commands_and_session_life_end_with_421(fworld: World) -> None:
    """Issue 21, SEC-10: commands without a transaction are capped (NOOP/RSET/VRFY/HELO/EHLO
    counted, a 250 after DATA starts again) and so is a session's life: ``421 4.7.0``, close."""
    sink = fworld.sink(1)
    relay = fworld.relay(junk_command_limit=5, max_session_seconds=3)
    noop = Raw(relay.port, source="127.0.31.2")
    try:
        codes = [noop.cmd(cmd)[0] for cmd in (b"EHLO c.test", b"NOOP", b"RSET", b"VRFY u",
                                              b"HELO c.test")]
        assert codes == [250, 250, 250, 252, 250]
        code, text = noop.cmd(b"NOOP")
        assert (code, text[:5]) == (421, "4.7.0"), text
        assert noop.closed(5)[0]
    finally:
        noop.close()
    busy = Raw(relay.port, source="127.0.31.3")
    try:
        replies = [busy.cmd(c) for c in (b"EHLO c.test", b"NOOP", b"HELP NOOP", b"NOOP")]
        assert [code for code, _ in replies] == [250] * 4
        assert "Syntax: NOOP" in replies[2][1]  # aiosmtpd's HELP still sees the syntax
        for command, want in ((b"MAIL FROM:<a@sender.test>", 250), (b"RCPT TO:<u@dest.test>", 250),
                              (b"DATA", 354), (MSG + b".\r\n", 250)):
            assert busy.cmd(command)[0] == want, command
        # the accepted message started the count again: five more, then the cap
        assert [busy.cmd(b"NOOP")[0] for _ in range(5)] == [250] * 5
        assert busy.cmd(b"NOOP")[0] == 421
    finally:
        busy.close()
    slow = Raw(relay.port, source="127.0.31.4")
    try:
        assert slow.cmd(b"EHLO c.test")[0] == 250
        time.sleep(3.2)  # past max_session_seconds; command_timeout (300 s) is far away
        code, text = slow.cmd(b"MAIL FROM:<a@sender.test>")
        assert (code, text[:5]) == (421, "4.7.0") and "too long" in text, text
        assert slow.closed(5)[0]
    finally:
        slow.close()
    log = relay.logged("client=127.0.31.2: Too many commands", "client=127.0.31.4: Session")
    assert "client=127.0.31.4: Session too long" in log
    assert wait_for(lambda: len(sink.messages) == 1)


def test_auth_failures_per_address_are_limited_logged_without_secret(
        fworld: World, tmp_path: Path) -> None:
    """Issue 21, SEC-8: failed AUTH per client address is counted across sessions; the N+1th
    attempt gets ``421 4.7.0`` and the close, unchecked; other addresses still log in; each
    failure is answered after a pause and logged without the password (plain or base64, even at
    DEBUG), a success after failures too."""
    creds = tmp_path / "credentials"
    creds.write_text(f"alice:{hash_password(PASSWORD)}\n")
    cert, key = tls_files()
    fworld.sink(1)
    relay = fworld.relay(relay_networks=["127.0.0.1/32"], auth_credentials_file=str(creds),
                         tls_cert_file=str(cert), tls_key_file=str(key),
                         max_auth_failures_per_ip=3, log_level="DEBUG")
    guesser = "127.0.31.10"
    with _tls_client(relay, guesser) as client:
        asked = time.monotonic()
        assert client.docmd("AUTH", f"PLAIN {_plain('alice', WRONG[0])}")[0] == 535
        assert time.monotonic() - asked >= AUTH_FAILURE_DELAY  # slowed: a lower bound only
        assert client.docmd("AUTH", "LOGIN " + base64.b64encode(b"alice").decode())[0] == 334
        assert client.docmd(base64.b64encode(WRONG[1].encode()).decode())[0] == 535
    with _tls_client(relay, guesser) as client:  # a new session: the address's count goes on
        assert client.docmd("AUTH", f"PLAIN {_plain('alice', WRONG[2])}")[0] == 535
    with _tls_client(relay, guesser) as client:
        code, text = client.docmd("AUTH", f"PLAIN {_plain('alice', PASSWORD)}")
        assert (code, text[:5]) == (421, b"4.7.0"), text  # even the right password: unchecked
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
            client.noop()
    other = "127.0.31.11"
    with _tls_client(relay, other) as client:
        assert client.docmd("AUTH", f"PLAIN {_plain('alice', WRONG[0])}")[0] == 535
        assert client.docmd("AUTH", f"PLAIN {_plain('alice', PASSWORD)}")[0] == 235
    log = relay.logged(f"auth ok: user=alice client={other} after 1 failed attempts",
                       f"auth refused: client={guesser}")
    assert log.count(f"auth failed: user=alice client={guesser}") == 3
    assert f"client={guesser} failures=3/3" in log
    for secret in [*WRONG, PASSWORD]:
        for form in (secret, base64.b64encode(secret.encode()).decode(),
                     _plain("alice", secret)):
            assert form not in log, form


def test_inbound_tls_min_version_is_a_setting_and_loose_key_files_are_warned(
        fworld: World, tmp_path: Path) -> None:
    """Issue 21: ``tls_min_version = "TLSv1.3"`` refuses a TLS 1.2 client (the default takes it);
    a world-readable key gets a start-up warning (root:mxroute 0640 documented)."""
    cert, key = tls_files()
    loose = tmp_path / "key.pem"
    shutil.copy(key, loose)
    loose.chmod(0o644)
    fworld.sink(1)
    relay = fworld.relay(tls_cert_file=str(cert), tls_key_file=str(loose),
                         tls_min_version="TLSv1.3")
    assert f"tls_key_file {loose} is readable by others (mode 644)" in relay.logged("tls_key_file")
    with _tls_client(relay, "127.0.31.20") as client:
        assert client.sock.version() == "TLSv1.3"  # type: ignore[union-attr]
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        _tls_client(relay, "127.0.31.21", maximum=ssl.TLSVersion.TLSv1_2).quit()
    assert "TLS handshake failed: client=127.0.31.21" in relay.logged("client=127.0.31.21")


def test_outbound_may_takes_old_tls_while_encrypt_demands_tls12(fworld: World) -> None:
    """Issue 21, TLS-1: a next hop that speaks only TLS 1.1 gets the message over TLS under
    ``may`` (not the plain-text retry), and is deferred under ``encrypt`` (TLS 1.2 minimum).

    The local OpenSSL 3 still offers TLS 1.1 at SECLEVEL=0, so the sink really is TLS 1.1."""
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(*tls_files())
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    sinks = [fworld.sink(1, starttls=True), fworld.sink(2, starttls=True)]
    for sink in sinks:
        sink.tls_context = old
    relay = fworld.relay(tls_policy_domains={"other.test": "encrypt"})
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    relay.send("a@sender.test", ["u@other.test"], MSG)
    assert wait_for(lambda: sinks[0].messages, timeout=20)
    assert [c.tls for c in sinks[0].connections if c.transactions] == [True]
    log = relay.logged("u@other.test", "4.7.")
    assert not sinks[1].messages and len(relay.queued()) == 1, log[-2000:]


def test_spool_writable_by_others_is_refused_with_exit_78(fworld: World) -> None:
    """Issue 21, DUR-3: a spool directory group or others can write stops ``serve`` at start:
    exit 78 and one line saying what to do; the directory is left as it was."""
    relay = Relay(fworld.tmp, fworld.dns, fworld.sink_port)
    for mode in (0o777, 0o770):
        relay.spool.mkdir(exist_ok=True)
        relay.spool.chmod(mode)
        done = subprocess.run([sys.executable, "-m", "mxroute", "serve"], cwd=ROOT, env=relay.env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 78, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "spool_dir" in lines[0] and "writable by" in lines[0], lines
        assert stat.S_IMODE(relay.spool.stat().st_mode) == mode


def test_spool_files_are_0600_under_0700_after_delivery_deferral_and_bounce(
        fworld: World) -> None:
    """Issue 21, DUR-3: under a loose umask (022) ``serve`` still makes every spool file 0600
    and directory 0700, owned by the service user, after a delivery, a deferral and a bounce."""
    sink = fworld.sink(1)
    rcpt_script(sink, "later@dest.test", "451 4.2.0 try later")
    rcpt_script(sink, "gone@dest.test", "550 5.1.1 no such user")
    old = os.umask(0o022)
    try:
        relay = fworld.relay()
    finally:
        os.umask(old)
    relay.send("a@sender.test", ["ok@dest.test", "later@dest.test", "gone@dest.test"], MSG)
    relay.logged("ok@dest.test", "later@dest.test", "gone@dest.test", "status=bounced")
    assert wait_for(lambda: len(sink.messages) == 1 and len(relay.queued()) == 2, timeout=20)
    seen = 0
    for path in [relay.spool, *relay.spool.rglob("*")]:
        if path.is_socket():
            continue
        info = path.lstat()
        want = 0o700 if path.is_dir() else 0o600
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (want, os.geteuid()), path
        seen += 1
    assert seen >= 6  # spool, queue/, tmp/, corrupt/, two queue files, the lock
