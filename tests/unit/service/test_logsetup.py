"""BatchingStreamHandler over a real SOCK_SEQPACKET pair: one record per write(2) (issue 13)."""

from __future__ import annotations

import io
import logging
import select
import socket
from collections.abc import Iterator

import pytest

from mxroute.service.logsetup import BatchingStreamHandler
from tests.support.relay import wait_for


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, io.TextIOWrapper]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = open(theirs.fileno(), "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        yield ours, stream
    finally:
        ours.close()
        theirs.close()


def records(sock: socket.socket) -> list[bytes]:
    got = []
    for _ in range(10_000):  # bounded: what is there now
        try:
            got.append(sock.recv(1 << 20))
        except BlockingIOError:
            break
    return got


def record(name: str, level: int = logging.INFO, msg: str = "x") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_quiet_line_at_once_the_next_within_the_interval_warning_at_once(
    pair: tuple[socket.socket, io.TextIOWrapper],
) -> None:
    sock, stream = pair
    handler = BatchingStreamHandler(stream, interval=0.2)
    handler.handle(record("a", msg="first"))
    assert records(sock) == [b"first\n"]  # nothing written lately: at once
    handler.handle(record("a", msg="second"))
    handler.handle(record("a", msg="third"))
    got: list[bytes] = []
    assert wait_for(lambda: got.extend(records(sock)) or got, timeout=5)  # the thread writes
    assert got == [b"second\nthird\n"]  # one write(2) for both
    handler.handle(record("a", msg="fourth"))
    handler.handle(record("a", logging.WARNING, "trouble"))
    assert records(sock) == [b"fourth\ntrouble\n"]  # a warning takes what waits with it
    handler.close()


def test_a_burst_is_written_as_whole_lines_at_most_pipe_buf_each(
    pair: tuple[socket.socket, io.TextIOWrapper],
) -> None:
    sock, stream = pair
    handler = BatchingStreamHandler(stream, interval=60)
    handler.handle(record("a", msg="start"))
    lines = [f"line {n} " + "y" * (n % 150) for n in range(400)]
    for line in lines:
        handler.handle(record("a", msg=line))
    handler.flush()
    got = records(sock)
    assert b"".join(got).decode().splitlines() == ["start", *lines]
    assert all(r.endswith(b"\n") and len(r) <= select.PIPE_BUF for r in got)
    assert len(got) < 30
    handler.close()


def test_a_stream_without_a_descriptor_gets_the_lines_through_write() -> None:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream)  # type: ignore[arg-type]
    handler.handle(record("a", msg="one"))
    handler.close()
    assert stream.getvalue() == "one\n"
