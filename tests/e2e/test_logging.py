"""Both processes of `serve` write their log lines promptly and in batches, whatever the
environment (issue 13 item 2).

stdout here is a SOCK_SEQPACKET socket: each write(2) of either process arrives as one record,
so the test sees how the lines were written, not only what they say. The relay runs without
PYTHON* variables (as under systemd or in a newcomer's shell) and with PYTHONUNBUFFERED=1 (as
CI had it): neither may change when a line appears or how lines are grouped.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.relay import MSG, Relay, World, wait_for, wait_for_text

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mxroute\[\d+\] [A-Z]+ [\w.]+: ")


class Records:
    """The records read from one end of a SOCK_SEQPACKET pair by a bounded reader thread."""

    def __init__(self, sock: socket.socket, limit: float = 120.0) -> None:
        self.sock = sock
        self.records: list[bytes] = []
        self.deadline = time.monotonic() + limit
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while time.monotonic() < self.deadline:  # bounded in time; one record per turn
            try:
                record = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not record:
                return
            self.records.append(record)

    def text(self) -> str:
        return b"".join(self.records).decode(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def wait(self, *texts: str, timeout: float = 15.0) -> str:
        """The text once it holds every one of ``texts`` (bounded); the text so far otherwise."""
        return wait_for_text(self.text, texts, timeout)


@contextmanager
def logging_to_records(world: World, **env: str) -> Iterator[tuple[Relay, Records]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    relay = Relay(world.tmp, world.dns, world.sink_port)
    relay.env.update(env)
    world.relays.append(relay)  # killed by PID by the world fixture whatever happens
    try:
        relay.start(stdout=theirs.fileno())
    finally:
        theirs.close()  # the relay's processes hold the only writing ends
    records = Records(ours)
    try:
        yield relay, records
    finally:
        relay.kill()
        records.thread.join(timeout=5)
        ours.close()


@pytest.mark.parametrize("env", [{}, {"PYTHONUNBUFFERED": "1"}], ids=["clean", "unbuffered"])
def test_log_lines_come_promptly_and_in_whole_line_batches(world: World,
                                                            env: dict[str, str]) -> None:
    """Issue 13: with no PYTHON* variable, each process's line for an event arrives while the
    relay is otherwise quiet (the test waits, bounded, for it); under a burst each write(2)
    carries several whole lines, at most PIPE_BUF bytes (so the two processes never cut into
    each other's lines), with PYTHONUNBUFFERED=1 as well."""
    sink = world.sink(1)
    with logging_to_records(world, **env) as (relay, records):
        assert "mxroute ready" in records.wait("mxroute ready"), records.text()
        with relay.client() as client:
            reply = client.sendmail("a@sender.test", ["u@dest.test"], MSG)
        assert reply == {}
        assert wait_for(lambda: sink.messages)
        # the intake's line (this process) and the courier's (the delivery process)
        text = records.wait("status=accepted", "status=sent", "removed")
        assert "status=accepted" in text and "status=sent" in text and "removed" in text, text

        burst = 30
        with relay.client() as client:
            for _ in range(burst):
                assert client.sendmail("a@sender.test", ["u@dest.test"], MSG) == {}
        assert wait_for(lambda: len(sink.messages) == burst + 1, timeout=30)
        assert wait_for(lambda: records.text().count(": removed") == burst + 1, timeout=15)
        assert relay.terminate() == 0
        records.thread.join(timeout=10)

    lines = records.lines()
    assert all(LINE.match(line) for line in lines), lines
    assert len({line.split("[")[1].split("]")[0] for line in lines}) == 2  # both processes
    for record in records.records:
        assert record.endswith(b"\n"), record  # whole lines only
        assert len(record) <= select.PIPE_BUF or record.count(b"\n") == 1, len(record)
    assert len(records.records) < len(lines), (len(records.records), len(lines))  # batched
