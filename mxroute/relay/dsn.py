"""Delivery status notifications: RFC 3464 reports in an RFC 6522 multipart/report.

Pure functions, no I/O: the queue decides when a report is due and enqueues the
bytes built here with the null reverse-path (RFC 5321 §6.1, §4.5.5). Every string
that came from a peer (reply text, addresses, names) is made safe before it is
written into a header or a report field (SEC-6).

Default when the sender gave no RET (RFC 3461 §4.3 leaves it to the MTA): the
original's *headers* are returned (``text/rfc822-headers``), never the body —
less backscatter, and no private content sent back to a possibly forged sender.
RET=FULL returns the whole message up to ``max_return_size`` octets, then headers only.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

from mxroute.relay.envelope import Envelope, Recipient, RecipientResult
from mxroute.text import safe_text

# octets of the original returned with RET=FULL (DSN-11; Postfix bounce_size_limit is 50000)
MAX_RETURN_SIZE = 100_000
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
    "expanded": "Successful Mail Delivery Report",
}


def dsn_recipient(sender: str) -> str | None:
    """Where a notification about mail from ``sender`` goes, or None for the null reverse-path.

    RFC 5321 §6.1 / §3.6.3: never notify about a notification (DSN-3). A source
    route is stripped to its final hop (§4.1.1.3, appendix C; DSN-2).
    """
    path = sender.strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1].strip()
    if path.startswith("@") and ":" in path:
        path = path.split(":", 1)[1]
    if not path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        return None
    return path


def _date(value: datetime | float | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _field(name: str, value: str) -> str:
    """One header field, folded at spaces (RFC 5322 §2.2.3) so no line passes 78 where avoidable."""
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = " " + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _remote_mta(remote: str) -> str:
    """``mx1.example.com[192.0.2.1]:25`` → ``mx1.example.com``;
    ``[192.0.2.1]:25`` → ``192.0.2.1``."""
    name = remote.split("[", 1)[0]
    if name:
        return name
    match = re.match(r"\[([^\]]*)\]", remote)
    return match.group(1) if match else remote.rsplit(":", 1)[0]


def _status(result: RecipientResult, action: str) -> str:
    """The recipient's status, with a class consistent with Action (RFC 3464 §2.3.4; DSN-6)."""
    status = result.status if _STATUS.match(result.status or "") else ""
    wanted = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2",
              "expanded": "2"}[action]
    if status and status[0] in wanted:
        return status
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _headers_of(message: bytes) -> bytes:
    canonical = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    end = canonical.find(b"\r\n\r\n")
    head = canonical if end < 0 else canonical[:end]
    return head + b"\r\n" if head else b""


def build_dsn(
    *,
    reporting_mta: str,
    envelope: Envelope,
    message: bytes,
    results: list[RecipientResult],
    action: str,
    arrival: datetime | float,
    recipients: list[Recipient] | None = None,
    will_retry_until: datetime | float | None = None,
    max_return_size: int = MAX_RETURN_SIZE,
    now: datetime | float | None = None,
    message_id: str | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification for ``results``, as message bytes (CRLF).

    multipart/report; report-type=delivery-status (RFC 6522): a text/plain part for
    people, message/delivery-status (per-message then per-recipient fields,
    RFC 3464 §2.2–2.3), then the original — message/rfc822 (RET=FULL, size
    permitting) or text/rfc822-headers. SMTPUTF8 originals use the RFC 6533 types.
    ``recipients`` supplies ORCPT (Original-Recipient). ``now`` and ``message_id``
    may be injected for reproducible output.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    to = dsn_recipient(envelope.sender)
    if to is None:
        raise ValueError("no notification for the null reverse-path (RFC 5321 §6.1)")
    mta = safe_text(reporting_mta, 255).replace(" ", "")
    when = _date(now)
    utf8 = envelope.smtputf8 or not to.isascii() or any(not r.recipient.isascii() for r in results)
    orcpts = {r.address: r.orcpt for r in recipients or [] if r.orcpt}
    msgid = message_id or f"<{when.strftime('%Y%m%d%H%M%S')}.{uuid.uuid4().hex[:16]}@{mta}>"

    # --- part 2: message/delivery-status (RFC 3464 §2.2, §2.3) ---
    status_lines = _per_message_fields(mta, envelope, arrival)
    for result in results:
        status_lines += "\r\n" + _per_recipient_fields(
            result, action, orcpts.get(result.recipient), when, will_retry_until)
    # --- part 1: for people ---
    human = _human_text(mta, action, results, will_retry_until)
    # --- part 3: the original, per RET (RFC 3461 §4.3) and size (DSN-11) ---
    full = (envelope.ret or "HDRS").upper() == "FULL" and len(message) <= max_return_size
    original = _returned(message, full)
    eight_bit = not original.isascii()
    boundary = _boundary(msgid, original)
    head = _headers(mta, to, when, msgid, action, boundary, eight_bit)
    if full:
        third_type = "message/global" if utf8 else "message/rfc822"
    else:
        third_type = "message/global-headers" if utf8 else "text/rfc822-headers"
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    parts = [
        (f"Content-Type: text/plain; charset=utf-8\r\nContent-Description: Notification\r\n"
         f"Content-Transfer-Encoding: {'7bit' if human.isascii() else '8bit'}\r\n\r\n").encode()
        + human.encode("utf-8"),
        (f"Content-Type: {status_type}\r\nContent-Description: Delivery report\r\n\r\n").encode()
        + status_lines.encode("utf-8"),
        (f"Content-Type: {third_type}\r\n"
         f"Content-Description: {_noun(action)}{'' if full else ' Headers'}\r\n"
         + ("Content-Transfer-Encoding: 8bit\r\n" if eight_bit else "") + "\r\n").encode()
        + original,
    ]
    return head.encode("utf-8") + b"\r\n" + _multipart(boundary, parts)


def _per_message_fields(mta: str, envelope: Envelope, arrival: datetime | float) -> str:
    """Reporting-MTA, Original-Envelope-Id (ENVID given) and Arrival-Date (RFC 3464 §2.2)."""
    fields = _field("Reporting-MTA", f"dns; {mta}")
    if envelope.envid:
        fields += _field("Original-Envelope-Id", safe_text(envelope.envid, 100))
    return fields + _field("Arrival-Date", format_datetime(_date(arrival)))


def _per_recipient_fields(
    result: RecipientResult, action: str, orcpt: str | None, when: datetime,
    will_retry_until: datetime | float | None,
) -> str:
    """One recipient's fields (RFC 3464 §2.3; DSN-6), ``orcpt`` its ORCPT if it gave one."""
    address = safe_text(result.recipient, 300)
    kind = "rfc822" if address.isascii() else "utf-8"  # RFC 6533 §3
    fields = ""
    if orcpt is not None:
        original = safe_text(orcpt, 300)
        if ";" not in original:
            original = f"rfc822;{original}"
        fields += _field("Original-Recipient", original)
    fields += _field("Final-Recipient", f"{kind}; {address}")
    fields += _field("Action", action)
    fields += _field("Status", _status(result, action))
    if result.remote_mta and result.remote_reply:  # §2.3.5/§2.3.6: the remote's own reply (DSN-6)
        fields += _field("Remote-MTA", f"dns; {safe_text(_remote_mta(result.remote_mta), 255)}")
        fields += _field("Diagnostic-Code", f"smtp; {safe_text(result.reply, 990)}")
    elif result.reply:  # our own reason: no Remote-MTA, as Postfix's DSN_BY_LOCAL_MTA
        fields += _field("Diagnostic-Code", f"X-mxroute; {safe_text(result.reply, 990)}")
    fields += _field("Last-Attempt-Date", format_datetime(when))
    if action == "delayed" and will_retry_until is not None:
        fields += _field("Will-Retry-Until", format_datetime(_date(will_retry_until)))
    return fields


def _returned(message: bytes, full: bool) -> bytes:
    """What part 3 returns of the original: all of it (CRLF, ending in one), or its headers."""
    if not full:
        return _headers_of(message)
    original = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    return original if original.endswith(b"\r\n") else original + b"\r\n"


def _headers(
    mta: str, to: str, when: datetime, msgid: str, action: str, boundary: str, eight_bit: bool,
) -> str:
    """The report's own header fields (DSN-11: From MAILER-DAEMON, Auto-Submitted)."""
    head = (
        _field("From", f"MAILER-DAEMON@{mta} (Mail Delivery System)")
        + _field("To", f"<{safe_text(to, 300)}>")
        + _field("Date", format_datetime(when))
        + _field("Message-ID", msgid)
        + _field("Subject", _SUBJECTS[action])
        + _field("Auto-Submitted", "auto-replied")  # RFC 3834 §5 (DSN-11)
        + _field("MIME-Version", "1.0")
        + _field("Content-Type",
                 f'multipart/report; report-type=delivery-status; boundary="{boundary}"')
    )
    if eight_bit:
        head += _field("Content-Transfer-Encoding", "8bit")
    return head


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    """The body: each part after its boundary line, then the closing one (RFC 2046 §5.1.1)."""
    body = b"This is a MIME-encapsulated message.\r\n\r\n"
    for part in parts:
        body += f"--{boundary}\r\n".encode() + part
        if not part.endswith(b"\r\n"):
            body += b"\r\n"
        body += b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _noun(action: str) -> str:
    """What part 3 holds: the undelivered message, or (relayed, delivered, ...) the message."""
    return "Undelivered Message" if action in ("failed", "delayed") else "Message"


def _boundary(seed: str, content: bytes) -> str:
    """A MIME boundary that does not occur in the returned content (RFC 2046 §5.1.1)."""
    for n in range(100):
        candidate = "=_mxroute_" + hashlib.sha256(f"{seed}/{n}".encode()).hexdigest()[:24]
        if candidate.encode() not in content:
            return candidate
    raise RuntimeError("no MIME boundary found")  # 2**96 odds; unreachable in practice


def _human_text(
    mta: str, action: str, results: list[RecipientResult], until: datetime | float | None,
) -> str:
    """Part 1, for people: what happened, then one line per recipient with its reply."""
    retrying = f" until {format_datetime(_date(until))}." if until is not None else "."
    intro = {
        "failed": "I'm sorry to have to inform you that your message could not\r\n"
                  "be delivered to one or more recipients. It's attached below.",
        "delayed": "This is a warning only; you do not need to resend your message.\r\n"
                   "Delivery to the following recipients has been delayed; the mail system\r\n"
                   "will keep trying" + retrying,
        "delivered": "Your message was successfully delivered to the following recipients.",
        "relayed": "Your message was relayed to a destination that does not send\r\n"
                   "delivery notifications; no further notice will be sent.",
        "expanded": "Your message was delivered to a list or alias, which was expanded.",
    }[action]
    lines = [f"This is the mail system at host {mta}.", "", intro, ""]
    for result in results:
        said = result.remote_mta and result.remote_reply
        where = f" (host {safe_text(result.remote_mta or '', 150)} said)" if said else ""
        lines.append(f"<{safe_text(result.recipient, 200)}>{where}: {safe_text(result.reply, 600)}")
    return "\r\n".join(lines) + "\r\n"


__all__ = ["MAX_RETURN_SIZE", "build_dsn", "dsn_recipient"]
