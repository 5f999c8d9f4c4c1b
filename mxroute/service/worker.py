"""The delivery side of ``serve``: queue manager, courier and their resolver, and how intake reaches it.

``delivery_processes = 1`` (the default): delivery runs in a second process, so intake
(aiosmtpd, spool writes) and delivery (queue, aiosmtplib) each have a core, as Postfix
splits smtpd and qmgr. ``0``: the same ``Delivery`` object runs on the intake's event
loop (``LocalLink``), the pipe replaced by direct calls; nothing else differs.

The process is a fresh interpreter (``sys.executable -c``, like multiprocessing's
``spawn``), started before any mail is accepted: it inherits no event loop, thread or
lock of the parent, and nothing needs pickling but the settings. It talks to the parent
over one AF_UNIX socketpair, one line per message:

- parent → child: a queue ID (a message just committed to the spool, fsync'd), or a JSON
  command: ``settings`` (start and SIGHUP), ``rescan``, ``snapshot``, ``stop``;
- child → parent: JSON ``ready`` (recovery done), ``reloaded``, ``snapshot``, ``stopped``.

The spool stays the truth: an ID that cannot be sent (the child is restarting, the pipe
is full) is dropped, and the child finds the message anyway: its start-up recovery scans
the spool, a ``rescan`` follows a drop, and the spool is rescanned every
``RESCAN_SECONDS`` whatever happens. A rescan takes only files unchanged for
``SETTLE_SECONDS`` (a younger one may not be committed yet); the next takes the rest. Every attempt reads the queue file again, so a
message heard about twice is still delivered once.

The child dies with the parent: ``PR_SET_PDEATHSIG`` (SIGKILL, Linux) and, everywhere,
end of file on the socket. A child that dies is restarted, at most ``MAX_RESTARTS`` per
``RESTART_WINDOW`` seconds; beyond that the parent stops (exit 70) so that systemd
restarts the service: it never goes on accepting mail it does not deliver.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from mxroute.relay.queue.manager import QueueManager
from mxroute.relay.queue.plans import PlanCache
from mxroute.relay.spool.format import QUEUE_ID, MessageMeta
from mxroute.relay.spool.store import Spool
from mxroute.routing.route import mta_sts_reach, resolver_from_settings
from mxroute.settings import Settings

log = logging.getLogger(__name__)

# Seconds: from a local sink's milliseconds to a slow remote MX's minutes (RFC 5321 §4.5.3.2 timeouts).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_DNS = ("dns_servers", "dns_timeout", "dns_attempts", "dns_cache_size", "dns_trust_ad")
RESCAN_SECONDS = 30.0  # the spool is listed this often for messages whose notice never arrived
SETTLE_SECONDS = 10.0  # a rescan leaves files younger than this to the next one (maybe not yet committed)
MAX_RESTARTS = 5  # delivery process restarts allowed per RESTART_WINDOW seconds
RESTART_WINDOW = 60.0
PIPE_LIMIT = 4 << 20  # bytes of IDs buffered for a busy child before they are dropped (and rescanned)
ASK_TIMEOUT = 2.0  # seconds for a snapshot answer
RELOAD_TIMEOUT = 10.0
_CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class AttemptTimer:
    """Delivery-attempt durations in cumulative buckets (the metrics histogram, without prometheus-client)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(ATTEMPT_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(ATTEMPT_BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class TimedCourier:
    """A courier whose ``deliver()`` calls are timed (only when metrics are on)."""

    def __init__(self, courier: Any, observe: Callable[[float], None]) -> None:
        self.courier = courier
        self._observe = observe

    async def deliver(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await self.courier.deliver(*args, **kwargs)
        finally:
            self._observe(time.monotonic() - started)

    async def close(self) -> None:
        await self.courier.close()

    def __getattr__(self, name: str) -> Any:  # stats, settings, forget_unreachable, ...
        return getattr(self.courier, name)


class Delivery:
    """Queue manager, courier and resolver: what runs in the delivery process."""

    def __init__(self, settings: Settings, spool: Spool) -> None:
        from mxroute.relay.courier.courier import Courier
        from mxroute.tls.mtasts.store import STORE_NAME, MtaSts

        self.settings = settings
        self.spool = spool
        self.resolver = resolver_from_settings(settings)
        self.mta_sts = MtaSts(mta_sts_reach(settings), self.resolver, store=spool.root / STORE_NAME)  # TLS-5: kept across restarts
        self.courier = Courier(settings, mta_sts=self.mta_sts)
        self.timer = AttemptTimer()
        courier: Any = TimedCourier(self.courier, self.timer.observe) if settings.metrics_listen else self.courier
        self.queue = QueueManager(settings, spool, self.resolver, courier, plans=PlanCache())
        self.runner: asyncio.Task[None] | None = None

    def recover(self) -> int:
        return self.queue.recover()

    def start(self) -> None:
        self.runner = asyncio.create_task(self.queue.run(), name="queue")

    def failure(self) -> str | None:
        """Why delivery stopped on its own (the queue manager must never die silently), or None."""
        if self.runner is not None and self.runner.done():
            exc = None if self.runner.cancelled() else self.runner.exception()
            return f"queue manager stopped: {exc!r}"
        return None

    def reconfigure(self, new: Settings) -> None:
        old = self.settings
        self.queue.reconfigure(new)
        self.courier.settings, self.mta_sts.reach = new, mta_sts_reach(new)
        if any(getattr(new, name) != getattr(old, name) for name in _DNS):  # no answer of the old servers kept
            fresh = resolver_from_settings(new)
            fresh.stats = self.resolver.stats  # the counters go on (metrics)
            self.resolver = self.queue.resolver = self.mta_sts.resolver = fresh
        self.settings = new

    def snapshot(self) -> dict[str, Any]:
        """The counters and sizes the parent reports (STATUS=, metrics, the last log line)."""
        dns = self.resolver.stats
        return {"stats": dict(self.queue.stats), "sizes": self.queue.sizes(),
                "courier": {k: v for k, v in self.courier.stats.items() if isinstance(v, int | float)},
                "dns": {"queries": dns.queries, "hits": dns.hits, "coalesced": dns.coalesced},
                "mta_sts": self.mta_sts.snapshot(), "attempts": self.timer.snapshot()}

    async def stop(self, grace: float) -> None:
        await self.queue.stop(grace)
        if self.runner is not None:
            self.runner.cancel()
        try:
            await asyncio.wait_for(self.courier.close(), timeout=2.0)
        except (TimeoutError, OSError):
            pass


# --- the parent's view: one interface, two implementations ---

class LocalLink:
    """``delivery_processes = 0``: the delivery side on this event loop, called directly."""

    def __init__(self, settings: Settings, spool: Spool) -> None:
        self.delivery = Delivery(settings, spool)
        self.failed = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.delivery.recover()
        self.delivery.start()
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


class _Lines(asyncio.Protocol):
    """One line per message over the socketpair, both ways."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self.on_line = on_line
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if line:
                self.on_line(line)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def send(self, payload: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")


def _pickled(settings: Settings) -> str:
    return base64.b64encode(pickle.dumps(settings)).decode("ascii")


class ChildLink:
    """``delivery_processes = 1``: the delivery side in a child process, supervised and restarted."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.failed = asyncio.Event()
        self._failure: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: _Lines | None = None
        self._ready: asyncio.Future[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._asked = 0
        self._ids: list[bytes] = []
        self._flushing = False
        self._dropped = False
        self._stopping = False
        self._restarts: deque[float] = deque()
        self._last: dict[str, Any] = {}
        self._supervisor: asyncio.Task[None] | None = None

    # --- process ---
    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
        try:
            # From the loop's (main) thread: PR_SET_PDEATHSIG follows the thread that forked, so this
            # brief fork/exec stays on the loop (once per child start) instead of going to an executor.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-c", "from mxroute.service.worker import child_main; child_main()",
                 str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._ready = loop.create_future()
        ours.setblocking(False)
        _, self._lines = await loop.create_unix_connection(lambda: _Lines(self._on_line), sock=ours)
        self._lines.send({"op": "settings", "settings": _pickled(self.settings)})
        self._ids.clear()  # a new child recovers from the spool: nothing older needs sending
        self._dropped = False

    async def start(self) -> None:
        """Start the child and wait for its recovery to finish (READY=1 waits for this)."""
        await self._spawn()
        await self._wait_ready()
        self._supervisor = asyncio.create_task(self._supervise(), name="delivery-supervisor")

    async def _wait_ready(self) -> None:
        assert self._ready is not None and self._lines is not None
        lost = asyncio.ensure_future(self._lines.lost.wait())
        waiters: list[asyncio.Future[Any]] = [self._ready, lost]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not self._ready.done():
            code = await self._reap()
            from mxroute.errors import MxrouteError

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
                self._fail(f"the delivery process exited (code {code}) {MAX_RESTARTS + 1} times within "
                           f"{RESTART_WINDOW:.0f}s; stopping so that the service is restarted")
                return
            self._restarts.append(now)
            log.error("delivery process exited unexpectedly (code %s); restarting it (%d/%d within %.0fs)",
                      code, len(self._restarts), MAX_RESTARTS, RESTART_WINDOW)
            try:
                await self._spawn()
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
        if op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif op in ("snapshot", "reloaded", "stopped"):
            if message.get("data"):
                self._last = message["data"]
            future = self._replies.pop(int(message.get("n", -1)), None)
            if future is not None and not future.done():
                future.set_result(message.get("data") or {})

    def queued(self, meta: MessageMeta) -> None:
        """A message is committed (fsync'd): tell the child, batched once per loop turn, never blocking."""
        self._ids.append(meta.queue_id.encode("ascii") + b"\n")
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        lines = self._lines
        transport = lines.transport if lines is not None else None
        if lines is None or transport is None or transport.is_closing():
            self._ids.clear()  # the child is gone: the next one recovers them from the spool
            return
        # A child still recovering reads them when done (its scan may have listed the spool before).
        if transport.get_write_buffer_size() > PIPE_LIMIT:
            self._ids.clear()
            self._dropped = True
            return
        if self._dropped:  # room again: have the child list the spool for what it missed
            self._dropped = False
            lines.send({"op": "rescan"})
        transport.write(b"".join(self._ids))
        self._ids.clear()

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
        if await self._ask({"op": "settings", "settings": _pickled(settings)}, RELOAD_TIMEOUT) is None:
            log.warning("reload: the delivery process did not confirm the new configuration")

    async def snapshot(self) -> dict[str, Any]:
        data = await self._ask({"op": "snapshot"}, ASK_TIMEOUT)
        return data or self._last

    async def stop(self, grace: float) -> dict[str, Any]:
        """Stop the child gracefully (deliveries in flight get ``grace`` seconds); its last counters."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._ready is None or not self._ready.done():  # still recovering: it has delivered nothing yet
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


# --- the child ---

def _die_with_parent(ppid: int) -> None:
    """SIGKILL when the parent dies (Linux PR_SET_PDEATHSIG); the socket's EOF covers other systems."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != ppid:  # the parent died before the prctl
        os._exit(1)


def child_main() -> None:
    """Entry of the delivery process: ``child_main`` FD PPID (started by ``ChildLink``)."""
    fd, ppid = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the process group: the parent decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload comes over the socket
    sock = socket.socket(fileno=fd)
    first = b""
    while not first.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            os._exit(0)
        first += chunk
    line, _, rest = first.partition(b"\n")
    settings: Settings = pickle.loads(base64.b64decode(json.loads(line)["settings"]))
    from mxroute.service.daemon import setup_logging

    setup_logging(settings.log_level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    code = 0
    try:
        code = int(runner(_child(settings, sock, rest)))
    except Exception:
        log.exception("delivery process failed")
        code = 70
    finally:
        logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


async def _child(settings: Settings, sock: socket.socket, rest: bytes) -> int:
    loop = asyncio.get_running_loop()
    spool = Spool(settings.spool_dir)
    delivery = Delivery(settings, spool)
    delivery.recover()
    stop = asyncio.Event()
    grace = [0.0]  # EOF (the parent is gone): stop at once
    reply_to: list[int] = []
    rescan_now = asyncio.Event()

    def on_line(line: bytes) -> None:
        if line[:1] != b"{":
            queue_id = line.decode("ascii", "replace")
            if QUEUE_ID.match(queue_id):
                delivery.queue.add_id(queue_id)
            return
        message = json.loads(line)
        op = message.get("op")
        if op == "settings":
            new = pickle.loads(base64.b64decode(message["settings"]))
            delivery.reconfigure(new)
            if new.log_level != logging.getLevelName(logging.getLogger().level):
                logging.getLogger().setLevel(new.log_level)
            lines.send({"op": "reloaded", "n": message.get("n", -1)})
        elif op == "snapshot":
            lines.send({"op": "snapshot", "n": message.get("n", -1), "data": delivery.snapshot()})
        elif op == "rescan":
            rescan_now.set()
        elif op == "stop":
            grace[0] = float(message.get("grace", 0.0))
            reply_to.append(int(message.get("n", -1)))
            stop.set()

    sock.setblocking(False)
    _, lines = await loop.create_unix_connection(lambda: _Lines(on_line), sock=sock)
    if rest:
        lines.data_received(rest)

    def on_sigterm() -> None:
        grace[0] = 4.0
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    delivery.start()
    lines.send({"op": "ready"})

    async def rescan() -> None:
        while True:
            try:
                await asyncio.wait_for(rescan_now.wait(), RESCAN_SECONDS)
            except TimeoutError:
                pass
            rescan_now.clear()
            try:
                ids = delivery.queue.unknown(await loop.run_in_executor(None, spool.ids))
                # DUR-3: not a file younger than SETTLE_SECONDS: it may be between its rename and the
                # directory fsync, and removed again (the client told 4xx) if that fsync fails.
                ids = await loop.run_in_executor(None, spool.settled, ids, SETTLE_SECONDS)
            except OSError as exc:
                log.error("cannot list the spool: %s", exc)
                continue
            missed = delivery.queue.rescan(ids)
            if missed:
                log.info("rescan: %d message(s) found in the spool without a notice from intake", missed)

    helpers = [asyncio.create_task(rescan(), name="rescan")]
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lines.lost.wait())]
    assert delivery.runner is not None
    waits.append(delivery.runner)  # type: ignore[arg-type]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    failure = delivery.failure()
    if failure:
        log.error("%s", failure)
    for task in helpers:
        task.cancel()
    await delivery.stop(grace[0])
    data = delivery.snapshot()
    for n in reply_to or [-1]:
        lines.send({"op": "stopped", "n": n, "data": data})
    for future in waits[:2]:
        future.cancel()
    if lines.transport is not None:
        lines.transport.close()
    await asyncio.sleep(0)
    spool.close()
    return 70 if failure else 0


def link_for(settings: Settings, spool: Spool) -> LocalLink | ChildLink:
    return ChildLink(settings) if settings.delivery_processes else LocalLink(settings, spool)


__all__ = ["ATTEMPT_BUCKETS", "ChildLink", "Delivery", "LocalLink", "child_main", "link_for"]
