"""How the intake reads what a client sends, however the bytes are cut (issue 23).

Issue 23 reads command lines and the DATA body from the stream's buffer in bulk and batches
the replies of pipelined commands; these tests pin what a client sees whatever the segments
look like: a body split at every byte (the ``<CRLF>.<CRLF>`` terminator and dot-stuffing cut
in two, SEC-1), pipelined commands in one segment answered in order (RFC 2920), over-long
command and body lines arriving in pieces (RFC 5321 §4.5.3.1), a message larger than the
stream's read-ahead. Everything through the real ``mxroute serve`` on loopback (127.0.51.x).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.rawclient import Raw
from tests.support.relay import Relay, World, wait_for

pytestmark = pytest.mark.slow

# the message as its author wrote it, and as it goes on the wire (dot-stuffed, RFC 5321 §4.5.2)
ORIGINAL = (b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: split\r\n\r\n"
            b".leading dot\r\nbody\r\n..two dots\r\n.\r\nx\r\n")
WIRE = (b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: split\r\n\r\n"
        b"..leading dot\r\nbody\r\n...two dots\r\n..\r\nx\r\n.\r\n")


@pytest.fixture
def rworld(tmp_path: Path, dns_server: DNSServer) -> Iterator[World]:
    """A world on this suite's own range, 127.0.51.x."""
    with World.running(tmp_path, dns_server, net=51, base="127.0") as w:
        w.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {w.ip(1)}\n")
        yield w


def _session(relay: Relay) -> Raw:
    client = Raw(relay.port)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert client.cmd(b"EHLO c.test")[0] == 250
    return client


def _pieces(client: Raw, *pieces: bytes) -> None:
    """Each piece its own segment: a pause after each, so the relay reads them apart."""
    for piece in pieces:
        client.sock.sendall(piece)
        time.sleep(0.01)


def _transaction(client: Raw) -> None:
    assert client.cmd(b"MAIL FROM:<a@sender.test>")[0] == 250
    assert client.cmd(b"RCPT TO:<u@dest.test>")[0] == 250
    assert client.cmd(b"DATA")[0] == 354


def test_body_cut_at_every_byte_is_one_message_intact(rworld: World) -> None:
    """issue 23, SEC-1: the body cut in two at every position (the terminator's CR, LF and dot
    apart, a stuffed dot apart from its line) and once a byte per segment: each is one
    message, un-stuffed, byte for byte the original; the session goes on after each."""
    sink = rworld.sink(1)
    relay = rworld.relay()
    client = _session(relay)
    cuts = [(WIRE[:i], WIRE[i:]) for i in range(1, len(WIRE))]
    cuts.append(tuple(WIRE[i:i + 1] for i in range(len(WIRE))))
    try:
        for pieces in cuts:
            _transaction(client)
            _pieces(client, *pieces)
            code, text = client.reply()
            assert code == 250 and text.startswith("2.0.0 Ok: queued as"), (pieces, text)
        assert client.cmd(b"QUIT")[0] == 221
    finally:
        client.close()
    assert wait_for(lambda: len(sink.messages) >= len(cuts), timeout=30)
    assert len(sink.messages) == len(cuts)
    assert all(m.data.endswith(b"\r\n" + ORIGINAL) for m in sink.messages)
    assert all(m.data.count(b"Subject: split") == 1 for m in sink.messages)


def test_pipelined_commands_in_one_segment_are_answered_in_order(rworld: World) -> None:
    """issue 23, RFC 2920: a whole batch in one segment (refusals among it), then a body, its
    end and the next transaction in one more: every command gets its own reply, in order,
    with its enhanced code (RFC 2034), and both messages are queued."""
    sink = rworld.sink(1)
    relay = rworld.relay()
    client = Raw(relay.port)
    try:
        client.sock.sendall(
            b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<u@dest.test>\r\n"
            b"RCPT TO:<broken\r\nNOOP\r\nRSET\r\nMAIL FROM:<a@sender.test>\r\n"
            b"MAIL FROM:<b@sender.test>\r\nRCPT TO:<v@dest.test>\r\nDATA\r\n")
        replies = [client.reply() for _ in range(9)]
        assert [code for code, _ in replies] == [250, 250, 250, 501, 250, 250, 250, 503, 250]
        assert [text[:5] for _, text in replies[1:]] == [
            "2.1.0", "2.1.5", "5.5.4", "2.0.0", "2.0.0", "2.1.0", "5.5.1", "2.1.5"]
        assert client.reply()[0] == 354
        client.sock.sendall(ORIGINAL.replace(b"\r\n.", b"\r\n..") + b".\r\n"
                            b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<w@dest.test>\r\nDATA\r\n")
        assert [client.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.sock.sendall(b"Subject: second\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n")
        assert [client.reply()[0] for _ in range(3)] == [250, 250, 221]
    finally:
        client.close()
    assert wait_for(lambda: len(sink.messages) == 2, timeout=20)
    first, second = sorted(sink.messages, key=lambda m: m.rcpt_to)
    assert first.rcpt_to == ["v@dest.test"] and first.data.endswith(b"\r\n" + ORIGINAL)
    assert second.rcpt_to == ["w@dest.test"] and second.data.endswith(b"\r\n\r\nhi\r\n")


def test_overlong_lines_in_pieces_get_500_and_the_session_goes_on(rworld: World) -> None:
    """issue 23, RFC 5321 §4.5.3.1: a MAIL line over its limit and a NOOP over 512 octets, each
    arriving in pieces, get ``500 5.5.2``; a body line over 998 octets in pieces gets the
    message refused with ``500 5.5.2`` after its end; each time the session goes on and a
    normal message is queued (nothing of the refused ones is)."""
    sink = rworld.sink(1)
    relay = rworld.relay()
    client = _session(relay)
    try:
        _pieces(client, b"MAIL FROM:<" + b"a" * 700, b"a" * 700, b"@sender.test>\r")
        _pieces(client, b"\n")
        code, text = client.reply()
        assert (code, text) == (500, "5.5.2 Command line too long")
        _pieces(client, b"NOOP " + b"n" * 300, b"n" * 300 + b"\r\n")
        assert client.reply() == (500, "5.5.2 Command line too long")
        _transaction(client)
        _pieces(client, b"Subject: long\r\n\r\n" + b"y" * 600, b"y" * 600, b"\r\n.", b"\r\n")
        code, text = client.reply()
        assert code == 500 and text.startswith("5.5.2 Message line longer than 998"), text
        _transaction(client)
        _pieces(client, b"Subject: fine\r\n\r\nok\r\n.\r\n")
        assert client.reply()[0] == 250
        assert client.cmd(b"QUIT")[0] == 221
    finally:
        client.close()
    assert wait_for(lambda: sink.messages, timeout=20)
    time.sleep(0.3)
    assert [m.data.endswith(b"Subject: fine\r\n\r\nok\r\n") for m in sink.messages] == [True]


def test_message_larger_than_the_read_ahead_arrives_intact(rworld: World) -> None:
    """issue 23: a 3 MB body (beyond the 1 MiB the stream reads ahead of a line), dot-stuffed
    lines throughout and one right at the 1 MiB mark, sent in 64 KiB segments: one message,
    byte for byte; SIZE= declared or not."""
    sink = rworld.sink(1)
    relay = rworld.relay()
    lines = [b".%06d " % n + b"z" * 70 + b"\r\n" for n in range(40000)]
    original = b"Subject: big\r\n\r\n" + b"".join(lines)
    wire = original.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    client = _session(relay)
    try:
        for mail in (b"MAIL FROM:<a@sender.test>", b"MAIL FROM:<a@sender.test> SIZE=3200000"):
            assert client.cmd(mail)[0] == 250
            assert client.cmd(b"RCPT TO:<u@dest.test>")[0] == 250
            assert client.cmd(b"DATA")[0] == 354
            for start in range(0, len(wire), 65536):
                client.sock.sendall(wire[start:start + 65536])
            code, text = client.reply()
            assert code == 250, text
    finally:
        client.close()
    assert wait_for(lambda: len(sink.messages) == 2, timeout=30)
    assert all(m.data.endswith(b"\r\n" + original) for m in sink.messages)
