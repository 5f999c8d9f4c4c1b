"""``mxroute serve``: wire spool, queue manager, courier and intake together; run, reload, stop.

Two processes (``delivery_processes = 1``, the default; mxroute/service/worker.py): this
one (what systemd runs and hears from) holds the listeners, the intake (aiosmtpd,
spool writes with their fsync before the 250) and the identity self-check, and
tells the delivery process each committed queue ID; the delivery process runs
recovery, the queue manager, the courier and bounces. ``0``: the same parts on one
event loop, the ID handed over by a direct call.

Start-up: prepare the spool, take its lock (``serve.lock``, mxroute/relay/spool/lock.py: a
second ``serve`` on the spool exits 75), remove stale temporary files (DUR-5), start the
delivery side and wait for its recovery (DUR-7), then listen (or take the sockets
systemd passed, LISTEN_FDS), then ``READY=1``. One log line per event on stdout
(journald; both processes write there); under journald each line carries its
syslog priority. A delivery process that dies is restarted (bounded); past the
bound this process exits 70 so that systemd restarts the service.

SIGHUP re-reads the configuration (same file and environment as at start) and
applies it without dropping a connection or a message; the settings in
``RESTART_ONLY`` keep their old value with a warning; a configuration that does
not load is logged and the running one kept; the delivery process gets the new
settings over its socket and confirms them before systemd hears ``RELOADING=1`` then
``READY=1`` (systemd.service(5), Type=notify-reload protocol).

``STATUS=`` tells systemd the queue and connection counts, at most every
``STATUS_INTERVAL`` seconds and only when they changed.

SIGTERM/SIGINT: ``STOPPING=1``, stop accepting, let stores in progress finish
(their 250 or 4xx), 421 to other sessions, then tell the delivery process to give
deliveries a bounded time and exit, exit 0
(RFC 5321 §3.8; DUR-8). The whole stop stays under the benchmark's 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

from mxroute.dns.configured import RESOLVER_SETTINGS, resolver_from_settings
from mxroute.dns.resolver import Resolver
from mxroute.errors import EX_OK, EX_OSERR, EX_SOFTWARE, ConfigError, MxrouteError
from mxroute.relay.intake.handler import Intake
from mxroute.relay.spool.lock import SpoolLock
from mxroute.relay.spool.store import Spool
from mxroute.service import sdnotify
from mxroute.service.link import ChildLink, LocalLink
from mxroute.service.logsetup import flush_log, setup_logging
from mxroute.service.malloc import fix_mmap_threshold
from mxroute.service.worker import Delivery
from mxroute.settings import RESTART_ONLY, Settings

log = logging.getLogger(__name__)

INTAKE_GRACE = 3.0  # seconds for DATA being stored to reach its fsync and reply
# seconds for deliveries in flight to finish before they are cancelled (left queued)
DELIVERY_GRACE = 4.0
STATUS_INTERVAL = 5.0  # at most one STATUS= update per this many seconds
# Bound or opened once at start: a reload keeps the old value and says so.

Loader = Callable[[], Settings]


def serve(settings: Settings, reload: Loader | None = None) -> int:
    """Run the relay until SIGTERM; the exit code for ``mxroute serve``.

    ``reload`` loads the settings again on SIGHUP (the command line's ``--config``
    and ``--dns``); by default the same file and environment as ``load_settings()``.
    """
    os.umask(0o077)  # DUR-3, issue 21: every file serve makes is 0600, every directory 0700
    setup_logging(settings.log_level)
    from mxroute.tls.files import file_warnings

    for warning in file_warnings(settings.tls_cert_file, settings.tls_key_file):
        log.warning("%s", warning)  # issue 21: advice, as check-config's
    fix_mmap_threshold()  # issue 22: large buffers from mmap, returned when freed
    if reload is None:
        from mxroute.settings import load_settings

        reload = load_settings
    try:
        import uvloop  # optional: faster event loop when installed

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return int(runner(_main(settings, reload)))
    except MxrouteError as exc:
        log.error("cannot start: %s", exc.message)
        print(f"mxroute: {exc.message}", file=sys.stderr)
        return exc.exit_code


async def _listen(intake: Intake, settings: Settings) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    factory = intake.factory()
    servers = []
    inherited = sdnotify.listen_fds()
    if inherited:  # systemd socket activation: `listen` is not used
        for sock in inherited:
            servers.append(await loop.create_server(factory, sock=sock, backlog=1024))
            log.info("listening on %s (socket activation)", _address(sock.getsockname()))
        return servers
    for listener in settings.listeners():
        host, port = listener.host, listener.port
        try:
            if listener.implicit_tls:  # smtps:// (RFC 8314 §3.3): TLS, then the greeting
                server = await loop.create_server(
                    intake.factory(implicit_tls=True), host, port, reuse_address=True,
                    backlog=1024, ssl=intake.listener_tls(),
                    ssl_handshake_timeout=min(60.0, settings.command_timeout))
            else:
                server = await loop.create_server(factory, host, port, reuse_address=True,
                                                  backlog=1024)
        except OSError as exc:
            for server in servers:
                server.close()
            raise MxrouteError(f"cannot listen on {listener}: {exc.strerror}",
                               code=421) from None
        servers.append(server)
        sockets = server.sockets
        where = _address(sockets[0].getsockname()) if sockets else f"{host}:{port}"
        log.info("listening on %s%s", where,
                 " (implicit TLS, RFC 8314)" if listener.implicit_tls else "")
    return servers


def _address(name: Any) -> str:
    if isinstance(name, tuple) and len(name) >= 2:
        return f"[{name[0]}]:{name[1]}" if ":" in str(name[0]) else f"{name[0]}:{name[1]}"
    return str(name)


class Relay:
    """The running parts, and what SIGHUP and STATUS= do with them."""

    def __init__(self, settings: Settings, loader: Loader, resolver: Resolver,
                 link: LocalLink | ChildLink, intake: Intake) -> None:
        self.settings = settings
        self.loader = loader
        # resolver: the intake's (sender check, self-check)
        self.resolver, self.link, self.intake = resolver, link, intake
        self.hangup = asyncio.Event()
        self.reloads = 0
        self.sizes: dict[str, int] = {}

    # --- STATUS= ---
    async def status(self) -> str:
        recovering = False
        try:
            snapshot = await self.link.snapshot()
            self.sizes = snapshot.get("sizes", self.sizes)
            recovering = bool(snapshot.get("recovering"))
        except Exception:  # a status line is never worth stopping the relay for
            log.exception("cannot compute STATUS")
        if recovering:  # issue 23: taking mail while the delivery process reads the queue
            return f"recovering the queue; {len(self.intake.sessions)} connections"
        sizes = self.sizes
        active = sizes.get("active", 0) + sizes.get("due", 0)
        return (f"queue: {active} active, {sizes.get('deferred', 0)} deferred; "
                f"{len(self.intake.sessions)} connections")

    async def report_status(self) -> None:
        """STATUS= when it changed, at most every STATUS_INTERVAL seconds (never raises)."""
        last = None
        while True:
            text = await self.status()
            if text != last:
                sdnotify.notify(f"STATUS={text}")
                last = text
            await asyncio.sleep(STATUS_INTERVAL)

    # --- SIGHUP ---
    async def reload_on_hangup(self) -> None:
        """One reload per SIGHUP burst: signals arriving during a reload make one more."""
        while True:
            await self.hangup.wait()
            self.hangup.clear()
            sdnotify.reloading()
            try:
                await self.reload()
            except Exception:  # keep serving on the old settings whatever went wrong
                log.exception("reload failed; still running with the previous configuration")
            flush_log()  # the reload's lines are out when `systemctl reload` returns
            sdnotify.notify(f"READY=1\nSTATUS={await self.status()}")

    async def reload(self) -> bool:
        """Re-read the configuration and apply it to both processes.

        False (and nothing changed) when it is bad.
        """
        log.info("reload: re-reading the configuration (SIGHUP)")
        loop = asyncio.get_running_loop()
        try:  # off the loop: the file, and helo_name's default (getaddrinfo) may ask DNS
            new = await loop.run_in_executor(None, self.loader)
        except ConfigError as exc:
            log.error("reload failed: %s; still running with the previous configuration",
                      exc.message)
            return False
        old = self.settings
        changed = [name for name in type(new).model_fields
                   if getattr(new, name) != getattr(old, name)]
        kept = [name for name in changed if name in RESTART_ONLY]
        if kept:
            log.warning("reload: %s changed but %s a restart (systemctl restart mxroute); "
                        "keeping the running value until then",
                        ", ".join(kept), "needs" if len(kept) == 1 else "need")
            new = new.model_copy(update={name: getattr(old, name) for name in kept})
        # a fresh resolver when a dns_* setting changed: no answer of the old servers is kept
        dns_changed = any(name in changed for name in RESOLVER_SETTINGS)
        try:
            # reads the zone files (a new resolver), the certificate and credentials files
            resolver = resolver_from_settings(new) if dns_changed else None
            self.intake.reconfigure(new, resolver)
        except ConfigError as exc:
            log.error("reload failed: %s; still running with the previous configuration",
                      exc.message)
            return False
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("reload failed: %s; still running with the previous configuration", exc)
            return False
        await self.link.reconfigure(new)  # queue, courier, the delivery resolver
        if resolver is not None:
            self.resolver = resolver
        # SPF-10/12: the new identity
        if any(name in changed for name in ("egress_ips", "helo_name", "dkim_keys",
                                            *RESOLVER_SETTINGS)):
            from mxroute.identity import helo
            from mxroute.identity.selfcheck import watch

            self.intake.on_queued, self.intake.on_author = watch(new, self.resolver,
                                                                 self.link.queued)
            if any(name in changed for name in ("egress_ips", "helo_name", *RESOLVER_SETTINGS)):
                helo.watch(new, self.resolver)  # issue 15 C2
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level)
        self.settings = new
        self.reloads += 1
        applied = [name for name in changed if name not in kept]
        log.info("reload done: %s",
                 f"applied {', '.join(applied)}" if applied else "no setting changed")
        return True


async def _main(settings: Settings, loader: Loader) -> int:
    loop = asyncio.get_running_loop()
    # a small message is kept for its first attempt: here, or handed to the delivery process
    spool = Spool(settings.spool_dir)
    spool.prepare()
    # one owner per spool, before its temporary files or queue are touched; the delivery
    # process inherits the descriptor (one lock for both); the kernel frees it on any death
    owner = SpoolLock(settings.spool_dir)
    lock_fd = owner.acquire()
    # issue 21: under the lock no intake is writing, so every temporary file is a dead one's
    # (never acknowledged): all go, not only those older than a day
    for name in spool.clean_temp(max_age=0.0):
        log.info("removed stale temporary file %s (an intake that never got its 250)", name)
    if settings.delivery_processes:  # mxroute/service/worker.py in a process of its own
        link: LocalLink | ChildLink = ChildLink(settings, lock_fd, take=spool.take)
    else:
        link = LocalLink(Delivery(settings, spool))
    # the intake's (sender check, identity self-check); delivery has its own
    resolver = resolver_from_settings(settings)
    # the identity self-check: warnings only, off the hot path (SPF-10, SPF-12)
    from mxroute.identity import helo
    from mxroute.identity.selfcheck import watch

    intake = Intake(settings, spool, link.queued, resolver=resolver)
    intake.on_queued, intake.on_author = watch(settings, resolver, link.queued)
    helo.watch(settings, resolver)  # a HELO name receivers refuse: a warning (issue 15 C2)
    servers: list[asyncio.base_events.Server] = []
    metrics: Any = None
    try:
        # issue 23: a delivery process recovers while mail is taken (its start waits for its
        # settings and spool, not the scan; the notices wait in the socket). Else: here first.
        await link.start()
        try:
            if settings.metrics_listen:  # first: scrapable once SMTP answers
                from mxroute.service.metrics import Metrics, Sources

                metrics = Metrics(Sources(intake=intake, delivery=link, resolver=resolver))
                await metrics.start(str(settings.metrics_listen))
            servers = await _listen(intake, settings)
        except MxrouteError as exc:
            exc.exit_code = EX_OSERR
            raise
    except BaseException:
        for server in servers:
            server.close()
        if metrics is not None:
            await metrics.close()
        await link.stop(0.0)
        spool.close()
        owner.release()
        raise
    relay = Relay(settings, loader, resolver, link, intake)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.hangup.set)
    helpers = [asyncio.create_task(relay.reload_on_hangup(), name="reload")]
    sdnotify.notify(f"READY=1\nSTATUS={await relay.status()}")
    if sdnotify.enabled():
        helpers.append(asyncio.create_task(relay.report_status(), name="status"))
    log.info("mxroute ready: spool=%s helo=%s", settings.spool_dir, settings.helo_name)
    flush_log()  # the start-up lines now: the delivery process's lines do not wait for ours
    code = await _run(stop, link)
    sdnotify.notify("STOPPING=1\nSTATUS=shutting down")
    log.info("shutting down: no new connections")
    loop.remove_signal_handler(signal.SIGHUP)
    for task in helpers:
        task.cancel()
    for server in servers:
        server.close()
    if metrics is not None:
        await metrics.close()
    await intake.shutdown(INTAKE_GRACE)
    final = await link.stop(DELIVERY_GRACE)
    spool.close()
    owner.release()
    stats = final.get("stats", {})
    log.info("stopped: accepted=%d delivered=%d deferred=%d bounced=%d", intake.stats["accepted"],
             stats.get("delivered", 0), stats.get("deferred", 0), stats.get("bounced", 0))
    return code


async def _run(stop: asyncio.Event, link: LocalLink | ChildLink) -> int:
    """Serve until ``stop`` (EX_OK) or until delivery fails (EX_SOFTWARE), pinging the watchdog."""
    watchdog = sdnotify.watchdog_interval()
    code = EX_OK
    failed = asyncio.ensure_future(link.failed.wait())
    while not stop.is_set():
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopped, failed], timeout=watchdog or 3600,
                                     return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        # delivery must never die silently, nor intake go on alone
        if failed in done or link.failure():
            log.error("delivery stopped: %s; exiting so that the service is restarted",
                      link.failure())
            code = EX_SOFTWARE
            break
        if not done:
            sdnotify.notify("WATCHDOG=1")
    failed.cancel()
    return code


__all__ = ["RESTART_ONLY", "serve"]
