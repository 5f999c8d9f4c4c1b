"""Hostile SMTP clients against the real relay (SEC-1..3, SEC-5..10): the 2023 smuggling corpus
(every pair of bare CR/LF variants around the dot) never splits one message into two at a
vulnerable destination; relay tricks from outside relay_networks are all refused; AUTH before TLS
is refused; over-long commands, 10,000 recipients, oversized messages, CR/LF smuggled through
MAIL/RCPT parameters, idle and slow-drip clients and 500 concurrent connections each get a clear
SMTP reply, and the relay stays up and serves a normal client afterwards.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import selectors
import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.rawclient import Raw
from tests.support.relay import Relay, World, wait_for
from tests.support.smtpsink import RawSink

pytestmark = pytest.mark.slow

MSG = b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: hostile\r\n\r\nbody\r\n"


def _alive(relay: Relay, rcpt: str = "alive@dest.test") -> str:
    """The relay still serves a normal client: a whole transaction gets its 250."""
    assert relay.proc is not None and relay.proc.poll() is None, relay.log()[-3000:]
    with relay.client() as client:
        client.mail("a@sender.test")
        client.rcpt(rcpt)
        code, reply = client.data(MSG)
    assert code == 250, reply
    return reply.split()[-1].decode()


# --- SEC-1 / SEC-2: smuggling --------------------------------------------------------------------

ENDS = [b"\n", b"\r", b"\r\n", b"\r\r\n", b"\n\r", b"\r\n\r", b"\n\n", b"\x00\r\n"]
CORPUS = sorted({pre + b"." + post for pre, post in itertools.product(ENDS, ENDS)
                 if b"\r\n.\r\n" not in b"\r\n" + pre + b"." + post + b"\r\n"[: 0]}
                | {b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n..\n", b"\r\n.\n.\r\n", b"\r\n .\r\n"})
# the real terminator is not a smuggling vector
CORPUS = [v for v in CORPUS if b"\r\n.\r\n" not in v]


@pytest.mark.parametrize("bare_newline", ["normalize", "reject"])
def test_sec1_sec2_smuggling_corpus_never_splits_a_message(
        fworld: World, bare_newline: str, figures: Callable[..., None]) -> None:
    """SEC-1/SEC-2: each variant, followed by a complete spoofed transaction in the same write, is
    one message (or a 550 5.5.2); a destination that honours <LF>.<CRLF> still records one message
    each."""
    raw_sink = RawSink(fworld.ip(1), fworld.sink_port, end="vulnerable")
    raw_sink.start()
    try:
        relay = fworld.relay(bare_newline=bare_newline)
        accepted = rejected = 0
        for variant in CORPUS:
            payload = (b"Subject: first\r\n\r\nhello" + variant +
                       b"MAIL FROM:<spoof@evil.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
                       b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
            client = Raw(relay.port)
            try:
                client.sock.sendall(
                    b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<u@dest.test>\r\nDATA\r\n"
                )
                codes = [client.reply()[0] for _ in range(4)]
                assert codes == [250, 250, 250, 354], (variant, codes)
                client.sock.sendall(payload)
                code, text = client.reply()  # exactly one reply for the whole payload
                assert code in (250, 550), (variant, code, text)
                if code == 550:
                    assert text.startswith("5.5.2"), (variant, text)
                    rejected += 1
                else:
                    accepted += 1
                # the smuggled commands were never commands
                assert client.cmd(b"QUIT")[0] == 221, variant
            finally:
                client.close()
        if bare_newline == "reject":
            assert accepted == len(
                [
                    v
                    for v in CORPUS
                    if b"\r" not in v.replace(b"\r\n", b"") and b"\n" not in v.replace(b"\r\n", b"")
                ]
            )
        wait_for(lambda: len(raw_sink.messages) >= accepted and not relay.queued(), timeout=20)
        time.sleep(0.3)
        spoofed = [
            c for c in raw_sink.commands if "spoof@evil.test" in c or "victim@dest.test" in c
        ]
        figures(
            f"SEC-1/2 smuggling corpus ({bare_newline})",
            variants=len(CORPUS),
            accepted_250=accepted,
            rejected_550=rejected,
            messages_at_vulnerable_sink=len(raw_sink.messages),
            smuggled_transactions=len(spoofed),
        )
        assert len(raw_sink.messages) == accepted, relay.log()[-3000:]
        assert spoofed == []
        assert not relay.queued()
    finally:
        raw_sink.stop()


# --- SEC-3: open relay ----------------------------------------------------------------------------

TRICKS = [
    "u@ext.test", "U@EXT.TEST", "u@ext.test.", "u@EXT.test.", "u%ext.test@relay.test",
    "u%ext.test@dest.test",
    '"u@ext.test"@relay.test', '"u%ext.test"@relay.test', '"u"@ext.test', '"u@ext.test"',
    "u@ext.test@relay.test",
    "u@dest.test@ext.test", "@relay.test:u@ext.test", "@relay.test,@other.test:u@ext.test",
    "@[127.0.0.1]:u@ext.test",
    "ext.test!u@relay.test", "ext.test!u", "u@[192.0.2.1]", "u@[127.0.0.1]", "u@[IPv6:::1]",
    "u@[IPv6:2001:db8::1]",
    "u@bücher.test", "u@xn--bcher-kva.test", "postmaster@ext.test", "u@localhost", "u@relay.test",
    "u@127.0.0.1",
    "u+tag@ext.test", "u@sub.dest.test", "u@dest.test",
]


def test_sec3_relay_tricks_from_outside_relay_networks_all_refused(
        fworld: World, figures: Callable[..., None]) -> None:
    """SEC-3: a client on 127.0.0.9 (relay_networks=127.0.0.1/32): every RCPT of the relay-trick
    corpus, plain and through PIPELINING, HELO or EHLO, angle brackets or not, is refused; nothing
    is queued."""
    sink = fworld.sink(1)
    relay = fworld.relay(relay_networks=["127.0.0.1/32"])
    refused = accepted = 0
    codes: set[int] = set()
    for hello in (b"EHLO outside.test", b"HELO outside.test", b"EHLO relay.test"):
        mail = (
            b"MAIL FROM:<a@relay.test> SMTPUTF8"
            if hello.startswith(b"EHLO")
            else b"MAIL FROM:<a@relay.test>"
        )
        # a new session every 15 refusals: 20 end one (SEC-10)
        for start in range(0, len(TRICKS), 5):
            client = Raw(relay.port, source="127.0.0.9")
            try:
                assert client.cmd(hello)[0] == 250
                assert client.cmd(mail)[0] == 250
                for trick in TRICKS[start:start + 5]:
                    for form in (f"RCPT TO:<{trick}>", f"RCPT TO:{trick}", f"RCPT TO: <{trick}>"):
                        code, text = client.cmd(form.encode())
                        codes.add(code)
                        if code >= 500:
                            refused += 1
                        else:
                            accepted += 1
                        assert code >= 500, (hello, form, code, text)
            finally:
                client.close()
        client = Raw(relay.port, source="127.0.0.9")
        try:
            assert client.cmd(hello)[0] == 250
            assert client.cmd(mail)[0] == 250
            pipelined = (
                b"".join(f"RCPT TO:<{t}>\r\n".encode() for t in TRICKS[:12])
                + b"DATA\r\n"
                + MSG
                + b".\r\n"
            )
            client.sock.sendall(pipelined)
            replies = [client.reply() for _ in range(13)]
            assert all(code >= 500 for code, _ in replies), replies
            # the message lines were bad commands
            assert client.cmd(b"QUIT")[0] in (221, 500, 502, 421, 0)
        finally:
            client.close()
    time.sleep(0.5)
    figures(
        "SEC-3 relay tricks from 127.0.0.9",
        tricks=len(TRICKS),
        attempts=refused + accepted,
        refused=refused,
        accepted=accepted,
        reply_codes=sorted(codes),
        queued=len(relay.queued()),
        delivered=len(sink.messages),
    )
    assert relay.queued() == [] and sink.messages == []
    assert accepted == 0
    _alive(relay)  # from 127.0.0.1 the same relay relays


def test_sec8_auth_without_tls_is_refused(
    fworld: World, tmp_path: Path, figures: Callable[..., None]
) -> None:
    """SEC-8: with valid credentials but no TLS, every AUTH form is refused (538 5.7.11 / 504), AUTH
    is not advertised, and the client stays unable to relay."""
    from mxroute.relay.intake.auth import hash_password
    from tests.support.smtpsink import tls_available, tls_files

    creds = tmp_path / "credentials"
    creds.write_text(f"alice:{hash_password('s3cret')}\n")
    tls = {}
    if tls_available():
        cert, key = tls_files()
        tls = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    relay = fworld.relay(relay_networks=["127.0.0.1/32"], auth_credentials_file=str(creds), **tls)
    client = Raw(relay.port, source="127.0.0.9")
    attempts = {
        b"AUTH PLAIN AGFsaWNlAHMzY3JldA==": (538,),  # valid credentials, in plain text
        b"AUTH PLAIN": (538,), b"AUTH LOGIN YWxpY2U=": (538,), b"AUTH LOGIN": (538,),
        b"AUTH CRAM-MD5": (504, 538), b"AUTH XOAUTH2 dXNlcj1hbGljZQ==": (504, 538),
        b"AUTH": (501, 538),
        b"AUTH PLAIN =": (538,),
    }
    try:
        client.sock.sendall(b"EHLO outside.test\r\n")
        lines = []
        for _ in range(50):
            line = client.line()
            lines.append(line)
            if line[3:4] != b"-":
                break
        assert not any(b"AUTH" in line for line in lines)
        got = {}
        for command, allowed in attempts.items():
            code, text = client.cmd(command)
            got[command.decode()] = code
            assert code in allowed, (command, code, text)
        assert client.cmd(b"MAIL FROM:<a@sender.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<u@dest.test>")[0] == 554
    finally:
        client.close()
    figures(
        "SEC-8 AUTH before TLS",
        attempts=len(attempts),
        refused=len(attempts),
        replies=sorted(set(got.values())),
    )
    assert relay.queued() == []


# --- SEC-7 / SEC-9: sizes -------------------------------------------------------------------------

def test_sec7_long_command_lines_and_oversized_messages(
    fworld: World, figures: Callable[..., None]
) -> None:
    """SEC-7: 2,000-octet command lines (and a 2 MB one) → 500 5.5.2, the session survives; SIZE=
    over the limit → 552; DATA over the limit (and a 5 MB flood) → 552 5.3.4 with nothing
    spooled."""
    sink = fworld.sink(1)
    relay = fworld.relay(max_message_size=65536)
    client = Raw(relay.port)
    replies: list[int] = []
    try:
        assert client.cmd(b"EHLO c.test")[0] == 250
        for verb in (
            b"EHLO ",
            b"HELO ",
            b"MAIL FROM:<",
            b"RCPT TO:<",
            b"NOOP ",
            b"VRFY ",
            b"XYZZY ",
            b"RSET ",
        ):
            code, text = client.cmd(verb + b"a" * (2000 - len(verb)))
            replies.append(code)
            assert code == 500 and text.startswith("5.5.2"), (verb, code, text)
            assert client.cmd(b"NOOP")[0] == 250
        client.sock.sendall(b"NOOP " + b"x" * 2_000_000 + b"\r\n")  # beyond aiosmtpd's stream limit
        code, _ = client.reply()
        replies.append(code)
        assert code == 500
        assert client.cmd(b"NOOP")[0] == 250
        code, text = client.cmd(b"MAIL FROM:<a@sender.test> SIZE=65537")
        replies.append(code)
        assert (code, text[:5]) == (552, "5.3.4")
        for size in (65537, 5_000_000):
            assert client.cmd(b"MAIL FROM:<a@sender.test>")[0] == 250
            assert client.cmd(b"RCPT TO:<u@dest.test>")[0] == 250
            assert client.cmd(b"DATA")[0] == 354
            line = b"y" * 78 + b"\r\n"
            body = b"Subject: big\r\n\r\n" + line * (size // len(line) + 1)
            client.sock.sendall(body + b".\r\n")
            code, text = client.reply()
            replies.append(code)
            assert (code, text[:5]) == (552, "5.3.4"), (size, code, text)
            assert relay.queued() == [] and list((relay.spool / "tmp").iterdir()) == []
        assert client.cmd(b"NOOP")[0] == 250
    finally:
        client.close()
    _alive(relay)
    assert wait_for(lambda: len(sink.messages) == 1)
    figures("SEC-7 long lines and sizes", inputs=len(replies), errors_returned=len(replies),
            codes=sorted(set(replies)), spooled=0, session_survived=True)


def test_sec9_ten_thousand_recipients(fworld: World, figures: Callable[..., None]) -> None:
    """SEC-9: 10,000 RCPT (pipelined, in chunks) with max_recipients=100: 100 × 250, 9,900 × 452
    4.5.3; the message goes to exactly those 100."""
    sink = fworld.sink(1)
    relay = fworld.relay()
    client = Raw(relay.port)
    codes: dict[int, int] = {}
    try:
        assert client.cmd(b"EHLO c.test")[0] == 250
        assert client.cmd(b"MAIL FROM:<a@sender.test>")[0] == 250
        for start in range(0, 10_000, 500):
            client.sock.sendall(
                b"".join(
                    f"RCPT TO:<r{n}@dest.test>\r\n".encode() for n in range(start, start + 500)
                )
            )
            for n in range(start, start + 500):
                code, text = client.reply()
                codes[code] = codes.get(code, 0) + 1
                assert code == (250 if n < 100 else 452), (n, code, text)
                if code == 452:
                    assert text.startswith("4.5.3")
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(MSG + b".\r\n")
        assert client.reply()[0] == 250
    finally:
        client.close()
    assert wait_for(lambda: sink.messages and not relay.queued(), timeout=20)
    rcpts = [r for m in sink.messages for r in m.rcpt_to]
    figures("SEC-9 10,000 recipients", rcpt_sent=10_000, accepted_250=codes.get(250, 0),
            refused_452=codes.get(452, 0), delivered_recipients=len(rcpts))
    assert sorted(rcpts) == sorted(f"r{n}@dest.test" for n in range(100))


# --- SEC-5 / SEC-6: injection through parameters --------------------------------------------------

INJECTIONS = [
    b"MAIL FROM:<a@sender.test> ENVID=x+0D+0AX-Injected:+20yes",
    b"MAIL FROM:<a@sender.test> ENVID=x+0AX-Injected:+20yes",
    b"MAIL FROM:<a@sender.test> ENVID=x+00y",
    b"MAIL FROM:<a@sender.test> ENVID=x\rX-Injected: yes",
    b"MAIL FROM:<a@sender.test> ENVID=x\x00y",
    b"MAIL FROM:<a@sender.test> ENVID=" + b"e" * 101,
    b"MAIL FROM:<a@sender.test> RET=FULL\rRCPT TO:<evil@ext.test>",
    b"MAIL FROM:<a@sender.test> BODY=8BITMIME\x0bX",
    b"MAIL FROM:<\"a\rX-Injected: yes\"@sender.test>",
    b"MAIL FROM:<a@sender.test> X-INJECT=1",
    b"MAIL FROM:<a@sender.test> AUTH=<>\rX-Injected: yes",
]
RCPT_INJECTIONS = [
    b"RCPT TO:<u@dest.test> ORCPT=rfc822;u+0D+0AX-Injected:+20yes@dest.test",
    b"RCPT TO:<u@dest.test> ORCPT=rfc822;u+0A@dest.test",
    b"RCPT TO:<u@dest.test> ORCPT=rfc822;u\r@dest.test",
    b"RCPT TO:<u@dest.test> ORCPT=rfc822;u+7F@dest.test",
    b"RCPT TO:<u@dest.test> NOTIFY=SUCCESS\rX-Injected: yes",
    b"RCPT TO:<u\rX-Injected: yes@dest.test>",
    b"RCPT TO:<\"u\x1b[2J\"@dest.test>",
]


def test_sec5_sec6_crlf_through_mail_and_rcpt_parameters_never_reaches_a_header(
        fworld: World, figures: Callable[..., None]) -> None:
    """SEC-5/6: CR, LF, NUL and controls in ENVID/ORCPT/NOTIFY/paths (raw or xtext-encoded) are
    refused with 501/553; a hostile EHLO name is neutralised in Received:; what reaches the next hop
    has no injected header or command, and the DSN parameters that were valid arrive intact."""
    sink = fworld.sink(1)
    relay = fworld.relay()
    client = Raw(relay.port)
    errors: list[int] = []
    try:
        assert client.cmd(b"EHLO evil.test\rX-Injected: ehlo")[0] == 250
        for line in INJECTIONS:
            code, text = client.cmd(line)
            errors.append(code)
            assert code in (501, 553, 555), (line, code, text)
        # a CR LF inside a path ends the command line: two commands, two errors, nothing injected
        client.sock.sendall(b"MAIL FROM:<a\r\nX-Injected: yes@sender.test>\r\n")
        split = [client.reply()[0], client.reply()[0]]
        errors += split
        assert split == [501, 500], split
    finally:
        client.close()
    client = Raw(relay.port)  # a new session: 20 errors would end this one (SEC-10)
    try:
        assert client.cmd(b"EHLO evil.test\rX-Injected: ehlo")[0] == 250
        assert client.cmd(b"MAIL FROM:<a@sender.test> ENVID=ok+2Bid RET=HDRS")[0] == 250
        for line in RCPT_INJECTIONS:
            code, text = client.cmd(line)
            errors.append(code)
            assert code in (501, 553), (line, code, text)
        assert (
            client.cmd(b"RCPT TO:<u@dest.test> NOTIFY=FAILURE ORCPT=rfc822;u+2Bx@dest.test")[0]
            == 250
        )
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(MSG + b".\r\n")
        assert client.reply()[0] == 250
    finally:
        client.close()
    assert wait_for(lambda: sink.messages, timeout=15)
    (got,) = sink.messages
    assert got.rcpt_to == ["u@dest.test"]
    assert (
        "ENVID=ok+2Bid" in got.mail_args and "\r" not in got.mail_args and "\n" not in got.mail_args
    )
    assert all("\r" not in a and "\n" not in a and "Injected" not in a for a in got.rcpt_args)
    parsed = email.message_from_bytes(got.data, policy=email.policy.compat32)
    assert parsed["X-Injected"] is None and b"X-Injected" not in got.data.split(b"\r\n\r\n")[
        0
    ].replace(b"?X-Injected", b"")
    received = got.data.split(b"\r\n")[0]
    # one line, controls replaced
    assert received.startswith(b"Received: from evil.test?X-Injected:_ehlo ")
    figures("SEC-5/6 parameter injection", inputs=len(INJECTIONS) + len(RCPT_INJECTIONS) + 1,
            errors_returned=len(errors), codes=sorted(set(errors)), injected_headers=0)


# --- SEC-10: timeouts and connection floods -------------------------------------------------------


def _drip(
    sock: socket.socket, payload: bytes, interval: float, limit: int = 40
) -> tuple[bool, bytes]:
    """Send ``payload`` cyclically one byte per ``interval`` (at most ``limit`` bytes); (closed,
    what the relay said)."""
    sock.settimeout(interval)
    said = b""
    for ch in itertools.islice(itertools.cycle(payload), limit):
        try:
            sock.send(bytes([ch]))
            chunk = sock.recv(4096)
            if not chunk:
                return True, said
            said += chunk
        except TimeoutError:
            continue
        except OSError:
            return True, said
    return False, said

def test_sec10_idle_and_slow_drip_clients_are_cut_off_with_a_reply(
        fworld: World, figures: Callable[..., None]) -> None:
    """SEC-10: an idle client, a client dripping one command byte at a time and one dripping DATA
    are closed at command_timeout / data_timeout with 421 4.4.2; nothing is queued; others are
    served."""
    relay = fworld.relay(command_timeout=1.5, data_timeout=2.5)
    fworld.sink(1)
    outcomes: dict[str, tuple[bool, float, bytes]] = {}
    idle = Raw(relay.port)
    started = time.monotonic()
    closed, said = idle.closed(8)
    outcomes["idle"] = (closed, time.monotonic() - started, said)
    idle.close()

    drip = Raw(relay.port)
    started = time.monotonic()
    closed, said = _drip(drip.sock, b"NOOP", 0.3)  # never a whole line
    outcomes["drip-command"] = (closed, time.monotonic() - started, said)
    drip.close()

    data = Raw(relay.port)
    assert data.cmd(b"EHLO c.test")[0] == 250
    assert data.cmd(b"MAIL FROM:<a@sender.test>")[0] == 250
    assert data.cmd(b"RCPT TO:<drip@dest.test>")[0] == 250
    assert data.cmd(b"DATA")[0] == 354
    started = time.monotonic()
    closed, said = _drip(data.sock, b"Subject: slow\r\n\r\nbody\r\n", 0.4)
    outcomes["drip-data"] = (closed, time.monotonic() - started, said)
    data.close()
    figures(
        "SEC-10 idle / slow-drip",
        **{k: f"closed={c} after {t:.1f}s reply={s[:40]!r}" for k, (c, t, s) in outcomes.items()},
    )
    for name, (closed, took, said) in outcomes.items():
        assert closed, (name, took, said)
        assert took < 8, (name, took)
        assert said.startswith(b"421 4.4.2"), (name, said)
    assert relay.queued() == []
    _alive(relay)


def test_sec10_500_concurrent_connections_get_220_or_421_and_the_relay_survives(
        fworld: World, figures: Callable[..., None]) -> None:
    """SEC-10: 500 simultaneous connections with max_clients=50: 50 greeted, 450 get 421 4.7.0 at
    once; the relay stays up, and serves a normal client as soon as the flood is gone."""
    fworld.sink(1)
    relay = fworld.relay(max_clients=50, command_timeout=20)
    socks: list[socket.socket] = []
    first: dict[int, bytes] = {}
    try:
        for n in range(500):
            source = f"127.0.{n // 250 + 10}.{n % 250 + 1}"
            sock = socket.create_connection(
                ("127.0.0.1", relay.port), timeout=10, source_address=(source, 0)
            )
            socks.append(sock)
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + 20
        while len(first) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                index = key.data
                try:
                    first[index] = key.fileobj.recv(200)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    first[index] = b""
                selector.unregister(key.fileobj)
        selector.close()
        greeted = sum(1 for data in first.values() if data.startswith(b"220"))
        refused = sum(1 for data in first.values() if data.startswith(b"421 4.7.0"))
        other = [data for data in first.values() if not data.startswith((b"220", b"421 4.7.0"))]
        assert relay.proc is not None and relay.proc.poll() is None
    finally:
        for sock in socks:
            sock.close()
    alive_after = wait_for(lambda: _try_alive(relay), timeout=10, step=0.2)
    figures(
        "SEC-10 500 concurrent connections (max_clients=50)",
        connections=len(socks),
        answered=len(first),
        greeted_220=greeted,
        refused_421=refused,
        unclear=len(other),
        served_afterwards=bool(alive_after),
    )
    assert len(first) == 500 and other == []
    assert greeted == 50 and refused == 450
    assert alive_after


def _try_alive(relay: Relay) -> bool:
    try:
        _alive(relay)
        return True
    except (smtplib.SMTPException, OSError, AssertionError):
        return False


def test_sec10_flood_from_one_address_is_capped_per_ip_while_others_are_served(
        fworld: World, figures: Callable[..., None]) -> None:
    """SEC-10: 500 connections from one address outside relay_networks with max_clients_per_ip=10:
    10 greeted, 490 get 421 4.7.0 at once, and *during* the flood a client from relay_networks
    relays a message."""
    sink = fworld.sink(1)
    relay = fworld.relay(
        relay_networks=["127.0.0.1/32"], max_clients=100, max_clients_per_ip=10, command_timeout=20
    )
    socks: list[socket.socket] = []
    first: list[bytes] = []
    try:
        for _ in range(500):
            sock = socket.create_connection(
                ("127.0.0.1", relay.port), timeout=10, source_address=("127.0.0.9", 0)
            )
            socks.append(sock)
        for sock in socks:
            try:
                first.append(sock.recv(200))
            except OSError:
                first.append(b"")
        started = time.monotonic()
        # from 127.0.0.1, exempt from the per-address cap
        queue_id = _alive(relay, "during-flood@dest.test")
        served_in = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    greeted = sum(1 for data in first if data.startswith(b"220"))
    refused = sum(1 for data in first if data.startswith(b"421 4.7.0"))
    assert wait_for(lambda: sink.messages, timeout=15)
    figures(
        "SEC-10 500 connections from one address (max_clients_per_ip=10)",
        connections=500,
        greeted_220=greeted,
        refused_421=refused,
        legit_client_served_during_flood=bool(queue_id),
        served_in_s=round(served_in, 2),
    )
    assert greeted == 10 and refused == 490
    assert served_in < 5
    # the flood's slots are given back: the same address is greeted again
    assert wait_for(lambda: _banner_from(relay, "127.0.0.9").startswith(b"220"), timeout=10)


def _banner_from(relay: Relay, source: str) -> bytes:
    with socket.create_connection(
        ("127.0.0.1", relay.port), timeout=5, source_address=(source, 0)
    ) as sock:
        return sock.recv(200)


def test_sec10_twenty_errors_end_the_session_with_421(
    fworld: World, figures: Callable[..., None]
) -> None:
    """SEC-10 (Postfix smtpd_hard_error_limit): the 20th 5xx reply without a message accepted is
    followed by 421 4.7.0 and the close; an accepted message resets the count; a new session is
    served."""
    fworld.sink(1)
    relay = fworld.relay()
    client = Raw(relay.port)
    try:
        assert client.cmd(b"EHLO c.test")[0] == 250
        for _ in range(15):
            assert client.cmd(b"MAIL FROM:<bad address>")[0] == 501
        assert client.cmd(b"MAIL FROM:<a@sender.test>")[0] == 250
        assert client.cmd(b"RCPT TO:<u@dest.test>")[0] == 250
        assert client.cmd(b"DATA")[0] == 354
        client.sock.sendall(MSG + b".\r\n")
        assert client.reply()[0] == 250  # the count starts again
        codes = [client.cmd(b"RCPT TO:<u@dest.test>")[0] for _ in range(19)]
        assert codes == [503] * 19
        client.sock.sendall(b"RCPT TO:<u@dest.test>\r\n")
        last = [client.reply(), client.reply()]
        closed, _ = client.closed(5)
    finally:
        client.close()
    figures("SEC-10 error limit", errors_before_close=20, final_reply=last[1][0], closed=closed)
    assert last[0][0] == 503 and last[1][0] == 421 and last[1][1].startswith("4.7.0")
    assert closed
    _alive(relay)
