"""`mxroute serve` end to end: the real program, a loopback DNS server, SMTP sinks on loopback.

Each test starts ``python -m mxroute serve`` with MXROUTE_* environment variables
only (as the benchmark does), talks to it with smtplib or raw sockets, and reads
what the sinks received. Every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import time
from pathlib import Path

import pytest

from tests.support.relay import MSG, World, rcpt_script, wait_for

# --- delivery ------------------------------------------------------------------------------------

def test_delivery_with_received_header_first_and_content_intact(world: World) -> None:
    """RTY-1 path of success; SESS-19: one Received: on top, the rest byte-identical; DUR-1: 250
    means queued."""
    sink = world.sink(1)
    relay = world.relay()
    with relay.client() as client:
        client.mail("a@sender.test")
        client.rcpt("u@dest.test")
        code, reply = client.data(MSG)
    assert code == 250 and b"queued as" in reply
    queue_id = reply.split()[-1].decode()
    assert wait_for(lambda: sink.messages)
    (got,) = sink.messages
    assert got.mail_from == "a@sender.test" and got.rcpt_to == ["u@dest.test"]
    first, rest = got.data.split(b"\r\n", 1)[0], got.data
    assert first.startswith(b"Received: from client.test (unknown [127.0.0.1])")
    assert f"by relay.test with ESMTP id {queue_id}".encode() in rest
    assert rest.endswith(MSG) and rest.count(b"Received:") == 1
    assert wait_for(lambda: relay.queued() == [])
    log = relay.logged(f"{queue_id}: to=<u@dest.test>", "status=sent")
    assert f"{queue_id}: to=<u@dest.test>" in log and "status=sent" in log, log


def test_mx_fallback_to_the_next_preference(world: World) -> None:
    """MX-2/MX-17 through the relay: MX 10 refuses connections, MX 20 accepts."""
    world.zone(f"dest IN MX 10 mx1.dest.test.\ndest IN MX 20 mx2.dest.test.\n"
               f"mx1.dest IN A {world.ip(1)}\nmx2.dest IN A {world.ip(2)}\n")
    sink2 = world.sink(2)
    relay = world.relay()
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink2.messages)
    assert wait_for(lambda: relay.queued() == [])


def test_rty1_deferred_then_retried_and_delivered(world: World) -> None:
    """RTY-1/RTY-2: 451 at RCPT defers; the retry after retry_min_seconds delivers; no DSN."""
    sink = world.sink(1)
    sink.replies["RCPT"] = ["451 4.3.0 busy"]  # the first RCPT only
    relay = world.relay()
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages, timeout=20)
    log = relay.logged("status=deferred", "status=sent")
    assert "status=deferred" in log and "status=sent" in log, log
    assert wait_for(lambda: relay.queued() == [])


def test_dsn1_dsn2_bounce_goes_to_the_sender_with_null_reverse_path(world: World) -> None:
    """DSN-1/DSN-2/DSN-7: a 550 for one of two recipients gives one DSN, MAIL FROM:<>, to the
    sender."""
    sink = world.sink(1)
    sender_mx = world.sink(9)
    rcpt_script(sink, "bad@dest.test", "550 5.1.1 no such user")
    relay = world.relay()
    relay.send("a@sender.test", ["u@dest.test", "bad@dest.test"], MSG)
    assert wait_for(lambda: sender_mx.messages, timeout=20)
    (dsn,) = sender_mx.messages
    assert dsn.mail_from == "" and dsn.rcpt_to == ["a@sender.test"]
    text = dsn.data.decode(errors="replace")
    finals = [
        line.split(";", 1)[1].strip().lower()
        for line in text.splitlines()
        if line.lower().startswith("final-recipient:")
    ]
    assert finals == ["bad@dest.test"]  # DSN-1: only the failed recipient is reported
    # DSN-6 (RFC 3464 §2.3.5/§2.3.6): the remote's own reply, with the host that gave it
    assert "\r\nRemote-MTA: dns; mx1.dest.test\r\n" in text
    assert (
        "\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n" in text and "X-mxroute" not in text
    )
    assert [m.rcpt_to for m in sink.messages] == [["u@dest.test"]]
    assert wait_for(lambda: relay.queued() == [])


def test_dsn3_null_sender_failure_is_logged_not_bounced(world: World) -> None:
    """DSN-3: MAIL FROM:<> rejected with 550 → no notification anywhere, logged, removed."""
    sink = world.sink(1)
    sender_mx = world.sink(9)
    rcpt_script(sink, "bad@dest.test", "550 5.1.1 no such user")
    relay = world.relay()
    relay.send("<>", ["bad@dest.test"], MSG)
    assert wait_for(lambda: "no bounce for a bounce" in relay.log())
    assert wait_for(lambda: relay.queued() == [])
    time.sleep(0.5)
    assert sender_mx.messages == [] and sink.messages == []


def test_dsn8_parameters_kept_and_malformed_xtext_refused(world: World) -> None:
    """DSN-8: NOTIFY/ORCPT/RET/ENVID accepted and kept; malformed xtext → 501; NOTIFY=NEVER → no
    DSN."""
    rcpt_script(world.sink(1), "bad@dest.test", "550 5.1.1 no such user")
    sender_mx = world.sink(9)
    relay = world.relay()
    with relay.client() as client:
        assert client.docmd("MAIL FROM:<a@sender.test> RET=HDRS ENVID=x+2By")[0] == 250
        assert client.docmd("RCPT TO:<u@dest.test> ORCPT=rfc822;u+ZZ")[0] == 501
        assert client.docmd("RCPT TO:<u@dest.test> NOTIFY=NEVER,SUCCESS")[0] == 501
        # a 600-octet RCPT line: RFC 3461 allows +500
        long_orcpt = "rfc822;" + "x+2B" * 60 + "@dest.test"
        assert client.docmd(f"RCPT TO:<bad@dest.test> NOTIFY=NEVER ORCPT={long_orcpt}")[0] == 250
        # SEC-7: too long
        assert client.docmd("RCPT TO:<bad@dest.test> ORCPT=rfc822;" + "x" * 1100)[0] == 500
        assert client.data(MSG)[0] == 250
    assert wait_for(lambda: "status=bounced" in relay.log())
    assert wait_for(lambda: relay.queued() == [])
    time.sleep(0.5)
    assert sender_mx.messages == []


# --- policy at intake -----------------------------------------------------------------------------

RELAY_TRICKS = [
    "u@ext.test", "u%ext.test@relay.test", '"u@ext.test"@relay.test', "u@ext.test@relay.test",
    "@relay.test:u@ext.test", "ext.test!u@relay.test", "u@[192.0.2.1]", "u@ext.test.", "U@EXT.TEST",
    "u@bücher.test", "u@xn--bcher-kva.test",
]


def test_sec3_relay_denied_from_outside_relay_networks(world: World) -> None:
    """SEC-3: from 127.0.0.9 (not in relay_networks) every relay trick is refused, nothing
    queued."""
    relay = world.relay(relay_networks=["127.0.0.1/32"])
    with relay.client(source="127.0.0.9") as client:
        client.command_encoding = "utf-8"
        assert client.docmd("MAIL FROM:<a@sender.test> SMTPUTF8")[0] == 250
        for rcpt in RELAY_TRICKS:
            code, reply = client.docmd(f"RCPT TO:<{rcpt}>")
            assert code >= 500, (rcpt, code, reply)
            assert code == 554 and reply.startswith(b"5.7.1 Relay access denied"), rcpt
        assert client.docmd("DATA")[0] == 503
    assert relay.queued() == []
    with relay.client() as client:  # from 127.0.0.1 the same server relays
        assert client.docmd("MAIL FROM:<a@sender.test>")[0] == 250
        assert client.docmd("RCPT TO:<u@dest.test>")[0] == 250


def test_address_literals_refused_unless_allowed(world: World) -> None:
    """MX-13 / decision K.2: user@[literal] → 550 5.1.2 by default."""
    relay = world.relay()
    with relay.client() as client:
        client.mail("a@sender.test")
        code, reply = client.rcpt("u@[127.0.0.1]")
    assert (code, reply[:5]) == (550, b"5.1.2")


SMUGGLE_VARIANTS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\r\r\n.\r\r\n",
    b"\r\n.\r\r\n",
    b"\n.\r",
]


@pytest.mark.parametrize("bare_newline", ["normalize", "reject"])
def test_sec1_smuggling_variants_never_end_data(world: World, bare_newline: str) -> None:
    """SEC-1: only <CRLF>.<CRLF> ends DATA; a smuggled second transaction never becomes a
    message."""
    sink = world.sink(1)
    relay = world.relay(bare_newline=bare_newline)
    accepted = 0
    for variant in SMUGGLE_VARIANTS:
        smuggled = (b"Subject: first\r\n\r\nhello" + variant +
                    b"MAIL FROM:<spoof@evil.test>\r\nRCPT TO:<u@dest.test>\r\nDATA\r\n"
                    b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            stream = sock.makefile("rb")
            assert stream.readline().startswith(b"220")
            sock.sendall(
                b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<u@dest.test>\r\nDATA\r\n"
            )
            replies = [stream.readline() for _ in range(10)]
            assert replies[-1].startswith(b"354"), replies
            sock.sendall(smuggled)
            reply = stream.readline()
            # the smuggled MAIL/RCPT/DATA were message content: exactly one reply for the whole
            # thing
            assert reply[:3] in (b"250", b"550"), (variant, reply)
            if reply.startswith(b"550"):
                assert reply.startswith(b"550 5.5.2")
            else:
                accepted += 1
            sock.sendall(b"QUIT\r\n")
            assert stream.readline().startswith(b"221")
    if bare_newline == "reject":
        assert accepted == 0
    wait_for(lambda: len(sink.messages) >= accepted and relay.queued() == [])
    assert len(sink.messages) == accepted
    assert all(m.mail_from == "a@sender.test" for m in sink.messages)
    for m in sink.messages:  # normalised: only CRLF line ends reach the next hop (SESS-11)
        assert b"\r\n" in m.data and not any(
            ch for ch in m.data.replace(b"\r\n", b"") if ch in b"\r\n"
        )


def test_sec7_size_limit_at_mail_and_in_data(world: World) -> None:
    """SEC-7: SIZE= over the limit → 552 at MAIL; an oversized DATA → 552 5.3.4; nothing spooled."""
    relay = world.relay(max_message_size=2048)
    with relay.client() as client:
        assert "2048" in client.esmtp_features["size"]
        assert client.docmd("MAIL FROM:<a@sender.test> SIZE=5000")[0] == 552
        client.mail("a@sender.test")
        client.rcpt("u@dest.test")
        code, reply = client.data(MSG + b"x" * 70 + b"\r\n" * 0 + (b"y" * 900 + b"\r\n") * 3)
    assert (code, reply[:5]) == (552, b"5.3.4")
    assert relay.queued() == []


def test_sec9_recipient_limit(world: World) -> None:
    """SEC-9: max_recipients=3 → the 4th and 5th get 452 4.5.3; the message goes to the first 3."""
    sink = world.sink(1)
    relay = world.relay(max_recipients=3)
    with relay.client() as client:
        client.mail("a@sender.test")
        codes = [client.rcpt(f"r{i}@dest.test") for i in range(5)]
        assert [c for c, _ in codes] == [250, 250, 250, 452, 452]
        assert codes[3][1].startswith(b"4.5.3")
        assert client.data(MSG)[0] == 250
    assert wait_for(lambda: sink.messages)
    assert sorted(sink.messages[0].rcpt_to) == ["r0@dest.test", "r1@dest.test", "r2@dest.test"]


def test_sess12_line_length_and_sess18_loop_detection(world: World) -> None:
    """SESS-12: a 999-octet line is refused, 998 accepted; SESS-18: 101 Received: → 554 5.4.6, 99
    relayed."""
    sink = world.sink(1)
    relay = world.relay()
    with relay.client() as client:
        for body, want in [
            (b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n", 500),
            (b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n", 250),
            (b"Received: from x\r\n" * 101 + b"Subject: x\r\n\r\nloop\r\n", 554),
            (b"Received: from x\r\n" * 99 + b"Subject: x\r\n\r\nok\r\n", 250),
        ]:
            client.mail("a@sender.test")
            client.rcpt("u@dest.test")
            code, reply = client.data(body)
            assert code == want, (code, reply)
            if code == 554:
                assert reply.startswith(b"5.4.6")
    assert wait_for(lambda: len(sink.messages) == 2)


def test_sec13_banner_and_vrfy_disclose_nothing(world: World) -> None:
    relay = world.relay()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        assert sock.recv(200) == b"220 relay.test ESMTP\r\n"
    with relay.client() as client:
        assert client.verify("root")[0] == 252
        assert (
            client.has_extn("pipelining")
            and client.has_extn("dsn")
            and client.has_extn("enhancedstatuscodes")
        )
        assert not client.has_extn("auth")  # no credentials file, no TLS


# --- durability and operations --------------------------------------------------------------------

def test_dur1_kill9_right_after_250_then_restart_delivers_exactly_once(world: World) -> None:
    """DUR-1/DUR-7: kill -9 right after the 250; restart; delivered exactly once."""
    # MX not up yet: first try fails
    relay = world.relay(retry_min_seconds=60, retry_max_seconds=120)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    relay.kill()
    assert len(relay.queued()) == 1
    sink = world.sink(1)
    assert relay.queue("flush").returncode == 0  # due now at the restart, not in 60 s
    relay.start()
    assert wait_for(lambda: sink.messages)
    assert wait_for(lambda: relay.queued() == [])
    time.sleep(1.0)
    assert len(sink.messages) == 1


def test_queue_list_show_flush_delete_while_running(world: World) -> None:
    """`mxroute queue`: list and show explain a deferral (each host's reply, next try); flush and
    delete act."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 greylisted")
    rcpt_script(sink, "v@dest.test", "451 4.3.0 greylisted")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    relay.send("a@sender.test", ["v@dest.test"], MSG)
    assert wait_for(lambda: relay.log().count("status=deferred") >= 2)
    listing = relay.queue("list")
    assert (
        listing.returncode == 0
        and "deferred" in listing.stdout
        and "<a@sender.test>" in listing.stdout
    )
    lines = relay.queue("list", "--json").stdout.splitlines()  # one object per message and line
    ids = [json.loads(line)["queue_id"] for line in lines]
    assert sorted(ids) == relay.queued() and len(ids) == 2
    shown = {i: json.loads(relay.queue("show", i, "--json").stdout) for i in ids}
    u_id = next(i for i, m in shown.items() if m["recipients"][0]["address"] == "u@dest.test")
    v_id = next(i for i in ids if i != u_id)
    text = relay.queue("show", u_id).stdout
    assert (
        "451 4.3.0 greylisted" in text
        and "next try:" in text
        and f"mx1.dest.test[{world.ip(1)}]" in text
    )
    assert relay.queue("delete", v_id).returncode == 0
    assert relay.queue("show", v_id).returncode != 0
    assert relay.queue("show", "../etc").returncode == 64
    rcpt_script(sink, "u@dest.test", None)
    assert relay.queue("flush").returncode == 0
    assert wait_for(lambda: sink.messages, timeout=10)
    assert wait_for(lambda: relay.queued() == [])
    assert [m.rcpt_to for m in sink.messages] == [["u@dest.test"]]  # the deleted one never went out


def test_dur8_sigterm_exits_0_with_mail_intact(world: World) -> None:
    """DUR-8: SIGTERM → exit 0 promptly; deferred mail stays in the spool, valid; a restart
    continues."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: "status=deferred" in relay.log())
    started = time.monotonic()
    assert relay.terminate() == 0
    assert time.monotonic() - started < 10
    (queue_id,) = relay.queued()
    shown = json.loads(relay.queue("show", queue_id, "--json").stdout)
    assert shown["recipients"][0]["state"] == "pending" and shown["recipients"][0]["attempts"] == 1


def test_dur8_sigterm_during_parallel_sessions_every_client_sees_250_or_4xx(world: World) -> None:
    """DUR-8: SIGTERM while 20 clients are mid-transaction: each sees 250 or a 4xx/closed
    connection, and every 250 is in the spool or delivered (never lost)."""
    import threading

    sink = world.sink(1)
    relay = world.relay()
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()
    go = threading.Event()

    def client(n: int) -> None:
        try:
            with relay.client() as c:
                c.mail("a@sender.test")
                c.rcpt(f"p{n}@dest.test")
                go.wait(10)
                code, reply = c.data(MSG)
                result = ("ok" if code == 250 else f"{code}", reply.decode(errors="replace"))
        except (smtplib.SMTPException, OSError) as exc:
            result = ("dropped", type(exc).__name__)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    go.set()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(20)
    assert relay.proc.wait(timeout=15) == 0
    assert len(outcomes) == 20
    assert all(kind in ("ok", "dropped") or kind.startswith("4") for kind, _ in outcomes), outcomes
    accepted = {reply.split()[-1] for kind, reply in outcomes if kind == "ok"}
    delivered = {
        m.data.split(b" id ", 1)[1].split(b";", 1)[0].split()[0].decode() for m in sink.messages
    }
    assert accepted <= delivered | set(relay.queued())


def test_sec10_client_cap_gives_421(world: World) -> None:
    """SEC-10: past max_clients a new connection gets 421 4.7.0; a slot freed is usable again."""
    relay = world.relay(max_clients=2)
    first, second = relay.client(), relay.client()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        assert sock.recv(200).startswith(b"421 4.7.0")
    first.quit()
    assert wait_for(lambda: _banner(relay.port).startswith(b"220"), timeout=5)
    second.quit()


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(200)


def test_sec8_auth_only_after_starttls_and_then_relays(world: World, tmp_path: Path) -> None:
    """SEC-8: no AUTH before TLS (538 5.7.11); after STARTTLS bad credentials → 535 5.7.8;
    good ones let a client outside relay_networks relay (Received says ESMTPSA)."""
    from tests.support.smtpsink import tls_available, tls_files

    if not tls_available():
        pytest.skip("the cryptography package is needed to make a test certificate")
    from mxroute.relay.intake.auth import hash_password

    cert, key = tls_files()
    creds = tmp_path / "credentials"
    creds.write_text(f"# test users\nalice:{hash_password('s3cret')}\n")
    sink = world.sink(1)
    relay = world.relay(
        relay_networks=["127.0.0.1/32"],
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        auth_credentials_file=str(creds),
    )
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with relay.client(source="127.0.0.9") as client:
        assert client.has_extn("starttls") and not client.has_extn("auth")
        code, reply = client.docmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==")
        assert (code, reply[:6]) == (538, b"5.7.11")
        client.starttls(context=context)
        client.ehlo("client.test")
        assert "PLAIN" in client.esmtp_features.get("auth", "")
        assert client.docmd("MAIL FROM:<a@sender.test>")[0] == 250
        assert client.docmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==")[0] == 503  # not inside a transaction
        assert client.docmd("RSET")[0] == 250
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            client.login("alice", "wrong")
        assert bad.value.smtp_code == 535
        client.login("alice", "s3cret")
        client.sendmail("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: sink.messages)
    assert b"with ESMTPSA id" in sink.messages[0].data.split(b"\r\n\r\n")[0]
