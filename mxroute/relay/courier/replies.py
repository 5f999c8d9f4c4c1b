"""What an SMTP reply means for the recipients it answers (pure: no I/O, no asyncio).

One set of functions for both transaction styles, lock-step and pipelined (RFC 2920):
MAIL, RCPT, DATA and end-of-data replies become an ``Answer`` (accepted, too many
recipients, permanent or temporary) with its RFC 3463 status and a safe reply line
(SESS-5/6/9, MX-17, SEC-6). Also the checks on addresses before they go into a command (SEC-5).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from mxroute.address import parse_address
from mxroute.errors import AddressError
from mxroute.text import safe_text

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


def enhanced_status(code: int, text: str, advertised: bool) -> str:
    """The RFC 3463 status of a reply (SESS-5).

    Taken from the text when the server advertised ENHANCEDSTATUSCODES (RFC 2034)
    and its class matches the reply code; otherwise derived as ``X.0.0``.
    """
    klass = str(code)[0] if 200 <= code < 600 else "4"
    if advertised:
        match = _ENHANCED.match(text.strip())
        if match and match.group(1) == klass:
            return match.group(0)
    return f"{klass}.0.0"


def reply_text(code: int, text: str) -> str:
    """A reply as one safe line: ``550 5.1.1 no such user`` (multi-line replies joined; SEC-6)."""
    return safe_text(f"{code} " + " ".join(line.strip() for line in text.splitlines()), 1000)


def too_many_recipients(code: int, text: str) -> bool:
    """452, or the historical 552 "too many recipients" (RFC 5321 §4.5.3.1.10): retry the rest
    later."""
    if code == 452:
        return True
    return code == 552 and (
        text.strip().startswith("5.5.3") or "too many recipients" in text.lower()
    )


def path_problem(address: str, *, null_ok: bool = False) -> str | None:
    """Why ``address`` may not be put in a MAIL/RCPT command, or None (SEC-5, RFC 5321 §4.1.2).

    Controls (CR, LF, NUL, ...), bad syntax and over-long parts are refused here, so
    nothing hostile ever reaches aiosmtplib's command writer.
    """
    if address == "" and null_ok:
        return None
    try:
        parse_address(address)
    except AddressError as exc:
        return safe_text(exc.message, 200)
    if any(c in address for c in "<>"):
        return "angle bracket inside the address"
    return None


class Kind(enum.Enum):
    """What a reply does to the recipients it answers."""

    ACCEPTED = "accepted"  # go on (250 to MAIL/RCPT, 354 to DATA, 2xx after the data)
    TOO_MANY = "too many"  # SESS-9: in a further transaction; the status is made temporary
    PERMANENT = "permanent"  # bounced (MX-17: authoritative, never retried elsewhere)
    TEMPORARY = "temporary"  # pending: a later address or attempt may take them


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply classified: its ``kind``, RFC 3463 ``status`` and safe ``reply`` line."""

    kind: Kind
    status: str
    reply: str


def _answer(code: int, text: str, enhanced: bool, *, accepted: bool, permanent: bool) -> Answer:
    kind = Kind.ACCEPTED if accepted else Kind.PERMANENT if permanent else Kind.TEMPORARY
    return Answer(kind, enhanced_status(code, text, enhanced), reply_text(code, text))


def mail_answer(code: int, text: str, enhanced: bool) -> Answer:
    """MAIL FROM: 250 goes on; 5xx bounces every recipient (MX-17; never cached, SESS-17)."""
    return _answer(code, text, enhanced, accepted=code == 250, permanent=code >= 500)


def rcpt_answer(code: int, text: str, enhanced: bool) -> Answer:
    """RCPT TO: 250/251 accepted; "too many" in a further transaction (SESS-9); 5xx bounces this
    recipient and the others go on (SESS-6); anything else leaves it pending."""
    if code not in (250, 251) and too_many_recipients(code, text):
        status = enhanced_status(code, text, enhanced)
        return Answer(Kind.TOO_MANY, "4" + status[1:], reply_text(code, text))
    return _answer(code, text, enhanced, accepted=code in (250, 251), permanent=code >= 500)


def data_answer(code: int, text: str, enhanced: bool) -> Answer:
    """DATA: only 354 lets the data follow (SESS-7); 5xx bounces the accepted recipients."""
    return _answer(code, text, enhanced, accepted=code == 354, permanent=code >= 500)


def final_answer(code: int, text: str, enhanced: bool) -> Answer:
    """The reply after the data, for every accepted recipient (SESS-8): 2xx delivered, 5xx
    bounced, anything else pending."""
    return _answer(code, text, enhanced, accepted=code // 100 == 2, permanent=code // 100 == 5)


__all__ = [
    "Answer",
    "Kind",
    "data_answer",
    "enhanced_status",
    "final_answer",
    "mail_answer",
    "path_problem",
    "rcpt_answer",
    "reply_text",
    "too_many_recipients",
]
