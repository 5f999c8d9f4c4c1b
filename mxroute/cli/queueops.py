"""``mxroute queue flush|hold|release|requeue|bounce|delete|hosts|suspend|resume``: the acting
queue tools.

With a ``serve`` running they go through its control socket (mxroute/service/control.py):
the effect, the ``ID: operator: ACTION by uid N`` log line and the metrics are there when the
command returns. Without one they act on the spool files, under the spool lock (a ``serve``
starting meanwhile waits for them: mxroute/relay/spool/lock.py). A ``serve`` that holds the
lock but does not answer yet (recovering a large spool) is waited for, ``CONTROL_WAIT`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mxroute.errors import EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE, MxrouteError
from mxroute.settings import Settings

OPS = ("flush", "hold", "release", "requeue", "bounce", "delete", "hosts", "suspend", "resume")
CONTROL_WAIT = 10.0  # seconds to wait for a serve that holds the spool to answer
REPLY_TIMEOUT = 120.0  # seconds for a reply (a delete --all of a large queue)
_RETRY_STEP = 0.1

_SAID = {
    "deleted": "deleted", "held": "on hold", "released": "released (due now)",
    "flushed": "due now", "requeued": "routed again, due now", "bounced": "bounced to the sender",
    "on-hold": "on hold: not tried (release it first)", "not-held": "not on hold: unchanged",
    "gone": "no longer in the queue (delivered or removed meanwhile)",
}


def add_op_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``mxroute queue ACTION ...`` for the acting tools, added to the ``queue`` subparsers."""

    def add(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true", help="the reply as one JSON object")
        return p

    p = add("flush", "make queued mail due now, every host worth a try (postqueue -f/-i/-s)")
    p.add_argument("ids", nargs="*", metavar="ID", help="queue IDs or unique prefixes")
    p.add_argument("--domain", help="the messages with a recipient at this domain")
    for name, text in (("hold", "put messages on hold: never tried (postsuper -h)"),
                       ("release", "release held messages: due now (postsuper -H)")):
        add(name, text).add_argument("ids", nargs="+", metavar="ID")
    p = add("requeue", "route messages again now (postsuper -r)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every queued message")
    p = add("bounce", "return messages to their senders with a DSN (exim -Mg)")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--reason", help="the text the DSN gives")
    p = add("delete", "remove messages without a notice (postsuper -d)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every queued message")
    p.add_argument("--deferred", action="store_true", help="every message tried and waiting")
    p.add_argument("--domain", help="the messages with a recipient at this domain")
    p = add("hosts", "the hosts delivery skips until their retry time (exinext)")
    p.add_argument("--forget", metavar="HOST", help="try this host (name or address) again")
    p = add("suspend", "stop delivery to recipient domains or destination sites (MX host names "
                       "joined by commas, or a next hop's host:port); none given: list the "
                       "suspensions (kcli suspend)")
    p.add_argument("domains", nargs="*", metavar="SITE|DOMAIN")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="end by itself after this long (90s, 30m, 2h, 1d); default: until resumed")
    p.add_argument("--reason", help="why (logged and listed)")
    p = add("resume", "resume delivery to suspended domains or sites: their mail is due now")
    p.add_argument("domains", nargs="*", metavar="SITE|DOMAIN")
    p.add_argument("--all", action="store_true", help="every suspended domain")


def queue_ops(args: argparse.Namespace,
              load: Callable[[argparse.Namespace], Settings]) -> int:
    """Run one acting ``mxroute queue`` command (parsed by ``add_op_parsers``); sysexits code."""
    request = _request(args)
    if isinstance(request, str):
        print(f"mxroute: queue {args.action}: {request}", file=sys.stderr)
        return EX_USAGE
    settings = load(args)
    reply = act(settings, request)
    if not reply.get("ok"):
        print(f"mxroute: {reply.get('error')}", file=sys.stderr)
        return int(reply.get("exit") or EX_USAGE)
    reply.pop("ok")
    if args.json:
        print(json.dumps(reply, ensure_ascii=False))
    elif args.action == "hosts":
        _print_hosts(reply, args.forget)
    elif args.action in ("suspend", "resume"):
        _print_suspensions(reply, listing=args.action == "suspend" and not args.domains)
    else:
        _print_messages(reply)
    return EX_OK


def _request(args: argparse.Namespace) -> dict[str, Any] | str:
    """The control request of ``args``, or what is wrong with them."""
    if args.action == "hosts":
        return {"op": "hosts", "forget": args.forget}
    if args.action == "resume":
        if bool(args.domains) == args.all:
            return "give the domains to resume, or --all (not both)"
        return {"op": "resume", "domains": args.domains, "all": args.all}
    if args.action == "suspend":
        return _suspend_request(args)
    chosen = [bool(args.ids), getattr(args, "all", False), getattr(args, "deferred", False),
              bool(getattr(args, "domain", None))]
    if sum(chosen) > 1:
        return "give IDs, --all, --deferred or --domain, only one of them"
    if args.action in ("requeue", "delete") and not any(chosen):
        return "which messages? give IDs (or unique prefixes), or --all" + (
            ", --deferred or --domain D" if args.action == "delete" else "")
    return {"op": args.action, "ids": args.ids, "all": getattr(args, "all", False),
            "deferred": getattr(args, "deferred", False), "domain": getattr(args, "domain", None),
            "reason": getattr(args, "reason", None)}


def _suspend_request(args: argparse.Namespace) -> dict[str, Any] | str:
    from mxroute.relay.queue.suspensions import suspend_name
    from mxroute.relay.spool.listing import parse_duration

    if not args.domains and (args.duration or args.reason):
        return "--for and --reason need the domains to suspend"
    for name in args.domains:
        try:
            suspend_name(name)
        except ValueError as exc:
            return str(exc)
    duration = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            return f"--for: {exc}"
        if duration <= 0:
            return "--for: give a duration above zero"
    return {"op": "suspend", "domains": args.domains, "for": duration, "reason": args.reason}


def act(settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``request``: from the running serve, else done here under the spool lock."""
    from mxroute.cli.queue import spool_origin
    from mxroute.relay.spool.lock import SpoolInUse, SpoolLock
    from mxroute.service.control import SOCKET_NAME

    root = Path(settings.spool_dir)
    if not (root / "queue").is_dir():
        error = MxrouteError(f"no spool at {root.absolute()} ({spool_origin(settings)})")
        error.exit_code = EX_NOINPUT
        raise error
    deadline = time.monotonic() + CONTROL_WAIT
    while True:
        reply = ask(root / SOCKET_NAME, request)
        if reply is not None:
            return reply
        lock = SpoolLock(root)
        try:
            lock.acquire(tool=True)
        except SpoolInUse as exc:  # a serve starting (recovery) or another tool: wait a little
            if time.monotonic() >= deadline:
                error = MxrouteError(f"{exc.message}, and it does not answer on "
                                     f"{root / SOCKET_NAME}; nothing was done")
                error.exit_code = EX_TEMPFAIL
                raise error from None
            time.sleep(_RETRY_STEP)
            continue
        try:
            return asyncio.run(_offline(settings, request))
        finally:
            lock.release()


def ask(path: Path, request: dict[str, Any],
        timeout: float = REPLY_TIMEOUT) -> dict[str, Any] | None:
    """The running serve's reply over ``path``; None when no serve listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as exc:
            hint = (" (run it as the service user, or root)"
                    if isinstance(exc, PermissionError) else "")
            error = MxrouteError(f"cannot reach serve's control socket {path}: "
                                 f"{exc.strerror or exc}{hint}")
            error.exit_code = EX_TEMPFAIL
            raise error from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        error = MxrouteError(f"serve's control socket {path} gave no answer; the action may "
                             f"or may not have been done: see the log")
        error.exit_code = EX_TEMPFAIL
        raise error from None
    return reply


async def _offline(settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` done on the spool files (the caller holds the spool lock)."""
    from mxroute.identity.dkim.sign import DkimSigner
    from mxroute.relay import dsn
    from mxroute.relay.queue.manager import timing_of
    from mxroute.relay.queue.notices import Notifier
    from mxroute.relay.queue.operator import Operator
    from mxroute.relay.spool.store import Spool
    from mxroute.service.control import handle

    spool = Spool(settings.spool_dir, threads=2, keep_fresh=False)
    try:
        signer, _ = DkimSigner.load(settings, tolerant=True)
        notices = Notifier(spool, reporting_mta=settings.helo_name, timing=timing_of(settings),
                           clock=time.time, schedule=lambda _meta: None,
                           stats={"bounced": 0, "dsn": 0}, builder=dsn.build_dsn, signer=signer)
        return await handle(Operator(spool, notices), None, request, os.getuid())
    finally:
        spool.close()


def _print_messages(reply: dict[str, Any]) -> None:
    action, messages = reply["action"], reply["messages"]
    for item in messages:
        result = item["result"]
        said = (f"{action} when the delivery attempt in progress ends"
                if result == "after-attempt" else _SAID.get(result, result))
        print(f"{item['queue_id']}: {said}")
    if not messages:
        print(f"{action}: no message matched")
    if not reply.get("live"):
        print(f"-- no serve running: the spool files were changed ({len(messages)} message(s))")


def _print_hosts(reply: dict[str, Any], forget: str | None) -> None:
    if forget:
        print(f"{forget}: {reply.get('forgotten', 0)} host record(s) forgotten: tried again "
              f"at the next delivery")
        return
    if not reply.get("live"):
        print("no serve running: hosts are remembered by a running serve only")
        return
    hosts, sites = reply["hosts"], reply.get("sites") or {}
    for name, state in sites.items():
        print(f"site {name}")
        for line in site_lines(state):
            print(f"    {line}")
    if not hosts:
        print("no host is being skipped")
        return
    for host in hosts:
        print(f"{host['host']}  {host['status']}  since {_when(host['since'])}  "
              f"until {_when(host['until'])}")
        print(f"    {host['reply']}")


def site_lines(state: dict[str, Any]) -> list[str]:
    """What is in force at one site (issue 18 §2), as ``queue hosts`` and ``explain`` say it."""
    lines = []
    throttle, suspension, prefer = state.get("throttle"), state.get("suspension"), \
        state.get("prefer")
    if suspension:
        lines.append(f"suspended until {_when(suspension['until'])} ({suspension['cause']}: "
                     f"{suspension['reason']})")
    if throttle:
        lines.append(f"throttled to {throttle['rate']:g}/s until {_when(throttle['until'])} "
                     f"({throttle['reason']})")
    if prefer:
        lines.append(f"IPv{prefer['family']} preferred until {_when(prefer['until'])} "
                     f"({prefer['reason']})")
    return lines


def _print_suspensions(reply: dict[str, Any], *, listing: bool) -> None:
    if reply["action"] == "resume":
        for domain in reply["resumed"]:
            print(f"{domain}: resumed (its mail is due now)")
        if not reply["resumed"]:
            print("resume: no such domain was suspended")
    else:
        entries = reply["suspensions"]
        if listing and not entries:
            print("no domain is suspended")
        for entry in entries:
            until = "until resumed" if entry["until"] is None else f"until {_when(entry['until'])}"
            print(f"{entry['domain']}  suspended since {_when(entry['since'])}  {until}"
                  + (f"  ({entry['reason']})" if entry["reason"] else ""))
    if not reply.get("live"):
        print("-- no serve running: the spool's suspensions were "
              + ("read" if listing else "changed"))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


__all__ = ["OPS", "act", "add_op_parsers", "ask", "queue_ops"]
