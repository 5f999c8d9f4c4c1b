"""DKIM canonicalization, header selection and the author domain (RFC 6376 §3.4, §5.4). PURE.

Input is a message as the intake spools it: CRLF line ends only (bare CR is refused, bare LF
normalized before this sees it). ``relaxed`` header canonicalization (§3.4.2): lower-case name,
unfolded, WSP runs to one SP, no WSP around the colon or at the end. ``relaxed`` body (§3.4.4):
no WSP at line ends, WSP runs to one SP, no empty lines at the end, an empty body stays empty.
Headers signed (§5.4.1): the recommended set present in the message; ``OVERSIGNED`` names are
listed once more than they occur, so none can be added after signing (RFC 8058 §4 for the
List-Unsubscribe pair).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mxroute.address import normalize_domain
from mxroute.errors import AddressError

# §5.4.1's list, and the MIME and List-Unsubscribe-Post fields; never trace fields
SIGNED = (
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    "resent-date", "resent-from", "resent-to", "resent-cc", "list-id", "list-help",
    "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner",
    "list-archive",
)
OVERSIGNED = frozenset((
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version",
    "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
))
_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_EOL = re.compile(rb"[ \t]+\r\n")
_FIELD_END = re.compile(rb"\r\n(?![ \t])")
_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_TAG = re.compile(rb"(?:^|;)\s*([a-zA-Z][a-zA-Z0-9_]*)\s*=\s*([^;]*)")


class ParseError(ValueError):
    """A message whose header cannot be read as header fields (it is not signed)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A message split: header fields as (name, raw value with folds, no final CRLF), body."""

    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes  # after the empty line; may be empty

    def values(self, name: str) -> list[bytes]:
        """The raw values of every field called ``name`` (case-insensitive), in order."""
        key = name.encode("ascii").lower()
        return [value for field, value in self.fields if field.lower() == key]


def split_message(message: bytes) -> Parsed:
    """Header fields and body (RFC 5322 §2.1, §2.2): ParseError for a line that is no field."""
    end = message.find(b"\r\n\r\n")
    if message.startswith(b"\r\n"):
        head, body = b"", message[2:]
    elif end < 0:
        head, body = message.removesuffix(b"\r\n"), b""
    else:
        head, body = message[:end], message[end + 4:]
    fields: list[tuple[bytes, bytes]] = []
    for line in _FIELD_END.split(head) if head else ():
        name, colon, value = line.partition(b":")
        if not colon or not _NAME.fullmatch(name.rstrip(b" \t")):
            raise ParseError(f"not a header field: {line[:60]!r}")
        fields.append((name.rstrip(b" \t"), value))
    return Parsed(tuple(fields), body)


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One field, relaxed (§3.4.2), with its CRLF."""
    unfolded = value.replace(b"\r\n", b"")
    return name.lower() + b":" + _WSP_RUN.sub(b" ", unfolded).strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """The body, relaxed (§3.4.4): empty stays empty, otherwise ends in exactly one CRLF.

    Linear in the body's size: WSP runs become one SP first, so a line's trailing WSP is then
    exactly one SP before its CRLF. (A last line without CRLF keeps its WSP, as dkimpy.)
    """
    text = body if b"\t" not in body and b"  " not in body else _WSP_RUN.sub(b" ", body)
    text = text.replace(b" \r\n", b"\r\n")
    end = len(text)
    while end >= 2 and text[end - 2:end] == b"\r\n":
        end -= 2
    return text[:end] + b"\r\n" if end else b""


def header_list(parsed: Parsed) -> list[str]:
    """The ``h=`` names: each SIGNED field once per occurrence, OVERSIGNED ones once more."""
    counts: dict[str, int] = {}
    for name, _ in parsed.fields:
        key = name.decode("ascii").lower()
        counts[key] = counts.get(key, 0) + 1
    names: list[str] = []
    for key in SIGNED:
        names += [key] * (counts.get(key, 0) + (1 if key in OVERSIGNED else 0))
    return names


def signed_headers(parsed: Parsed, names: list[str]) -> bytes:
    """The canonical header data for ``names`` (§5.4.2: bottom-up per name; absent = nothing)."""
    stacks: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in parsed.fields:
        stacks.setdefault(name.lower(), []).append((name, value))
    out = []
    for key in names:
        stack = stacks.get(key.encode("ascii"))
        if stack:
            out.append(relaxed_header(*stack.pop()))
    return b"".join(out)


def tags(value: bytes) -> dict[str, str]:
    """A tag=value list (§3.2), leniently: names lower-cased, values without WSP."""
    unfolded = value.replace(b"\r\n", b"")
    return {m.group(1).decode().lower(): re.sub(rb"[ \t]", b"", m.group(2)).decode("ascii",
                                                                                  "replace")
            for m in _TAG.finditer(unfolded)}


def existing_signatures(parsed: Parsed) -> set[tuple[str, str]]:
    """(d=, s=) of every DKIM-Signature already in the message, lower-cased."""
    found = set()
    for value in parsed.values("dkim-signature"):
        found_tags = tags(value)
        found.add((found_tags.get("d", "").lower().rstrip("."), found_tags.get("s", "").lower()))
    return found


class AuthorError(ValueError):
    """Why a message has no single author domain (no From:, several, unparseable)."""


def author_domain(parsed: Parsed) -> str:
    """The From: header's domain (A-labels, lower case): AuthorError when there is not exactly
    one From: field, or its mailboxes do not share one domain (RFC 7489 §6.6.1)."""
    froms = parsed.values("from")
    if not froms:
        raise AuthorError("no From: header")
    if len(froms) > 1:
        raise AuthorError(f"{len(froms)} From: headers")
    domains = {_domain(address) for address in _addresses(froms[0])}
    if not domains:
        raise AuthorError("From: names no address")
    if len(domains) > 1:
        raise AuthorError("From: names addresses in more than one domain")
    return domains.pop()


def _domain(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise AuthorError(f"From: address {address[:80]!r} has no domain")
    if domain.startswith("["):
        raise AuthorError(f"From: domain {domain[:80]!r} is an address literal")
    try:
        return normalize_domain(domain.strip().rstrip("."))
    except AddressError as exc:
        raise AuthorError(f"From: domain {domain[:80]!r}: {exc.message}") from None


def _addresses(value: bytes) -> list[str]:
    """The addr-specs of a mailbox-list (RFC 5322 §3.4): comments and display names dropped,
    quoted strings and encoded words never decoded (what a display name says is not an address).
    """
    text = value.replace(b"\r\n", b"").decode("utf-8", "surrogateescape")
    out: list[str] = []
    plain: list[str] = []  # this mailbox outside comments, quotes and angle brackets
    angle: list[str] | None = None  # inside <...>
    had_angle = False
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
            if angle is not None and quoted:
                angle.append(char)
            continue
        if char == "\\" and (depth or quoted):
            escaped = True
        elif depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = not quoted
            (angle if angle is not None else plain).append(char)
        elif quoted:
            (angle if angle is not None else plain).append(char)
        elif char == "(":
            depth = 1
        elif char == "<" and angle is None:
            angle, plain = [], []
        elif char == ">" and angle is not None:
            out.append("".join(angle).strip())
            angle, had_angle = None, True
        elif char in ",;" and angle is None:
            _plain(plain, had_angle, out)
            plain, had_angle = [], False
        elif angle is not None:
            angle.append(char)
        elif char == ":":  # a group's name (RFC 5322 §3.4): what came before is no address
            plain = []
        else:
            plain.append(char)
    if depth or quoted or angle is not None:
        raise AuthorError("From: has an unclosed comment, quote or angle bracket")
    _plain(plain, had_angle, out)
    return [address.rpartition(":")[2] if address.startswith("@") else address for address in out]


def _plain(parts: list[str], had_angle: bool, out: list[str]) -> None:
    """A mailbox without angle brackets: its addr-spec is all it is (WSP dropped)."""
    text = re.sub(r"\s+", "", "".join(parts))
    if text and not had_angle:
        out.append(text)
