"""``mxroute queue show ID`` (envelope, recipients, headers) and ``queue cat ID`` (postcat -q).

The ID may be a unique prefix (``Spool.resolve``). The message is shown as spooled, our
``Received:`` first, through ``printable_lines`` (controls as ``\\xNN``, SEC-6); the JSON
forms are ASCII.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mxroute.cli.queuelist import suspended_domains, when
from mxroute.errors import EX_OK
from mxroute.relay.spool.format import PENDING, CorruptFile, MessageMeta
from mxroute.relay.spool.listing import message_state, recipient_state
from mxroute.relay.spool.lookup import NoSuchMessage
from mxroute.relay.spool.store import Spool
from mxroute.text import LISTING, printable_lines, safe_text


def _load(spool: Spool, typed: str) -> tuple[MessageMeta, bytes]:
    queue_id = spool.resolve(typed)
    try:
        return spool.load(queue_id)
    except FileNotFoundError:
        raise NoSuchMessage(f"{queue_id}: no such message in the queue (gone meanwhile)") from None
    except CorruptFile as exc:
        raise NoSuchMessage(f"{queue_id}: corrupt queue file: {exc}") from None


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header section, body) of message bytes; the blank line belongs to neither."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = message.partition(sep)
        if found:
            return head + sep[: len(sep) // 2], body
    return message, b""


def header_fields(head: bytes) -> list[list[str]]:
    """[name, value] per header field, unfolded, in order (value text as UTF-8, bad bytes
    replaced)."""
    fields: list[list[str]] = []
    for line in head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1] += " " + line.strip()
        elif line:
            name, _, value = line.partition(":")
            fields.append([name, value.strip()])
    return fields


def show(spool: Spool, typed: str, as_json: bool) -> int:
    meta, message = _load(spool, typed)
    head, _ = split(message)
    now = time.time()
    if as_json:
        print(json.dumps({**meta.to_json(), "state": message_state(meta, now),
                          "headers": header_fields(head)}, indent=2))
        return EX_OK
    print(f"queue id:   {meta.queue_id}")
    print(f"arrived:    {when(meta.arrival)} from {safe_text(meta.client, LISTING)}")
    bounce = "  (a bounce)" if not meta.sender else ""
    print(f"sender:     <{safe_text(meta.sender, LISTING)}>{bounce}")
    print(f"size:       {meta.size} bytes")
    print(f"state:      {message_state(meta, now)}")
    suspended = suspended_domains(spool, now)
    extras = [f"{k}={v}" for k, v in (("RET", meta.ret), ("ENVID", meta.envid), ("BODY", meta.body))
              if v]
    if extras:
        print(f"dsn:        {' '.join(safe_text(e, LISTING) for e in extras)}")
    print()
    for rcpt in meta.recipients:
        state = recipient_state(rcpt, now, meta.held, suspended)
        print(f"  <{safe_text(rcpt.address, LISTING)}>  {state}, "
              f"{rcpt.attempts} attempt(s)"
              + (f", NOTIFY={','.join(rcpt.notify)}" if rcpt.notify else ""))
        if rcpt.state == PENDING:
            due = "now" if rcpt.next_try <= now else when(rcpt.next_try)
            print(f"      next try:  {due}")
            print(f"      why:       {safe_text(rcpt.why or 'not tried yet', LISTING)}")
        if rcpt.reply:  # whose words (DSN-6): the remote's reply, or mxroute's own reason
            whose = "the remote's reply" if rcpt.remote_reply else "mxroute's own reason"
            print(f"      last:      {safe_text(rcpt.reply, LISTING)} ({whose})")
        for host, reply in rcpt.hosts.items():
            print(f"      host:      {safe_text(host, LISTING)}: {safe_text(reply, LISTING)}")
    print()
    print("headers:")
    for line in printable_lines(head):
        print(f"  {line}")
    return EX_OK


def cat(spool: Spool, typed: str, part: str, as_json: bool) -> int:
    """The message (``part`` "message"), its header section ("headers") or its body ("body")."""
    meta, message = _load(spool, typed)
    head, body = split(message)
    data = {"message": message, "headers": head, "body": body}[part]
    if as_json:
        out: dict[str, Any] = {"queue_id": meta.queue_id, "part": part,
                               "text": data.decode("utf-8", "replace")}
        print(json.dumps(out))
        return EX_OK
    for line in printable_lines(data):
        print(line)
    return EX_OK
