"""``mxroute queue flush | delete ID``, and the spool every queue command opens.

The spool is the truth, so this works with or without a running daemon: ``flush``
touches the spool's flush marker (the daemon polls it every second and makes all
deferred mail due); ``delete`` unlinks the queue file (the daemon drops it the
next time it is due, and never recreates it: state appends do not O_CREAT).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from mxroute.errors import EX_CANTCREAT, EX_NOINPUT, EX_OK, EX_USAGE, SpoolError
from mxroute.relay.spool.format import QUEUE_ID
from mxroute.relay.spool.lookup import QueueIdError
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings, default_spool
from mxroute.text import LISTING, safe_text


def queue_command(settings: Settings, action: str, queue_id: str | None, as_json: bool) -> int:
    """Run one acting ``mxroute queue`` action (flush, delete); sysexits code."""
    return run_on_spool(settings, lambda spool: _act(spool, action, queue_id, as_json))


def run_on_spool(settings: Settings, work: Callable[[Spool], int]) -> int:
    """``work`` on the configured spool; a missing spool, a bad or unknown queue ID and an
    unreadable spool are one line on stderr and their sysexits code."""
    spool = Spool(settings.spool_dir, threads=1)
    try:
        if not spool.queue_dir.is_dir():  # never "empty": the wrong spool looks just like that
            print(f"mxroute: no spool at {settings.spool_dir.absolute()} "
                  f"({spool_origin(settings)})", file=sys.stderr)
            return EX_NOINPUT
        return work(spool)
    except QueueIdError as exc:
        print(f"mxroute: {safe_text(exc.message, LISTING)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader stopped early (`| head`): a quiet end
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        os.close(devnull)
        return EX_OK
    except (OSError, SpoolError) as exc:
        print(f"mxroute: cannot read the spool {settings.spool_dir.absolute()} "
              f"({spool_origin(settings)}): {exc}", file=sys.stderr)
        return EX_CANTCREAT
    finally:
        spool.close()


def _act(spool: Spool, action: str, queue_id: str | None, as_json: bool) -> int:
    if action == "delete" and (not queue_id or not QUEUE_ID.match(queue_id)):
        print(f"mxroute: {queue_id!r} is not a queue ID", file=sys.stderr)
        return EX_USAGE
    if action == "flush":
        spool.request_flush()
        count = len(spool.ids())
        _say(as_json, {"action": "flush", "messages": count},
             f"flush requested: {count} message(s) due now")
        return EX_OK
    if action == "delete":
        assert queue_id is not None
        if not spool.remove_sync(queue_id):
            print(f"mxroute: {queue_id}: no such message in the queue", file=sys.stderr)
            return EX_NOINPUT
        _say(as_json, {"action": "delete", "queue_id": queue_id, "deleted": True},
             f"{queue_id}: deleted")
        return EX_OK
    print(f"mxroute: unknown queue action {action!r}", file=sys.stderr)
    return EX_USAGE


def spool_origin(settings: Settings) -> str:
    """Where ``spool_dir`` came from, for an error about it: the variable, the file, or which
    default (issue 15 C1)."""
    origin = settings.origin("spool_dir")
    if origin == "default":
        return f"spool_dir default: {default_spool()[1]}"
    return f"spool_dir from {origin}"


def _say(as_json: bool, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if as_json else text)
