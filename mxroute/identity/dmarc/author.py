"""The author domain of a message: the domain of its From: header (RFC 7489 §3.1, §6.6.1). PURE.

Only the header block is read (at most ``HEAD_LIMIT`` octets). No From: field, more than one
From: field, or a From: whose addresses are in more than one domain (or none) gives ``None``:
there is then no single domain to judge (receivers treat such mail by their own rules, §6.6.1).
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from mxroute.address import normalize_domain
from mxroute.errors import AddressError

HEAD_LIMIT = 256 * 1024
_FIELD = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_END = re.compile(rb"\r?\n\r?\n")
# the common From: values, read without the full RFC 5322 parser: `a@b` and `"Name" <a@b>`
_SIMPLE = re.compile(r'(?:"[^"\\]*"[ \t]*|[^"\\()<>,;:@]*)<([^<>()",;:\s@]+@[^<>()",;:\s@]+)>'
                     r'|([^<>()",;:\s@]+@[^<>()",;:\s@]+)')


def header_block(message: bytes) -> bytes:
    """The header fields of ``message`` (up to the first empty line, at most HEAD_LIMIT)."""
    head = message[:HEAD_LIMIT]
    if head.startswith((b"\r\n", b"\n")):
        return b""
    end = head.find(b"\r\n\r\n")  # the intake's messages: CRLF only
    if end >= 0:
        return head[:end + 2]
    found = _END.search(head)
    return head if found is None else head[:found.start() + 1]


def from_fields(message: bytes) -> list[str]:
    """The From: fields' values, unfolded, decoded as UTF-8 (RFC 6532; bad octets replaced)."""
    values = []
    for match in _FIELD.finditer(header_block(message)):
        value = re.sub(rb"\r?\n(?=[ \t])", b"", match.group(1))
        values.append(value.decode("utf-8", "replace").strip())
    return values


def author_domain(message: bytes) -> str | None:
    """The one domain of the addresses in the one From: field, lower-case A-labels, or None."""
    values = from_fields(message)
    if len(values) != 1:
        return None
    simple = _SIMPLE.fullmatch(values[0])
    if simple:
        return _domain(simple.group(1) or simple.group(2))
    domains = {_domain(address) for _, address in getaddresses(values) if address}
    return domains.pop() if len(domains) == 1 else None


def _domain(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return None
    try:
        return normalize_domain(domain.strip())
    except AddressError:
        return None
