"""``mxroute queue list | show ID``: the spool, read directly.

The spool is the truth, so this works with or without a running daemon. The acting tools
(flush, hold, release, requeue, bounce, delete, hosts) are mxroute/cli/queueops.py.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import Any

from mxroute.errors import EX_CANTCREAT, EX_NOINPUT, EX_OK, EX_USAGE, SpoolError
from mxroute.relay.spool.format import PENDING, QUEUE_ID, CorruptFile, MessageMeta
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings, default_spool
from mxroute.text import LISTING, safe_text


def queue_command(settings: Settings, action: str, queue_id: str | None, as_json: bool) -> int:
    """Run one ``mxroute queue`` action; sysexits code."""
    spool = Spool(settings.spool_dir, threads=1)
    try:
        if not spool.queue_dir.is_dir():  # never "empty": the wrong spool looks just like that
            print(f"mxroute: no spool at {settings.spool_dir.absolute()} "
                  f"({spool_origin(settings)})", file=sys.stderr)
            return EX_NOINPUT
        if action == "show" and (not queue_id or not QUEUE_ID.match(queue_id)):
            print(f"mxroute: {queue_id!r} is not a queue ID", file=sys.stderr)
            return EX_USAGE
        if action == "list":
            return _list(_metas(spool), as_json)
        if action == "show":
            assert queue_id is not None
            return _show(spool, queue_id, as_json)
        print(f"mxroute: unknown queue action {action!r}", file=sys.stderr)
        return EX_USAGE
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


def _metas(spool: Spool) -> list[MessageMeta]:
    metas = []
    for queue_id in spool.ids():
        try:
            metas.append(spool.load_meta(queue_id))
        except (FileNotFoundError, CorruptFile):
            continue  # delivered meanwhile, or the daemon's recovery will move it aside
    return metas


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _in(ts: float, now: float) -> str:
    left = ts - now
    if left <= 0:
        return "now"
    return f"in {int(left // 3600)}h{int(left % 3600 // 60):02d}m{int(left % 60):02d}s"


def _list(metas: list[MessageMeta], as_json: bool) -> int:
    now = time.time()
    if as_json:
        print(json.dumps([_summary(m) for m in metas], indent=2, ensure_ascii=False))
        return EX_OK
    if not metas:
        print("queue is empty")
        return EX_OK
    rows: list[tuple[str, ...]] = [("ID", "ARRIVED", "SIZE", "SENDER", "PENDING", "NEXT TRY")]
    for meta in metas:
        due = meta.next_due()
        rows.append((
            meta.queue_id, _when(meta.arrival), str(meta.size),
            f"<{safe_text(meta.sender, 60)}>", f"{len(meta.pending)}/{len(meta.recipients)}",
            _in(due, now) if due is not None else "-",
        ))
    _table(rows)
    print(f"-- {len(metas)} message(s), {sum(len(m.pending) for m in metas)} pending recipient(s)")
    return EX_OK


def _summary(meta: MessageMeta) -> dict[str, Any]:
    return {
        "queue_id": meta.queue_id, "arrival": meta.arrival, "size": meta.size,
        "sender": meta.sender, "recipients": len(meta.recipients), "pending": len(meta.pending),
        "next_try": meta.next_due(),
    }


def _show(spool: Spool, queue_id: str, as_json: bool) -> int:
    try:
        meta = spool.load_meta(queue_id)
    except FileNotFoundError:
        print(f"mxroute: {queue_id}: no such message in the queue", file=sys.stderr)
        return EX_NOINPUT
    except CorruptFile as exc:
        print(f"mxroute: {queue_id}: corrupt queue file: {exc}", file=sys.stderr)
        return EX_NOINPUT
    if as_json:
        print(json.dumps(meta.to_json(), indent=2, ensure_ascii=False))
        return EX_OK
    now = time.time()
    print(f"queue id:   {meta.queue_id}")
    print(f"arrived:    {_when(meta.arrival)} from {safe_text(meta.client, LISTING)}")
    bounce = "  (a bounce)" if not meta.sender else ""
    print(f"sender:     <{safe_text(meta.sender, LISTING)}>{bounce}")
    print(f"size:       {meta.size} bytes")
    extras = [f"{k}={v}" for k, v in (("RET", meta.ret), ("ENVID", meta.envid), ("BODY", meta.body))
              if v]
    if extras:
        print(f"dsn:        {' '.join(safe_text(e, LISTING) for e in extras)}")
    print()
    for rcpt in meta.recipients:
        state = rcpt.state
        print(f"  <{safe_text(rcpt.address, LISTING)}>  {state}, {rcpt.attempts} attempt(s)"
              + (f", NOTIFY={','.join(rcpt.notify)}" if rcpt.notify else ""))
        if rcpt.state == PENDING:
            when = ("now" if rcpt.next_try <= now
                    else f"{_when(rcpt.next_try)} ({_in(rcpt.next_try, now)})")
            print(f"      next try:  {when}")
            print(f"      why:       {safe_text(rcpt.why or 'not tried yet', LISTING)}")
        if rcpt.reply:  # whose words (DSN-6): the remote's reply, or mxroute's own reason
            whose = "the remote's reply" if rcpt.remote_reply else "mxroute's own reason"
            print(f"      last:      {safe_text(rcpt.reply, LISTING)} ({whose})")
        for host, reply in rcpt.hosts.items():
            print(f"      host:      {safe_text(host, LISTING)}: {safe_text(reply, LISTING)}")
    return EX_OK


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
