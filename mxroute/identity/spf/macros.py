"""SPF macros (RFC 7208 §7): the macro-string grammar (§7.1) and its expansion (§7.2–§7.4).

Tokenizing is pure and happens when a record is parsed, so a bad macro anywhere
makes the whole record a permerror (§4.6). Expansion needs the values of one
check_host() call; the one value that takes DNS lookups, ``%{p}``, is asked of the
evaluation through a callable.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mxroute.address import IPAddress
from mxroute.identity.spf.results import PermError

MACRO_LETTERS = frozenset("slodiphcrtv")  # §7.2
EXP_ONLY_LETTERS = frozenset("crt")  # §7.2: "only in exp text"
DELIMITERS = frozenset(".-+,/_=")  # §7.1
MAX_EXPANSION = 8192  # a macro bomb in exp text stops here (hostile input, §4.6.4 spirit)

_TOPLABEL = re.compile(
    r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\Z"
)
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}  # §7.1


@dataclass(frozen=True, slots=True)
class Macro:
    """``%{letter digits r delimiters}`` (§7.1); ``upper`` means URL-escape the value (§7.3)."""

    letter: str
    digits: int | None
    reverse: bool
    delimiters: str
    upper: bool


MacroToken = str | Macro  # a literal run, or a macro to expand


def parse_macro_string(text: str, *, exp: bool = False) -> tuple[MacroToken, ...]:
    """Tokenize a §7.1 macro-string; raise PermError on a bad macro or character.

    ``exp`` allows the c, r and t letters, and SP, which only explanation text may hold.
    """
    tokens: list[MacroToken] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            # macro-literal = %x21-24 / %x26-7E; explain-string adds SP (§6.2, §7.1).
            if not ("\x21" <= ch <= "\x7e" or (exp and ch == " ")):
                raise PermError(f"character {ch!r} not allowed in {text!r} (§7.1)")
            literal.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < n else ""
        if nxt in _ESCAPES:
            literal.append(_ESCAPES[nxt])
            # an escape is a macro-expand for the domain-end rule: close the literal run
            tokens.append("".join(literal))
            tokens.append(Macro("", None, False, "", False))
            literal = []
            i += 2
            continue
        if nxt != "{":
            raise PermError(f"bad macro '%{nxt}' in {text!r} (§7.1)")
        close = text.find("}", i + 2)
        if close < 0:
            raise PermError(f"unterminated macro in {text!r} (§7.1)")
        if literal:
            tokens.append("".join(literal))
            literal = []
        tokens.append(_parse_macro(text[i + 2 : close], exp))
        i = close + 1
    if literal:
        tokens.append("".join(literal))
    return tuple(t for t in tokens if t != "")


def _parse_macro(body: str, exp: bool) -> Macro:
    """The inside of one ``%{...}`` (§7.1 macro-expand)."""
    m = re.fullmatch(r"([A-Za-z])([0-9]*)([rR]?)(.*)", body, re.DOTALL)
    if not m or m.group(1).lower() not in MACRO_LETTERS:
        raise PermError(f"unknown macro %{{{body}}} (§7.2)")
    letter, digits, rev, delims = m.groups()
    if letter.lower() in EXP_ONLY_LETTERS and not exp:
        raise PermError(f"macro %{{{body}}} is allowed only in exp text (§7.2)")
    if any(d not in DELIMITERS for d in delims):
        raise PermError(f"bad delimiter in %{{{body}}} (§7.1)")
    count: int | None = None
    if digits:
        # §7.3: the digit count MUST be nonzero; huge counts just keep every part.
        count = int(digits) if len(digits) <= 6 else 10**6
        if count == 0:
            raise PermError(f"zero digit transformer in %{{{body}}} (§7.3)")
    return Macro(letter.lower(), count, bool(rev), delims, letter.isupper())


def parse_domain_spec(text: str) -> tuple[MacroToken, ...]:
    """A §4.6.1 / §7.1 domain-spec: macro-string domain-end."""
    tokens = parse_macro_string(text)
    if not tokens:
        raise PermError("empty domain-spec (§7.1)")
    last = tokens[-1]
    if isinstance(last, Macro):
        return tokens  # domain-end = macro-expand
    # domain-end = "." toplabel [ "." ] inside the final literal run
    tail = last.removesuffix(".")
    dot = tail.rfind(".")
    if dot < 0 or not _TOPLABEL.match(tail[dot + 1 :]):
        raise PermError(f"domain-spec {text!r} does not end in '.' toplabel or a macro (§7.1)")
    return tokens


def _nibbles(ip: IPAddress, *, upper: bool = False) -> str:
    """§7.3: ``i`` is dotted-quad for IPv4 and dot-separated nibbles for IPv6.

    RFC 7208 does not fix the case of the nibbles. Its §7.4 example shows them in
    lower case inside a domain name (where case does not matter), while the OpenSPF
    suite (test v-macro-ip6) expects upper case in explanation text, as pyspf does;
    so domain-specs get lower case and explanations upper case.
    """
    if ip.version == 4:
        return str(ip)
    nibbles = ".".join(ip.exploded.replace(":", ""))
    return nibbles.upper() if upper else nibbles


class Expander:
    """The §7.2 macro values of one check_host() call, and §7.3 expansion with them."""

    def __init__(
        self, ip: IPAddress, sender: str, helo: str, *,
        receiver: str, clock: Callable[[], float], validated_name: Callable[[str], Awaitable[str]],
    ) -> None:
        self.ip = ip
        local, _, sender_domain = sender.rpartition("@")
        self.local = local or "postmaster"  # §4.3
        self.sender_domain = sender_domain
        self.helo = helo
        self.receiver = receiver
        self.clock = clock
        self.validated_name = validated_name  # %{p} for a domain (PTR and A/AAAA lookups)

    async def value(self, letter: str, domain: str, explanation: bool) -> str:
        """The §7.2 value of ``letter`` while ``domain`` is evaluated."""
        ip = self.ip
        if letter == "s":
            return f"{self.local}@{self.sender_domain}"
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            return _nibbles(ip, upper=explanation)
        if letter == "p":
            return await self.validated_name(domain)
        if letter == "v":
            return "in-addr" if ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(ip)
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(self.clock()))
        raise PermError(f"unknown macro letter {letter!r}")  # parse_macro_string prevents this

    async def expand(
        self, tokens: tuple[MacroToken, ...], domain: str, *, explanation: bool = False
    ) -> str:
        """§7.3/§7.4: expand a tokenized macro-string for the current ``domain``."""
        out: list[str] = []
        size = 0
        for token in tokens:
            if isinstance(token, str):
                piece = token
            elif not token.letter:
                continue  # an escape marker; its text is in the previous literal
            else:
                value = await self.value(token.letter, domain, explanation)
                parts = re.split("[" + re.escape(token.delimiters or ".") + "]", value)
                if token.reverse:
                    parts.reverse()
                if token.digits is not None:
                    parts = parts[-token.digits :]
                piece = ".".join(parts)
                if token.upper:
                    piece = urllib.parse.quote(piece, safe="")  # RFC 3986 unreserved kept
            size += len(piece)
            if size > MAX_EXPANSION:
                raise PermError(f"macro expansion longer than {MAX_EXPANSION} characters")
            out.append(piece)
        return "".join(out)
