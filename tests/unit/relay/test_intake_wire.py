"""``relay.intake.wire``: the DATA body read in bulk ends where aiosmtpd's line-by-line reading
ends it, with the same content, however the bytes arrive (issue 23, SEC-1)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mxroute.relay.intake.wire import LeanSMTP, unstuff

AFTER = b"MAIL FROM:<spoof@evil.test>\r\nRCPT TO:<v@dest.test>\r\nDATA\r\n"
ENDS = [b"\n", b"\r", b"\r\n", b"\r\r\n", b"\n\r", b"\n\n", b"\x00\r\n"]
# SEC-1's corpus around the dot (tests/faults), and ordinary stuffed bodies
BODIES = [b"hello" + pre + b"." + post + b"more\r\n" for pre, post in itertools.product(ENDS, ENDS)]
BODIES += [b"", b"..\r\n", b"...x\r\n.y\r\n", b"Subject: s\r\n\r\n..a\r\nb\r\n",
           b"x" * 3000 + b"\r\n"]


def reference(wire: bytes) -> tuple[bytes, bytes]:
    """aiosmtpd 1.4.6's reading: CRLF lines until the lone dot, each line's dot taken off;
    (body, what is left for the commands)."""
    body, rest = bytearray(), wire
    while True:
        cut = rest.index(b"\r\n") + 2
        line, rest = rest[:cut], rest[cut:]
        if line == b".\r\n":
            return bytes(body), rest
        body += line[1:] if line[:1] == b"." else line


async def bulk(wire: bytes, cuts: tuple[int, ...], limit: int = 1 << 20) -> tuple[bytes, bytes]:
    """LeanSMTP.body_piece over ``wire`` fed in pieces cut at ``cuts``."""
    smtp = LeanSMTP(object(), loop=asyncio.get_running_loop())
    reader = asyncio.StreamReader(limit=limit)
    smtp._reader = reader
    edges = [0, *cuts, len(wire)]

    async def feed() -> None:
        for start, end in itertools.pairwise(edges):
            reader.feed_data(wire[start:end])
            await asyncio.sleep(0)

    feeding = asyncio.create_task(feed())
    body = bytearray()
    for _ in range(len(wire) + 1):
        piece, end = await asyncio.wait_for(smtp.body_piece(), 5)
        body += unstuff(piece)
        if end:
            break
    await feeding
    return bytes(body), bytes(reader._buffer)  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", BODIES)
def test_body_pieces_end_and_unstuff_as_line_reading_at_every_cut(body: bytes) -> None:
    """issue 23, SEC-1: every body (bare CR/LF variants around a dot included), stuffed and
    followed by commands, cut in two at every position: the same content and the same rest
    as aiosmtpd's line-by-line reading."""
    stuffed = (b"." + body if body[:1] == b"." else body).replace(b"\r\n.", b"\r\n..")
    wire = stuffed + b".\r\n" + AFTER
    expected = reference(wire)
    assert expected[1] == AFTER

    async def every_cut() -> None:
        for cut in range(1, len(wire)):
            assert await bulk(wire, (cut,)) == expected, cut

    asyncio.run(every_cut())


def test_body_beyond_the_limit_is_read_line_by_line_to_the_same_end() -> None:
    """issue 23: a body longer than the stream's limit (here 4 KiB) falls back to lines."""
    body = b"".join(b".%04d " % n + b"y" * 60 + b"\r\n" for n in range(300))
    wire = b"." + body.replace(b"\r\n.", b"\r\n..") + b".\r\n" + AFTER
    expected = reference(wire)
    assert asyncio.run(bulk(wire, (1000, 5000, 9000), limit=4096)) == expected


def test_unstuff_takes_one_dot_off_each_line_that_starts_with_one() -> None:
    """RFC 5321 §4.5.2: the first dot of a line, at the start and after each CRLF only."""
    assert unstuff(b"..a\r\nb.\r\n...c\r\n.\r\n") == b".a\r\nb.\r\n..c\r\n\r\n"
    assert unstuff(b"a\n.b\r\r\n.c\r\n") == b"a\n.b\r\r\nc\r\n"
    assert unstuff(b"") == b""
