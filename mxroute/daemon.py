"""``mxroute serve``: wire spool, queue manager, courier and intake together, run, stop cleanly.

Start-up: prepare and recover the spool (DUR-5, DUR-7), then listen. One log line
per event on stdout. SIGTERM/SIGINT: stop accepting, let stores in progress
finish (their 250 or 4xx), 421 to other sessions, give deliveries a bounded time,
exit 0 (RFC 5321 §3.8; DUR-8). The whole stop stays under the benchmark's 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from mxroute import sdnotify
from mxroute.errors import EX_OK, EX_OSERR, MxrouteError
from mxroute.queue import QueueManager
from mxroute.routing import resolver_from_settings
from mxroute.server import Intake
from mxroute.settings import Settings
from mxroute.spool import Spool

log = logging.getLogger("mxroute.daemon")

INTAKE_GRACE = 3.0  # seconds for DATA being stored to reach its fsync and reply
DELIVERY_GRACE = 4.0  # seconds for deliveries in flight to finish before they are cancelled (left queued)


def setup_logging(level: str) -> None:
    """One line per event on stdout, as a foreground service under systemd/journald expects."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s mxroute[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    """Run the relay until SIGTERM; the exit code for ``mxroute serve``."""
    setup_logging(settings.log_level)
    try:
        import uvloop  # optional: faster event loop when installed

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return int(runner(_main(settings)))
    except MxrouteError as exc:
        log.error("cannot start: %s", exc.message)
        print(f"mxroute: {exc.message}", file=sys.stderr)
        return exc.exit_code


async def _listen(intake: Intake, settings: Settings) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    factory = intake.factory()
    servers = []
    inherited = sdnotify.listen_fds()
    if inherited:  # systemd socket activation
        for sock in inherited:
            servers.append(await loop.create_server(factory, sock=sock, backlog=1024))
            log.info("listening on %s (socket activation)", sock.getsockname())
        return servers
    for host, port in settings.listen_addresses():
        try:
            servers.append(await loop.create_server(factory, host, port, reuse_address=True, backlog=1024))
        except OSError as exc:
            for server in servers:
                server.close()
            raise MxrouteError(f"cannot listen on {host}:{port}: {exc.strerror}", code=421) from None
        log.info("listening on %s:%d", host, port)
    return servers


async def _main(settings: Settings) -> int:
    from mxroute.courier import Courier

    loop = asyncio.get_running_loop()
    spool = Spool(settings.spool_dir)
    spool.prepare()
    for name in spool.clean_temp():
        log.info("removed stale temporary file %s (an intake that never got its 250)", name)
    resolver = resolver_from_settings(settings)
    courier = Courier(settings)
    queue = QueueManager(settings, spool, resolver, courier)
    queue.recover()
    from mxroute.selfcheck import watch  # the identity self-check: warnings only, off the hot path (SPF-10, SPF-12)

    intake = Intake(settings, spool, watch(settings, resolver, queue.add))
    try:
        servers = await _listen(intake, settings)
    except MxrouteError as exc:
        exc.exit_code = EX_OSERR
        await courier.close()
        spool.close()
        raise
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = asyncio.create_task(queue.run(), name="queue")
    sdnotify.notify("READY=1")
    log.info("mxroute ready: spool=%s helo=%s", settings.spool_dir, settings.helo_name)
    watchdog = sdnotify.watchdog_interval()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=watchdog or 3600)
        except TimeoutError:
            sdnotify.notify("WATCHDOG=1")
        if runner.done():  # the queue manager must never die silently
            log.error("queue manager stopped: %r", runner.exception())
            break
    sdnotify.notify("STOPPING=1")
    log.info("shutting down: no new connections")
    for server in servers:
        server.close()
    await intake.shutdown(INTAKE_GRACE)
    await queue.stop(DELIVERY_GRACE)
    runner.cancel()
    try:
        await asyncio.wait_for(courier.close(), timeout=2.0)
    except (TimeoutError, OSError):
        pass
    spool.close()
    log.info("stopped: accepted=%d delivered=%d deferred=%d bounced=%d", intake.stats["accepted"],
             queue.stats["delivered"], queue.stats["deferred"], queue.stats["bounced"])
    return EX_OK


__all__ = ["serve", "setup_logging"]
