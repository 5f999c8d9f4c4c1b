"""How the intake reaches the delivery side: one interface, two implementations.

``LocalLink`` (``delivery_processes = 0``): the ``Delivery`` object on the intake's event
loop, called directly. ``ChildLink`` (``delivery_processes = 1``, the default): the
delivery process (mxroute/service/worker.py), started as a fresh interpreter
(``sys.executable -P -c``, importing this process's own mxroute) and spoken to over one
AF_UNIX socketpair, one line per message (``Lines``). The child inherits the spool lock's
descriptor (mxroute/relay/spool/lock.py): one lock, held while either process lives, never
refusing a restarted child.

- parent → child: a queue ID (a message just committed to the spool, fsync'd), or the same
  with the message (issue 23: ``+ID SIZE`` then SIZE bytes, its meta and bytes pickled, for
  a message the spool kept in memory: the delivery process need not read the file back;
  IDs only while HANDOFF_LIMIT bytes wait in the socket), or a JSON command: ``settings``
  (start and SIGHUP), ``rescan``, ``snapshot``, ``stop``;
- child → parent: JSON ``started`` (its configuration is usable: the intake listens now,
  issue 23), ``ready`` (recovery done), ``reloaded``, ``snapshot``, ``stopped``.

The spool stays the truth: an ID that cannot be sent (the child is restarting, the pipe
is full) is dropped, and the child finds the message anyway (its start-up recovery, a
``rescan`` after a drop, its periodic rescan).

A child that dies is restarted, at most ``MAX_RESTARTS`` per ``RESTART_WINDOW`` seconds;
beyond that the parent stops (exit 70) so that systemd restarts the service: it never
goes on accepting mail it does not deliver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxroute.errors import MxrouteError
from mxroute.relay.spool.format import MessageMeta
from mxroute.settings import Settings

if TYPE_CHECKING:
    from mxroute.service.worker import Delivery

log = logging.getLogger(__name__)

MAX_RESTARTS = 5  # delivery process restarts allowed per RESTART_WINDOW seconds
RESTART_WINDOW = 60.0
PIPE_LIMIT = 4 << 20  # bytes of IDs buffered for a busy child before they are dropped, rescanned
HANDOFF_LIMIT = 1 << 20  # bytes buffered beyond which messages go as IDs (the child reads the file)
ASK_TIMEOUT = 2.0  # seconds for a snapshot answer
RELOAD_TIMEOUT = 10.0
# a file younger than this may be between its rename and its directory's fsync: the delivery
# process's recovery and rescans leave it for later, and the intake resends the IDs it committed
# in this window to a restarted one (one value for both processes: the worker imports it)
SETTLE_SECONDS = 10.0
ID_CLOCK_MARGIN = 1.0  # s: queue IDs made this much before the child's start count as its own
_CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES")
# The child imports the mxroute this process runs, from where this process found it: with
# ``-P`` Python puts no working directory first on the path (serve started in a directory
# holding another ``mxroute/`` would otherwise run that one's delivery process).
_OWN_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD_COMMAND = (f"import sys; sys.path.insert(0, {_OWN_ROOT!r}); "
                  "from mxroute.service.worker import child_main; child_main()")


class LocalLink:
    """``delivery_processes = 0``: the delivery side on this event loop, called directly."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.failed = asyncio.Event()
        self.restarts = 0  # never: the delivery side is this process (the metrics ask)

    async def start(self) -> None:
        self.delivery.recover()
        await self.delivery.start()
        assert self.delivery.runner is not None
        self.delivery.runner.add_done_callback(lambda _t: self.failed.set())

    def queued(self, meta: MessageMeta) -> None:
        self.delivery.queue.add(meta)

    def failure(self) -> str | None:
        return self.delivery.failure()

    async def reconfigure(self, settings: Settings) -> None:
        self.delivery.reconfigure(settings)

    async def snapshot(self) -> dict[str, Any]:
        return self.delivery.snapshot()

    async def stop(self, grace: float) -> dict[str, Any]:
        self.failed = asyncio.Event()  # a runner cancelled on purpose is no failure
        await self.delivery.stop(grace)
        return self.delivery.snapshot()


class Lines(asyncio.Protocol):
    """One line per message over the socketpair, both ways; a line ``+NAME SIZE`` is followed
    by SIZE bytes, handed to ``on_frame`` with NAME (issue 23)."""

    def __init__(self, on_line: Callable[[bytes], None],
                 on_frame: Callable[[bytes, bytes], None] | None = None) -> None:
        self.on_line = on_line
        self.on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start, find = 0, buffer.find
        while (end := find(b"\n", start)) >= 0:
            line = buffer[start:end]
            if line[:1] == b"+" and self.on_frame is not None:
                name, _, size = line[1:].partition(b" ")
                if size.isdigit():
                    stop = end + 1 + int(size)
                    if stop > len(buffer):
                        break  # the rest of the frame is still on its way
                    self.on_frame(name, buffer[end + 1 : stop])
                    start = stop
                    continue
            if line:
                self.on_line(line)
            start = end + 1
        self._buffer = buffer[start:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def send(self, payload: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")


def handed(name: bytes, payload: bytes) -> tuple[MessageMeta, bytes]:
    """The meta and bytes of a message the intake sent with its ID ``name`` (from the parent:
    trusted); ValueError when the payload is not that message's."""
    meta, message = pickle.loads(payload)
    if not isinstance(meta, MessageMeta) or not isinstance(message, bytes) \
            or meta.queue_id.encode("ascii") != name:
        raise ValueError(f"a handed message that is not {name[:64]!r}")
    return meta, message


def encode_settings(settings: Settings) -> str:
    """The settings as they travel in a ``settings`` command."""
    return base64.b64encode(pickle.dumps(settings)).decode("ascii")


def decode_settings(text: str) -> Settings:
    """The settings of a ``settings`` command (from the parent: trusted)."""
    settings: Settings = pickle.loads(base64.b64decode(text))
    return settings


class ChildLink:
    """``delivery_processes = 1``: the delivery side in a child process, supervised, restarted."""

    def __init__(self, settings: Settings, lock_fd: int,
                 clock: Callable[[], float] = time.monotonic,
                 take: Callable[[str], tuple[MessageMeta, bytes] | None] | None = None) -> None:
        self.settings = settings
        self.lock_fd = lock_fd  # the spool lock: every child inherits it (the same lock)
        self.clock = clock
        self.failed = asyncio.Event()
        self._failure: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: Lines | None = None
        self._started: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._asked = 0
        self.take = take  # issue 23: the spool's kept message (``Spool.take``), handed over
        self._out: list[bytes] = []  # what goes to the child this loop turn
        self._out_bytes = 0
        self._ids: list[bytes] = []  # the ID lines queued this loop turn
        self._recent: deque[tuple[float, bytes]] = deque()  # (when, ID lines) committed lately
        self._flushing = False
        self._dropped = False
        self._stopping = False
        self._restarts: deque[float] = deque()
        self.restarts = 0  # delivery processes restarted since start (the metrics, issue 20)
        self._last: dict[str, Any] = {}
        self._supervisor: asyncio.Task[None] | None = None

    # --- process ---
    async def _spawn(self, restart: bool = False) -> None:
        """Start a child; ``restart``: the intake is already taking mail (the child's recovery
        then leaves files that may not be committed yet for a moment: SETTLE_SECONDS)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
        try:
            # From the loop's (main) thread: PR_SET_PDEATHSIG follows the thread that forked, so
            # this brief fork/exec stays on the loop (once per child start), not in an executor.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-P", "-c", _CHILD_COMMAND, str(theirs.fileno()), str(os.getpid()),
                 str(self.lock_fd)],
                pass_fds=(theirs.fileno(), self.lock_fd), env=env, stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._started, self._ready = loop.create_future(), loop.create_future()
        ours.setblocking(False)
        _, self._lines = await loop.create_unix_connection(lambda: Lines(self._on_line), sock=ours)
        # the first child recovers while the intake listens: what it commits has younger IDs
        since = None if restart else time.time() - ID_CLOCK_MARGIN
        self._lines.send({"op": "settings", "settings": encode_settings(self.settings),
                          "restart": restart, "since": since})
        self._note_recent()
        self._out.clear()  # a new child recovers from the spool: nothing older needs sending
        self._out_bytes = 0
        transport = self._lines.transport
        if restart and transport is not None:  # ... but leaves the youngest files for later:
            transport.write(b"".join(line for _, line in self._recent))
        self._dropped = False

    async def start(self) -> None:
        """Start the child and wait until it has started (its settings, spool and suspensions
        are usable), not for its recovery (issue 23): the intake listens meanwhile, its notices
        wait in the socket until the recovery is done (DUR-7: each message is scheduled once)."""
        await self._spawn()
        await self._wait_ready(started=True)
        self._supervisor = asyncio.create_task(self._supervise(), name="delivery-supervisor")

    def recovering(self) -> bool:
        """Is the delivery process still recovering the queue (nothing delivered yet)?"""
        return self._ready is None or not self._ready.done()

    async def _wait_ready(self, started: bool = False) -> None:
        future = self._started if started else self._ready
        assert future is not None and self._lines is not None
        lost = asyncio.ensure_future(self._lines.lost.wait())
        waiters: list[asyncio.Future[Any]] = [future, lost]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not future.done():
            code = await self._reap()
            raise MxrouteError(f"the delivery process exited during start-up (exit code {code})")

    async def _reap(self, timeout: float = 5.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        deadline = self.clock() + timeout
        while proc.poll() is None and self.clock() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        return proc.returncode

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._lines is not None
            await self._lines.lost.wait()
            if self._stopping:
                return
            code = await self._reap()
            for future in self._replies.values():
                if not future.done():
                    future.set_result({})
            now = self.clock()
            while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
                self._restarts.popleft()
            if len(self._restarts) >= MAX_RESTARTS:
                self._fail(f"the delivery process exited (code {code}) {MAX_RESTARTS + 1} "
                           f"times within {RESTART_WINDOW:.0f}s; stopping so that the service "
                           "is restarted")
                return
            self._restarts.append(now)
            self.restarts += 1
            log.error("delivery process exited unexpectedly (code %s); "
                      "restarting it (%d/%d within %.0fs)",
                      code, len(self._restarts), MAX_RESTARTS, RESTART_WINDOW)
            try:
                await self._spawn(restart=True)
                await self._wait_ready()
            except Exception as exc:  # noqa: BLE001 - counted as one more failure on the next turn
                log.error("delivery process restart failed: %s", exc)
                if self._lines is not None:
                    self._lines.lost.set()

    def _fail(self, why: str) -> None:
        log.error("%s", why)
        self._failure = why
        self.failed.set()

    def failure(self) -> str | None:
        return self._failure

    # --- messages ---
    def _on_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.error("delivery process: unreadable message %r", line[:200])
            return
        op = message.get("op")
        if op in ("started", "ready") and self._started is not None and not self._started.done():
            self._started.set_result(None)
        if op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
                log.info("delivery process ready: the queue is recovered")
        elif op in ("snapshot", "reloaded", "stopped"):
            if message.get("data"):
                self._last = message["data"]
            future = self._replies.pop(int(message.get("n", -1)), None)
            if future is not None and not future.done():
                future.set_result(message.get("data") or {})

    def queued(self, meta: MessageMeta) -> None:
        """A message is committed (fsync'd): tell the child, batched per loop turn, never waits;
        with the message when the spool kept it and the socket has room (issue 23)."""
        line = meta.queue_id.encode("ascii") + b"\n"
        self._ids.append(line)
        kept = self.take(meta.queue_id) if self.take is not None else None
        transport = self._lines.transport if self._lines is not None else None
        if kept is not None and transport is not None and \
                transport.get_write_buffer_size() + self._out_bytes < HANDOFF_LIMIT:
            payload = pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)
            line = b"+%s %d\n%s" % (line[:-1], len(payload), payload)
        self._out.append(line)
        self._out_bytes += len(line)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _note_recent(self) -> None:
        """This turn's IDs into ``_recent`` (resent to a restarted child), the old ones out."""
        now = self.clock()
        if self._ids:
            self._recent.append((now, b"".join(self._ids)))
            self._ids.clear()
        while self._recent and self._recent[0][0] < now - SETTLE_SECONDS:
            self._recent.popleft()

    def _flush(self) -> None:
        self._flushing = False
        self._note_recent()
        out, self._out, self._out_bytes = self._out, [], 0
        lines = self._lines
        transport = lines.transport if lines is not None else None
        if lines is None or transport is None or transport.is_closing():
            return  # the child is gone: the next one recovers them from the spool
        # A child still recovering reads them when done (its scan may have listed the spool before).
        if transport.get_write_buffer_size() > PIPE_LIMIT:
            self._dropped = True
            return
        if self._dropped:  # room again: have the child list the spool for what it missed
            self._dropped = False
            lines.send({"op": "rescan"})
        transport.write(b"".join(out))

    async def _ask(self, payload: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        lines = self._lines
        if lines is None or lines.transport is None or lines.transport.is_closing():
            return None
        self._asked += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._asked] = future
        lines.send({**payload, "n": self._asked})
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._replies.pop(self._asked, None)
            return None

    async def reconfigure(self, settings: Settings) -> None:
        self.settings = settings  # a restarted child starts with these
        command = {"op": "settings", "settings": encode_settings(settings)}
        if await self._ask(command, RELOAD_TIMEOUT) is None:
            log.warning("reload: the delivery process did not confirm the new configuration")

    async def snapshot(self) -> dict[str, Any]:
        if self.recovering():  # it reads the queue and answers nothing until done
            return {**self._last, "recovering": 1}
        data = await self._ask({"op": "snapshot"}, ASK_TIMEOUT)
        return data or self._last

    async def stop(self, grace: float) -> dict[str, Any]:
        """Stop the child gracefully (deliveries in flight get ``grace`` s): its last counters."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        # still recovering: it has delivered nothing yet
        if self._ready is None or not self._ready.done():
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
            await self._reap(timeout=3.0)
            return self._last
        self._flush()
        data = await self._ask({"op": "stop", "grace": grace}, grace + 5.0)
        if data:
            self._last = data
        await self._reap(timeout=3.0)
        if self._lines is not None and self._lines.transport is not None:
            self._lines.transport.close()
        return self._last



__all__ = [
    "SETTLE_SECONDS",
    "ChildLink",
    "Lines",
    "LocalLink",
    "decode_settings",
    "encode_settings",
    "handed",
]
