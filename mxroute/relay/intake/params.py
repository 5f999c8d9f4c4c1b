"""The intake's pure parsers: MAIL/RCPT arguments and parameters, message content, trace field.

Each raises ``Reply`` (a finished SMTP reply) where the client's input is wrong:
``split_path`` and ``parse_params`` (RFC 5321 §4.1.2, case-preserving), the DSN
parameters ``parse_notify``, ``parse_orcpt`` and ``xtext_decode`` (RFC 3461 §4),
``path_address`` (the address in a path). ``check_content`` applies SEC-1, SESS-12 and
SESS-18 to the DATA; ``received_header`` is the one trace field the relay adds.
"""

from __future__ import annotations

import email.utils
import re
from typing import Any

from mxroute.address import Address, parse_path
from mxroute.errors import AddressError
from mxroute.text import safe_text

BARE_CR = re.compile(rb"\r(?!\n)")
BARE_LF = re.compile(rb"(?<!\r)\n")
MAX_LINE = 998  # RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF
WINDOW = 1 << 20  # bytes of lines measured at a time (issue 22: never a list of every line)
RECEIVED = re.compile(rb"^Received[ \t]*:", re.IGNORECASE | re.MULTILINE)
# RFC 3461 §4: xchar / "+" 2HEXCHAR
XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*\Z")


class Reply(Exception):
    """A finished SMTP reply raised from parsing/policy code; ``setting``: the setting that would
    change it, when one would (``explain`` says it, issue 16)."""

    def __init__(self, text: str, setting: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.setting = setting


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext; Reply 501 if malformed (DSN-8)."""
    if not XTEXT.match(value):
        raise Reply("501 5.5.4 Malformed xtext in DSN parameter")
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def split_path(arg: str) -> tuple[str, list[str]]:
    """``<path> params...`` → (path with brackets, parameter words); Reply 501 on bad syntax."""
    arg = arg.strip()
    if not arg.startswith("<"):
        raise Reply("501 5.5.4 Syntax: address must be enclosed in <>")
    quoted = escaped = False
    for index, ch in enumerate(arg):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return arg[: index + 1], arg[index + 1 :].split()
    raise Reply("501 5.5.4 Syntax: unterminated <address>")


def parse_params(words: list[str], allowed: set[str]) -> dict[str, str]:
    """ESMTP parameters: keyword case-insensitive, value kept as given (RFC 5321 §4.1.2)."""
    params: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        key = key.upper()
        if not re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", key) or (eq and not value):
            raise Reply("501 5.5.4 Syntax error in parameters")
        if key not in allowed:
            raise Reply(f"555 5.5.4 Unsupported parameter {safe_text(key, 40)}")
        if key in params:
            raise Reply(f"501 5.5.4 Duplicate parameter {key}")
        params[key] = value
    return params


def parse_notify(value: str) -> tuple[str, ...]:
    """NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1)."""
    items = tuple(item.upper() for item in value.split(","))
    if items == ("NEVER",):
        return items
    if (not items or any(i not in ("SUCCESS", "FAILURE", "DELAY") for i in items)
            or len(set(items)) != len(items)):
        raise Reply("501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    return items


def parse_orcpt(value: str) -> str:
    """ORCPT=addr-type;xtext (RFC 3461 §4.2), kept decoded as ``type;address``."""
    kind, sep, rest = value.partition(";")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", kind) or not rest:
        raise Reply("501 5.5.4 ORCPT must be addr-type;xtext")
    decoded = xtext_decode(rest)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in decoded):
        raise Reply("501 5.5.4 Control character in ORCPT")
    return f"{kind.lower()};{decoded}"


def path_address(path: str) -> Address | None:
    """The address of a ``<path>`` (None for ``<>``); Reply if it is not a valid address."""
    if any("\udc80" <= ch <= "\udcff" for ch in path):
        raise Reply("501 5.6.7 Address is not valid UTF-8")
    try:
        return parse_path(path)
    except AddressError as exc:
        raise Reply(exc.smtp_reply()) from None


def check_content(
    content: bytes | bytearray, bare_newline: str, max_received: int,
) -> tuple[bytes | bytearray, str | None]:
    """SEC-1, SESS-12 and SESS-18 on unstuffed DATA: (canonical content, or the rejection reply).

    ``content`` itself when already canonical; a copy only where a bare LF is normalised."""
    crlf = content.count(b"\r\n")  # fast path: every CR and every LF belongs to a CRLF
    if content.count(b"\r") != crlf and BARE_CR.search(content):
        return content, "550 5.5.2 Message contains a bare <CR> (RFC 5321 section 2.3.8)"
    if content.count(b"\n") != crlf:
        if bare_newline == "reject":
            return content, "550 5.5.2 Message contains a bare <LF> (RFC 5321 section 2.3.8)"
        content = BARE_LF.sub(b"\r\n", content)
    if len(content) > MAX_LINE and _line_over(content, MAX_LINE):
        return content, ("500 5.5.2 Message line longer than 998 octets "
                         "(RFC 5321 section 4.5.3.1.6)")
    end = content.find(b"\r\n\r\n")
    header = content if end < 0 else content[: end + 2]
    if content.startswith(b"\r\n"):
        header = b""
    if len(RECEIVED.findall(header)) > max_received:
        return content, "554 5.4.6 Too many Received: headers: mail loop (RFC 5321 section 6.3)"
    return content, None


def _line_over(content: bytes | bytearray, limit: int) -> bool:
    """Has ``content`` (CRLF lines) a line longer than ``limit``: measured a window of whole
    lines at a time, so that the list of lines is never the whole message's."""
    start, size = 0, len(content)
    while start < size:
        cut = content.find(b"\r\n", min(start + WINDOW, size))
        end = size if cut < 0 else cut
        if max(map(len, content[start:end].split(b"\r\n"))) > limit:
            return True
        start = end + 2
    return False


def received_header(
    *, helo: str, rdns: str, ip: str, by: str, proto: str, queue_id: str, rcpt: str | None,
    now: float,
) -> bytes:
    """The one trace field we add, at the top (RFC 5321 §4.4, RFC 3848; SESS-19): from the HELO
    name, then (the verified reverse name or ``unknown`` [the address]), as Postfix writes it."""
    literal = f"IPv6:{ip}" if ":" in ip else ip
    helo = safe_text(helo, 255).replace(" ", "_") or "unknown"
    lines = [f"Received: from {helo} ({safe_text(rdns, 255) or 'unknown'} [{literal}])",
             f"\tby {by} with {proto} id {queue_id}"]
    date = _date(now)
    if rcpt is not None:
        lines.append(f"\tfor <{safe_text(rcpt, 256)}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


# (second, RFC 5322 date of that second): one formatdate() per second
_DATE: list[Any] = [None, ""]


def _date(now: float) -> str:
    second = int(now)
    if _DATE[0] != second:
        _DATE[:] = [second, email.utils.formatdate(second, localtime=True)]
    return str(_DATE[1])
