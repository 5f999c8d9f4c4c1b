"""A spool filled before ``serve`` starts (issue 23: restart with a queue): queue files written
with the spool's own encoder, as a previous instance left them (committed, one recipient each),
without an fsync each (what is tested is the start, not the build)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mxroute.relay.spool.format import MessageMeta, RecipientState, encode, new_queue_id


def fill(spool: Path, count: int, rcpt: str, *, due: float | None = None) -> list[str]:
    """``count`` queued messages to ``rcpt`` in ``spool`` (created as ``serve`` does), due at
    ``due`` (now by default), each with the Subject ``queued N``: their queue IDs."""
    queue = spool / "queue"
    for sub in ("queue", "tmp", "corrupt"):
        (spool / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    spool.chmod(0o700)
    now = time.time()
    when = now if due is None else due
    made = []
    for n in range(count):
        qid = new_queue_id(lambda: now - 60)  # made by an earlier instance
        message = (f"From: a@sender.test\r\nTo: {rcpt}\r\nSubject: queued {n}\r\n"
                   f"Message-ID: <q{n}@sender.test>\r\n\r\nbody {n}\r\n").encode()
        meta = MessageMeta(queue_id=qid, sender="a@sender.test", arrival=now - 60,
                           size=len(message), client="client.test [127.0.0.1]",
                           recipients=[RecipientState(address=rcpt, next_try=when)])
        fd = os.open(queue / qid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, encode(meta, message))
        finally:
            os.close(fd)
        made.append(qid)
    return made
