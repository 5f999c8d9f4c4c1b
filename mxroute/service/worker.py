"""The delivery process: queue manager, courier and their resolver (``Delivery``).

``delivery_processes = 1`` (the default): delivery runs in a second process, so intake
(aiosmtpd, spool writes) and delivery (queue, aiosmtplib) each have a core, as Postfix
splits smtpd and qmgr. ``0``: the same ``Delivery`` object runs on the intake's event
loop (``link.LocalLink``); nothing else differs.

The process is a fresh interpreter (``sys.executable -c``, like multiprocessing's
``spawn``), started by ``link.ChildLink`` before any mail is accepted: it inherits no
event loop, thread or lock of the parent, and nothing needs pickling but the settings.
It hears the parent over one AF_UNIX socketpair, one line per message (mxroute/service/link.py).

The spool stays the truth: besides the IDs the parent sends, the start-up recovery scans
the spool, a ``rescan`` follows a dropped ID, and the spool is rescanned every
``RESCAN_SECONDS`` whatever happens. A rescan takes only files unchanged for
``SETTLE_SECONDS`` (a younger one may not be committed yet); the next takes the rest.
Every attempt reads the queue file again, so a message heard about twice is still
delivered once; but a small message the intake hands over with its ID (issue 23) is kept in
memory for its first attempt (``Spool.keep``, counted in the delivery's memory share), if it
is new to the queue and young: sent within HANDED_SECONDS of its queue ID, before any rescan
(``SETTLE_SECONDS``) or recovery may have read the file, while nothing but this process
changes its state (each change drops the copy).

The child dies with the parent: ``PR_SET_PDEATHSIG`` (SIGKILL, Linux) and, everywhere,
end of file on the socket. It holds the parent's spool lock (the inherited descriptor,
checked at start): no second ``serve`` delivers from the spool while it runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mxroute.dns.configured import RESOLVER_SETTINGS, resolver_from_settings
from mxroute.errors import ConfigError, MxrouteError
from mxroute.identity.dkim.sign import DkimSigner
from mxroute.relay.queue.manager import QueueManager, oldest_waiting
from mxroute.relay.queue.operator import Operator
from mxroute.relay.queue.plans import PlanCache
from mxroute.relay.queue.recovery import SNAPSHOT_SECONDS
from mxroute.relay.spool.format import QUEUE_ID, queue_id_time
from mxroute.relay.spool.lock import SpoolInUse, hold_inherited
from mxroute.relay.spool.store import Spool
from mxroute.routing.route import mta_sts_reach
from mxroute.service import collector
from mxroute.service.attempts import AttemptTimer, TimedCourier
from mxroute.service.control import ControlServer
from mxroute.service.link import SETTLE_SECONDS, Lines, decode_settings, handed
from mxroute.service.logsetup import setup_logging
from mxroute.service.malloc import fix_mmap_threshold
from mxroute.settings import Settings

if TYPE_CHECKING:
    from mxroute.relay.fleet.share import FleetState

log = logging.getLogger(__name__)

RESCAN_SECONDS = 30.0  # the spool is listed this often for messages whose notice never arrived
HANDED_SECONDS = SETTLE_SECONDS / 2  # a handed message older than this is read from its file


class Delivery:
    """Queue manager, courier and resolver: what runs in the delivery process."""

    def __init__(self, settings: Settings, spool: Spool) -> None:
        from mxroute.relay.courier.courier import Courier
        from mxroute.relay.courier.upstream import warn_unusable_secrets
        from mxroute.relay.fleet.connection import SharedStateError
        from mxroute.relay.fleet.limiter import shared_limiter
        from mxroute.relay.limiter import Limiter, LocalLimiter
        from mxroute.tls.mtasts.store import STORE_NAME, MtaSts

        warn_unusable_secrets(settings.routes)  # issue 16: said once at start, not per message
        self.settings = settings
        self.spool = spool
        self.resolver = resolver_from_settings(settings)
        # TLS-5: the policies are kept across restarts
        self.mta_sts = MtaSts(mta_sts_reach(settings), self.resolver, store=spool.root / STORE_NAME)
        # issue 18: the counts of traffic shaping, in this process; issue 19: with shared_state,
        # the fleet's (local limits while Redis is away)
        try:
            self.fleet = shared_limiter(settings)
        except SharedStateError as exc:
            raise ConfigError(str(exc)) from None
        self.limiter: Limiter = self.fleet if self.fleet is not None else LocalLimiter()
        self.courier = Courier(settings, mta_sts=self.mta_sts, limiter=self.limiter)
        if self.fleet is not None:  # another node waits for a slot: our idle ones close
            self.fleet.on_wanted = self.courier.pool.close_idle
        self.timer = AttemptTimer()
        courier: Any = self.courier
        if settings.metrics_listen:
            courier = TimedCourier(self.courier, self.timer.observe)
        self.signer = _dsn_signer(settings, None)
        self.queue = QueueManager(settings, spool, self.resolver, courier, plans=PlanCache(),
                                  signer=self.signer)
        self.runner: asyncio.Task[None] | None = None
        self.snapshots: asyncio.Task[None] | None = None  # issue 23: spool/schedule
        # `mxroute queue` acting on this queue (issue 15 A): control.sock in the spool
        operator = Operator(spool, self.queue.notices, self.queue,
                            forget_hosts=self.queue.courier.forget_unreachable)
        self.control = ControlServer(spool.root, operator, self.courier.hosts)
        # issue 19: suspensions, host health and the queue view shared by a fleet
        self.fleet_state = _fleet_state(settings, self, operator)

    def recover(self, settle: float = 0.0, since: float | None = None) -> int:
        """The queue's start-up recovery; ``settle``, ``since``: see ``QueueManager.recover``."""
        return self.queue.recover(settle, since)

    async def start(self) -> None:
        """Deliver, and answer ``mxroute queue`` on the control socket."""
        if self.fleet is not None:  # registers this node; Redis away: local limits, logged
            await self.fleet.start()
        self.runner = asyncio.create_task(self.queue.run(), name="queue")
        self.snapshots = asyncio.create_task(self._snapshots(), name="schedule-snapshot")
        if self.fleet_state is not None:
            self.fleet_state.start()
        try:
            await self.control.start()
        except OSError as exc:  # e.g. a spool path too long for a Unix socket: tools go offline
            log.error("cannot open the control socket %s: %s; `mxroute queue` cannot act on "
                      "this serve", self.control.path, exc.strerror or exc)

    async def _snapshots(self) -> None:
        """Write the schedule snapshot every ``SNAPSHOT_SECONDS`` (and ``stop`` at the end)."""
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            await self.save_schedule()

    async def save_schedule(self) -> None:
        """The queue's schedule snapshot (issue 23); a failure is logged, never fatal: the next
        start then reads the queue files the snapshot does not vouch for."""
        try:
            count = await self.queue.save_schedule()
        except OSError as exc:
            log.error("cannot write the schedule snapshot: %s", exc.strerror or exc)
        except Exception:  # a bug: say where, delivery goes on
            log.exception("cannot write the schedule snapshot")
        else:
            log.debug("schedule snapshot: %d message(s)", count)

    def failure(self) -> str | None:
        """Why delivery stopped on its own (the queue manager must never die silently), or None."""
        if self.runner is not None and self.runner.done():
            exc = None if self.runner.cancelled() else self.runner.exception()
            return f"queue manager stopped: {exc!r}"
        return None

    def reconfigure(self, new: Settings) -> None:
        from mxroute.relay.courier.upstream import warn_unusable_secrets

        old = self.settings
        warn_unusable_secrets(new.routes)
        self.queue.reconfigure(new)
        self.courier.settings, self.mta_sts.reach = new, mta_sts_reach(new)
        self.signer = self.queue.notices.signer = _dsn_signer(new, self.signer)
        # no answer of the old servers is kept
        if any(getattr(new, name) != getattr(old, name) for name in RESOLVER_SETTINGS):
            try:
                fresh = resolver_from_settings(new)
            except ConfigError as exc:  # a zone file changed since the parent read it
                log.error("reload: %s; delivery keeps the previous resolver", exc.message)
            else:
                fresh.stats = self.resolver.stats  # the counters go on (metrics)
                self.resolver = self.queue.resolver = self.mta_sts.resolver = fresh
        self.settings = new

    def snapshot(self) -> dict[str, Any]:
        """The counters and sizes the parent reports (STATUS=, metrics, the last log line)."""
        dns = self.resolver.stats
        return {"stats": dict(self.queue.stats), "sizes": self.queue.sizes(),
                "courier": {k: v for k, v in self.courier.stats.items()
                            if isinstance(v, int | float)},
                "dns": {"queries": dns.queries, "hits": dns.hits, "coalesced": dns.coalesced},
                "mta_sts": self.mta_sts.snapshot(), "attempts": self.timer.snapshot(),
                "dkim": self.signer.stats.to_json(), "sites": self.courier.sites.numbers.top(),
                "oldest": oldest_waiting(self.queue),
                "memory": {"used": self.queue.memory.budget.used,
                           "limit": self.queue.memory.budget.limit,
                           "peak": self.queue.memory.budget.peak},
                "fleet": None if self.fleet is None else {
                    **self.fleet.stats, "shared": int(self.fleet.shared),
                    "nodes": self.fleet.nodes},
                "fleet_state": {} if self.fleet_state is None else dict(self.fleet_state.stats)}

    async def stop(self, grace: float) -> None:
        await self.control.close()
        if self.fleet_state is not None:
            await self.fleet_state.stop()
        await self.queue.stop(grace)
        if self.runner is not None:
            self.runner.cancel()
        if self.snapshots is not None:
            self.snapshots.cancel()
            await self.save_schedule()  # nothing in flight now: a clean stop's snapshot
        try:
            await asyncio.wait_for(self.courier.close(), timeout=2.0)
        except (TimeoutError, OSError):
            pass
        if self.fleet is not None:  # after the courier: its connections' leases go back
            await self.fleet.close()


def _fleet_state(settings: Settings, delivery: Delivery,
                 operator: Operator) -> FleetState | None:
    """The node's ``FleetState`` (issue 19) with ``shared_state``, else None (its password file
    was read by the limiter just before: a problem with it has stopped the start)."""
    if not settings.shared_state:
        return None
    from mxroute.hostdefaults import host_name
    from mxroute.relay.fleet.connection import from_settings
    from mxroute.relay.fleet.records import node_name
    from mxroute.relay.fleet.share import FleetState

    redis = from_settings(settings)
    assert redis is not None
    host, spool = host_name(), str(delivery.spool.root)
    fleet = FleetState(redis, node_name(host, spool), host, spool, delivery.courier.hosts,
                       operator, delivery.queue.sizes)
    fleet.attach(delivery.courier.sites)
    return fleet


def _dsn_signer(settings: Settings, old: DkimSigner | None) -> DkimSigner:
    """The keys that sign this process's DSNs and delay notices (issue 14 §1).

    The intake process has checked them (start, SIGHUP) before these settings arrive; a key that
    cannot be read here all the same (gone since) is logged and its domain's notices go unsigned.
    """
    signer, warnings = DkimSigner.load(settings, stats=old.stats if old else None,
                                       tolerant=True)
    for warning in warnings:
        if "is not signed with it" in warning:
            log.error("delivery: %s", warning)
    return signer


def _die_with_parent(ppid: int) -> None:
    """SIGKILL when the parent dies (Linux PR_SET_PDEATHSIG); the socket's EOF covers the rest."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != ppid:  # the parent died before the prctl
        os._exit(1)


def child_main() -> None:
    """Entry of the delivery process: ``child_main`` FD PPID LOCK_FD (started by ``ChildLink``).

    LOCK_FD, the spool lock inherited from the parent, stays open until this process ends.
    """
    fd, ppid, lock_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    _die_with_parent(ppid)
    fix_mmap_threshold()  # issue 22
    collector.tune()  # issue 23
    try:
        hold_inherited(lock_fd)
    except SpoolInUse as exc:
        print(f"mxroute: {exc.message}", file=sys.stderr)
        os._exit(exc.exit_code)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the process group: the parent decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload comes over the socket
    sock = socket.socket(fileno=fd)
    first = b""
    while b"\n" not in first:  # the settings line; what follows may be a frame's bytes
        chunk = sock.recv(65536)
        if not chunk:
            os._exit(0)
        first += chunk
    line, _, rest = first.partition(b"\n")
    hello = json.loads(line)
    settings = decode_settings(hello["settings"])
    setup_logging(settings.log_level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    code = 0
    try:
        since = hello.get("since")
        code = int(runner(_child(settings, sock, rest, bool(hello.get("restart")),
                                 None if since is None else float(since))))
    except MxrouteError as exc:  # e.g. a damaged suspended.json: one line naming it
        log.error("delivery process cannot start: %s", exc.message)
        code = exc.exit_code or 70
    except Exception:
        log.exception("delivery process failed")
        code = 70
    finally:
        logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


async def _child(settings: Settings, sock: socket.socket, rest: bytes, restart: bool,
                 since: float | None) -> int:
    """``restart``: the intake is already taking mail (a restarted delivery process): its newest
    files may not be committed yet, so recovery leaves them for ``SETTLE_SECONDS`` (issue 21).
    ``since`` (the first start, issue 23): the intake listens once this process says
    ``started`` (its configuration is usable), during the recovery; the files it commits
    meanwhile, those with an ID made at or after ``since``, are left to its notices (the
    timetable keeps one entry per ID), the backstop ``SETTLE_SECONDS`` later."""
    loop = asyncio.get_running_loop()
    spool = Spool(settings.spool_dir)
    delivery = Delivery(settings, spool)
    sock.sendall(b'{"op":"started"}\n')  # blocking still: the intake may listen now
    delivery.recover(SETTLE_SECONDS if restart or since is not None else 0.0, since)
    collector.freeze()  # what start-up and recovery made stays: out of the collector's way
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
            new = decode_settings(message["settings"])
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
    spool.budget = delivery.queue.memory.budget  # what it keeps counts in its share (issue 22)
    _, lines = await loop.create_unix_connection(
        lambda: Lines(on_line, functools.partial(_handed, delivery, on_line)), sock=sock)
    if rest:
        lines.data_received(rest)

    def on_sigterm() -> None:
        grace[0] = 4.0
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    await delivery.start()
    lines.send({"op": "ready"})

    helpers = [asyncio.create_task(_rescan(delivery, spool, rescan_now), name="rescan")]
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


def _handed(delivery: Delivery, on_line: Callable[[bytes], None], name: bytes,
            payload: bytes) -> None:
    """A message handed over with its ID (issue 23): kept for its first attempt if new to the
    queue and young (see the module's docstring); one that does not unpickle goes as its ID."""
    try:
        meta, message = handed(name, payload)
    except Exception as exc:  # noqa: BLE001 - the file is read instead
        log.error("delivery process: unreadable handed message %r: %s", name[:64], exc)
        on_line(name)
        return
    queue_id = meta.queue_id
    born = queue_id_time(queue_id)
    if born is not None and 0 <= time.time() - born < HANDED_SECONDS \
            and delivery.queue.unknown([queue_id]):
        delivery.spool.keep(meta, message)
    delivery.queue.add_id(queue_id)


async def _rescan(delivery: Delivery, spool: Spool, now: asyncio.Event) -> None:
    """List the spool every RESCAN_SECONDS, or at once when ``now`` is set, for missed IDs."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await asyncio.wait_for(now.wait(), RESCAN_SECONDS)
        except TimeoutError:
            pass
        now.clear()
        try:
            ids = delivery.queue.unknown(await loop.run_in_executor(None, spool.ids))
            # DUR-3: not a file younger than SETTLE_SECONDS: it may be between its rename and
            # the directory fsync, and removed again (the client told 4xx) if that fsync fails.
            ids = await loop.run_in_executor(None, spool.settled, ids, SETTLE_SECONDS)
        except OSError as exc:
            log.error("cannot list the spool: %s", exc)
            continue
        missed = delivery.queue.rescan(ids)
        if missed:
            log.info("rescan: %d message(s) found in the spool without a notice from intake",
                     missed)


__all__ = ["Delivery", "child_main"]
