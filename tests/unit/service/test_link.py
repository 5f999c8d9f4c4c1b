"""Issue 23 (handoff): what crosses the socketpair from the intake to the delivery process.

A small message just committed travels with its ID (``+ID SIZE``, then its meta and bytes), so
the delivery process need not read back the file; the rest stay lines (IDs, JSON commands)."""

from __future__ import annotations

import asyncio
import pickle
import socket

import pytest

from mxroute.relay.spool.format import MessageMeta, RecipientState, new_queue_id
from mxroute.service import link as linkmod
from mxroute.service.link import ChildLink, Lines, handed
from mxroute.settings import Settings


def _meta() -> MessageMeta:
    return MessageMeta(queue_id=new_queue_id(), sender="a@example.com", arrival=1.0,
                       recipients=[RecipientState("b@example.net")])


def _feed(wire: bytes, step: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    lines = Lines(lambda line: got.append(("line", line)),
                  on_frame=lambda name, payload: got.append((name.decode(), payload)))
    for start in range(0, len(wire), step):
        lines.data_received(wire[start : start + step])
    return got


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1 << 20])
def test_frames_and_lines_come_out_whole_however_the_bytes_are_split(step: int) -> None:
    """Issue 23: frames (whose payload may hold newlines) and lines interleave; any split of
    the stream into reads gives the same items in the same order."""
    payload = b"bin\nary\n\x00" * 50
    wire = (b"ID000000001\n" + b"+ID000000002 %d\n" % len(payload) + payload
            + b'{"op":"rescan"}\n' + b"+ID000000003 0\n" + b"\nID000000004\n")
    assert _feed(wire, step) == [("line", b"ID000000001"), ("ID000000002", payload),
                                 ("line", b'{"op":"rescan"}'), ("ID000000003", b""),
                                 ("line", b"ID000000004")]


def test_a_malformed_frame_head_is_a_line_not_a_crash() -> None:
    """A frame head without a size is handed on as a line (the delivery process logs it)."""
    assert _feed(b"+ID0001 x\nID0002\n", 5) == [("line", b"+ID0001 x"), ("line", b"ID0002")]


def _wire(link: ChildLink, metas: list[tuple[MessageMeta, bytes | None]]) -> bytes:
    """What ``link`` writes for ``metas`` queued in one loop turn (the spool hands each kept
    message over once), read from the other end of a socketpair."""

    async def run() -> bytes:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        kept = {meta.queue_id: (meta, message) for meta, message in metas if message is not None}
        link.take = lambda queue_id: kept.pop(queue_id, None)
        ours.setblocking(False)
        _, link._lines = await loop.create_unix_connection(lambda: Lines(lambda _l: None),
                                                          sock=ours)
        for meta, _ in metas:
            link.queued(meta)
        await asyncio.sleep(0.05)
        theirs.setblocking(False)
        data = b""
        try:
            while chunk := theirs.recv(1 << 20):
                data += chunk
        except BlockingIOError:
            pass
        theirs.close()
        assert link._lines.transport is not None
        link._lines.transport.close()
        assert kept == {}, "every kept message taken from the spool"
        return data

    return asyncio.run(run())


def test_a_kept_message_crosses_with_its_id_others_as_ids() -> None:
    """Issue 23: a message the spool kept in memory goes over with its meta and bytes; one it
    did not (too large, no room) goes as its ID; the delivery process reads each the same."""
    link = ChildLink(Settings(), lock_fd=-1)
    small, large = (_meta(), b"Subject: x\r\n\r\nhello\r\n"), (_meta(), None)
    wire = _wire(link, [small, large])
    items = _feed(wire, 1 << 20)
    assert [name for name, _ in items] == [small[0].queue_id, "line"]
    meta, message = handed(small[0].queue_id.encode(), items[0][1])
    assert message == small[1] and meta.to_json() == small[0].to_json()
    assert items[1][1] == large[0].queue_id.encode()


def test_a_busy_delivery_process_gets_ids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23 (issue 22's bound): past HANDOFF_LIMIT bytes waiting in the socket, messages
    are sent as IDs (read from the spool when their turn comes), never piled up in memory."""
    monkeypatch.setattr(linkmod, "HANDOFF_LIMIT", 100)
    link = ChildLink(Settings(), lock_fd=-1)
    body = b"x" * 80
    metas: list[tuple[MessageMeta, bytes | None]] = [(_meta(), body) for _ in range(3)]
    items = _feed(_wire(link, metas), 1 << 20)
    assert [name for name, _ in items] == [metas[0][0].queue_id, "line", "line"]


def test_handed_refuses_a_payload_for_another_id() -> None:
    """A frame whose payload names another message is refused (ValueError), not delivered."""
    meta = _meta()
    with pytest.raises(ValueError):
        handed(b"OTHERID0001", pickle.dumps((meta, b"x")))
