"""Parse a ``v=spf1`` record (RFC 7208 §4.5, §4.6, §5, §6): pure, no I/O.

``parse_record`` checks the whole record, every macro-string included, and
raises ``PermError`` on any syntax error anywhere (§4.6).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from mxroute.identity.spf.macros import MacroToken, parse_domain_spec, parse_macro_string
from mxroute.identity.spf.results import FAIL, NEUTRAL, PASS, SOFTFAIL, PermError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}  # §4.6.2
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")  # §5
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})  # §4.6.4 (plus redirect)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*")  # §4.6.1 name
_CIDR4 = re.compile(r"(?:0|[1-9][0-9]?)\Z")  # §5.6 ip4-cidr-length digits
_CIDR6 = re.compile(r"(?:0|[1-9][0-9]{0,2})\Z")
_DUAL = re.compile(r"(?::(?P<spec>.*?))?(?:/(?P<c4>[0-9]+))?(?://(?P<c6>[0-9]+))?", re.DOTALL)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_QNUM_QUAD = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}\Z")


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One directive (§4.6.2, §5)."""

    qualifier: str  # "+", "-", "~" or "?"
    name: str  # lower case, one of MECHANISMS
    text: str  # as written, for the trace
    spec: tuple[MacroToken, ...] | None = None  # domain-spec (include, a, mx, ptr, exists)
    network: IPNetwork | None = None  # ip4, ip6
    cidr4: int = 32
    cidr6: int = 128

    @property
    def result(self) -> str:
        return QUALIFIERS[self.qualifier]

    @property
    def queries_dns(self) -> bool:
        return self.name in DNS_MECHANISMS


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed ``v=spf1`` record: mechanisms in order, and the two known modifiers (§6)."""

    text: str
    mechanisms: tuple[Mechanism, ...]
    redirect: tuple[MacroToken, ...] | None = None
    redirect_text: str = ""
    exp: tuple[MacroToken, ...] | None = None
    exp_text: str = ""


def is_spf_record(text: str) -> bool:
    """§4.5: exactly ``v=spf1`` (case-insensitive) followed by SP or the end."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _cidr(text: str | None, pattern: re.Pattern[str], limit: int, default: int, term: str) -> int:
    if text is None:
        return default
    if not pattern.match(text) or int(text) > limit:
        raise PermError(f"bad CIDR length in {term!r} (§5.6)")
    return int(text)


def parse_mechanism(term: str) -> Mechanism:
    """One directive = [qualifier] mechanism (§4.6.2, §5.1–§5.7)."""
    qualifier = "+"
    body = term
    if body[:1] in QUALIFIERS:
        qualifier, body = body[0], body[1:]
    m = re.match(r"[A-Za-z0-9]*", body)
    name = m.group(0).lower() if m else ""
    rest = body[len(name) :]
    if name not in MECHANISMS:
        raise PermError(f"unknown mechanism {term!r} (§5)")
    if name == "all":
        if rest:
            raise PermError(f"'all' takes no argument: {term!r} (§5.1)")
        return Mechanism(qualifier, name, term)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise PermError(f"{name} needs ':domain' in {term!r} (§5.2, §5.7)")
        return Mechanism(qualifier, name, term, spec=parse_domain_spec(rest[1:]))
    if name == "ptr":
        if not rest:
            return Mechanism(qualifier, name, term)
        if not rest.startswith(":"):
            raise PermError(f"bad ptr argument {term!r} (§5.5)")
        return Mechanism(qualifier, name, term, spec=parse_domain_spec(rest[1:]))
    if name in ("a", "mx"):
        dual = _DUAL.fullmatch(rest)
        if dual is None:
            raise PermError(f"bad {name} argument {term!r} (§5.3, §5.4)")
        spec_text = dual.group("spec")
        spec = parse_domain_spec(spec_text) if spec_text is not None else None
        cidr4 = _cidr(dual.group("c4"), _CIDR4, 32, 32, term)
        cidr6 = _cidr(dual.group("c6"), _CIDR6, 128, 128, term)
        return Mechanism(qualifier, name, term, spec=spec, cidr4=cidr4, cidr6=cidr6)
    return Mechanism(qualifier, name, term, network=_network(name, rest, term))


def _network(name: str, rest: str, term: str) -> IPNetwork:
    """The argument of ip4 / ip6 (§5.6)."""
    if not rest.startswith(":"):
        raise PermError(f"{name} needs ':network' in {term!r} (§5.6)")
    address, slash, length = rest[1:].partition("/")
    try:
        if name == "ip4":
            if not _QNUM_QUAD.match(address):
                raise ValueError(address)
            bits = _cidr(length if slash else None, _CIDR4, 32, 32, term)
            return ipaddress.IPv4Network(f"{address}/{bits}", strict=False)
        if not re.fullmatch(r"[0-9A-Fa-f:.]+", address):
            raise ValueError(address)
        bits = _cidr(length if slash else None, _CIDR6, 128, 128, term)
        return ipaddress.IPv6Network(f"{address}/{bits}", strict=False)
    except ValueError:
        raise PermError(f"bad address in {term!r} (§5.6)") from None


@functools.lru_cache(maxsize=1024)
def parse_record(text: str) -> Record:
    """Parse a selected SPF record (§4.6); raise PermError on any syntax error anywhere.

    Pure, and its ``Record`` is immutable, so parses are memoised: a relay sees
    the same few records again and again (errors are not cached).
    """
    if not is_spf_record(text):
        raise PermError("not a v=spf1 record (§4.5)")
    bad = re.search(r"[^\x20-\x7e]", text)
    if bad:
        raise PermError(f"character {bad.group(0)!r} is not allowed in a record (§4.6.1, §3.1)")
    mechanisms: list[Mechanism] = []
    redirect: tuple[MacroToken, ...] | None = None
    exp: tuple[MacroToken, ...] | None = None
    redirect_text = exp_text = ""
    # record = version terms *SP; terms = *( 1*SP ( directive / modifier ) )
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _NAME.match(term)
        if modifier and term[modifier.end() : modifier.end() + 1] == "=":
            name = modifier.group(0).lower()
            value = term[modifier.end() + 1 :]
            if name == "redirect":
                if redirect is not None:
                    raise PermError("redirect= appears twice (§6)")
                redirect, redirect_text = parse_domain_spec(value), term
            elif name == "exp":
                if exp is not None:
                    raise PermError("exp= appears twice (§6)")
                exp, exp_text = parse_domain_spec(value), term
            else:
                parse_macro_string(value)  # unknown modifiers are ignored, but must parse (§6)
            continue
        mechanisms.append(parse_mechanism(term))
    return Record(text, tuple(mechanisms), redirect, redirect_text, exp, exp_text)
