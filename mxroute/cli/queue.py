"""The spool every queue command opens, and where ``spool_dir`` came from (issue 15 C1).

The spool is the truth, so the read-only tools (queueview) work with or without a running
daemon; the acting tools (flush, hold, release, requeue, bounce, delete, hosts) are
``queueops``: through serve's control socket, or on the files under the spool lock.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from mxroute.errors import EX_CANTCREAT, EX_NOINPUT, EX_OK, SpoolError
from mxroute.hostdefaults import default_spool
from mxroute.relay.spool.lookup import QueueIdError
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings
from mxroute.text import LISTING, safe_text


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


def spool_origin(settings: Settings) -> str:
    """Where ``spool_dir`` came from, for an error about it: the variable, the file, or which
    default (issue 15 C1)."""
    origin = settings.origin("spool_dir")
    if origin == "default":
        return f"spool_dir default: {default_spool()[1]}"
    return f"spool_dir from {origin}"

