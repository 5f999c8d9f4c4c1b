"""The control socket: ``mxroute queue`` acting on a running ``serve`` (issue 15 A).

``control.sock`` in the spool, a Unix stream socket, mode 0600, made by the process that owns
the queue (the delivery process, or ``serve`` itself with ``delivery_processes = 0``), so only
the service user (and root) can connect, as Postfix's ``public/qmgr`` and KumoMTA's admin API
are the service's own. The owner holds the spool lock, so it removes a stale socket left by a
crash before it binds. The caller's uid comes from the kernel (``SO_PEERCRED``) for the
operator-action log line.

Protocol: one JSON object per line, one request per connection, one reply::

    -> {"op": "delete", "ids": ["0001F2"], "all": false, "deferred": false,
        "domain": null, "reason": null}                   (flush hold release requeue bounce)
    <- {"ok": true, "action": "delete", "live": true,
        "messages": [{"queue_id": "...", "result": "deleted"}]}
    -> {"op": "suspend", "domains": ["d.example"], "for": 3600, "reason": "..."}
    <- {"ok": true, "action": "suspend", "live": true,
        "suspensions": [{"domain", "reason", "since", "until"}]}   (no domains: the list)
    -> {"op": "resume", "domains": ["d.example"], "all": false}
    <- {"ok": true, "action": "resume", "live": true, "resumed": ["d.example"]}
    -> {"op": "hosts", "forget": null}
    <- {"ok": true, "live": true, "hosts": [{"host", "address", "port", "status", "reply",
                                              "since", "until"}],
        "sites": {"SITE": {"throttle", "suspension", "prefer"}}}   (issue 18 §2: in force)
    <- {"ok": false, "error": "...", "exit": 64}           (a bad request: nothing was done)

Results: ``deleted held released flushed requeued bounced``; ``after-attempt`` (being
delivered: done when the attempt ends); ``on-hold`` (flush/requeue of held mail: nothing);
``not-held`` (release of mail not held: nothing); ``gone`` (delivered meanwhile). The same
``handle`` answers the CLI without a ``serve``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from mxroute.errors import EX_SOFTWARE, EX_USAGE, MxrouteError
from mxroute.relay.courier.hosts import Hosts
from mxroute.relay.queue.operator import Operator, Request

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
REQUEST_LIMIT = 65536  # bytes of one request line
READ_TIMEOUT = 5.0  # seconds a client has to send its request


async def handle(operator: Operator, hosts: Hosts | None, data: Any,
                 uid: int | None) -> dict[str, Any]:
    """The reply to one request (``hosts`` None: no running serve, no host memory)."""
    live = operator.queue is not None
    try:
        if not isinstance(data, dict):
            raise _bad("a request is one JSON object")
        if data.get("op") == "hosts":
            return {"ok": True, "live": live, **_hosts(hosts, data.get("forget"), uid)}
        if data.get("op") in ("suspend", "resume"):
            return {"ok": True, "action": data["op"], "live": live,
                    **await _suspension(operator, data, uid)}
        request = Request.from_json(data)
        messages = await operator.act(request, uid)
        return {"ok": True, "action": request.action, "live": live, "messages": messages}
    except MxrouteError as exc:
        return {"ok": False, "error": exc.message, "exit": exc.exit_code}


def _bad(message: str) -> MxrouteError:
    error = MxrouteError(message)
    error.exit_code = EX_USAGE
    return error


async def _suspension(operator: Operator, data: dict[str, Any],
                      uid: int | None) -> dict[str, Any]:
    """``suspend`` (no domain: the list) and ``resume`` (``all``: every domain)."""
    domains = data.get("domains") or []
    if not isinstance(domains, list):
        raise _bad("domains is not a list")
    if data["op"] == "resume":
        if bool(domains) == bool(data.get("all")):
            raise _bad("resume which domains? give domains, or --all (not both)")
        return {"resumed": await operator.resume(None if data.get("all") else domains, uid)}
    duration, reason = data.get("for"), data.get("reason")
    if not domains:
        if duration is not None or reason:
            raise _bad("--for and --reason need the domains to suspend")
        return {"suspensions": operator.suspended()}
    if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
        raise _bad("--for is a positive duration")
    made = await operator.suspend(domains, str(reason) if reason else None,
                                  None if duration is None else float(duration), uid)
    return {"suspensions": made}


def _hosts(hosts: Hosts | None, forget: Any, uid: int | None) -> dict[str, Any]:
    """What ``mxroute queue hosts`` shows (exinext), or ``--forget HOST``'s count."""
    if hosts is None:
        return {"hosts": [], "forgotten": 0} if forget else {"hosts": []}
    if forget:
        count = hosts.forget(str(forget))
        log.info("%s: operator: forget host by uid %s (%d record(s))", forget, uid, count)
        return {"forgotten": count}
    mono, wall = hosts.clock(), time.time()
    return {"sites": hosts.sites.snapshot(mono, wall), "hosts": [
        {"host": known.name or f"{key.address}:{key.port}", "address": key.address,
         "port": key.port, "status": known.status, "reply": known.reply,
         "since": round(wall - (mono - known.since), 3),
         "until": round(wall + (known.until - mono), 3)}
        for key, known in hosts.skipping()]}


def peer_uid(sock: socket.socket | None) -> int | None:
    """The connecting process's uid, from the kernel (Linux ``SO_PEERCRED``), or None."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


class ControlServer:
    """Serves ``handle`` on ``control.sock`` in the spool while the queue's owner runs."""

    def __init__(self, spool_root: Path, operator: Operator, hosts: Hosts | None) -> None:
        self.path = Path(spool_root) / SOCKET_NAME
        self.operator = operator
        self.hosts = hosts
        self._server: asyncio.base_events.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        """Bind (a stale socket from a crash is removed first: we hold the spool lock)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)  # 0600 from the start: never a moment open to others
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                           limit=REQUEST_LIMIT)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            try:
                data = json.loads(line)
            except ValueError:
                reply: dict[str, Any] = {"ok": False, "error": "a request is one JSON line",
                                         "exit": EX_USAGE}
            else:
                try:
                    reply = await handle(self.operator, self.hosts, data, uid)
                except Exception:  # a bug: said in the log, and to the caller, never silent
                    log.exception("control socket: the request failed: %.200r", data)
                    reply = {"ok": False, "error": "the request failed in serve: see its log",
                             "exit": EX_SOFTWARE}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, ValueError) as exc:  # ValueError: a line over the limit
            log.info("control socket: a client went away or sent too much: %s", exc)
        finally:
            writer.close()

    async def close(self) -> None:
        """Stop serving and remove the socket (if it is still ours, not a successor's)."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass


__all__ = ["SOCKET_NAME", "ControlServer", "handle", "peer_uid"]
