"""SPF ``check_host()`` (RFC 7208) over the shared resolver.

Two stages, as RFC 7208 §4.6 requires ("if there are any syntax errors anywhere
in the record, check_host() returns immediately with the result permerror"):

1. *Parse* (pure, no I/O): ``parse_record`` turns the selected ``v=spf1`` text
   into a ``Record`` of mechanisms and modifiers, checking the §4.6.1 / §7.1 ABNF
   including every macro-string; ``parse_macro_string`` is the macro tokenizer.
2. *Evaluate*: ``check_host`` fetches records through ``mxroute.dns.resolver.Resolver``
   (every lookup, so ``explain`` shows it and the cache serves repeats), applies
   the §4.6.4 limits (10 DNS-querying terms, 2 void lookups, 10 MX / PTR names)
   and an overall time bound, and records a trace of every term.

Nothing here raises for bad DNS data or hostile records: every path ends in one
of the seven §2.6 results.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.name

from mxroute.dns.resolver import Answer, Lookups, Outcome

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NONE, NEUTRAL, PASS, FAIL, SOFTFAIL, TEMPERROR, PERMERROR = (
    "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror",
)
RESULTS = (NONE, NEUTRAL, PASS, FAIL, SOFTFAIL, TEMPERROR, PERMERROR)
QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}  # §4.6.2
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")  # §5
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})  # §4.6.4 (plus redirect)
MACRO_LETTERS = frozenset("slodiphcrtv")  # §7.2
EXP_ONLY_LETTERS = frozenset("crt")  # §7.2: "only in exp text"
DELIMITERS = frozenset(".-+,/_=")  # §7.1
MAX_DOMAIN = 253  # §4.8 (presentation form, no root dot)
MAX_LABEL = 63
MAX_EXPANSION = 8192  # a macro bomb in exp text stops here (hostile input, §4.6.4 spirit)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*")  # §4.6.1 name
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\Z")
_CIDR4 = re.compile(r"(?:0|[1-9][0-9]?)\Z")  # §5.6 ip4-cidr-length digits
_CIDR6 = re.compile(r"(?:0|[1-9][0-9]{0,2})\Z")
_DUAL = re.compile(r"(?::(?P<spec>.*?))?(?:/(?P<c4>[0-9]+))?(?://(?P<c6>[0-9]+))?", re.DOTALL)
_QNUM_QUAD = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\Z")


class SPFError(Exception):
    """Ends an evaluation with ``result`` (internal control flow, never escapes check_host)."""

    result = PERMERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PermError(SPFError):
    result = PERMERROR


class TempError(SPFError):
    result = TEMPERROR


# --------------------------------------------------------------------------- parse


@dataclass(frozen=True, slots=True)
class Macro:
    """``%{letter digits r delimiters}`` (§7.1); ``upper`` means URL-escape the value (§7.3)."""

    letter: str
    digits: int | None
    reverse: bool
    delimiters: str
    upper: bool


MacroToken = str | Macro  # a literal run, or a macro to expand


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
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])  # §7.1 escapes
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
        body = text[i + 2 : close]
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
        if literal:
            tokens.append("".join(literal))
            literal = []
        tokens.append(Macro(letter.lower(), count, bool(rev), delims, letter.isupper()))
        i = close + 1
    if literal:
        tokens.append("".join(literal))
    return tuple(t for t in tokens if t != "")


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
    # ip4 / ip6 (§5.6)
    if not rest.startswith(":"):
        raise PermError(f"{name} needs ':network' in {term!r} (§5.6)")
    address, slash, length = rest[1:].partition("/")
    try:
        if name == "ip4":
            if not _QNUM_QUAD.match(address):
                raise ValueError(address)
            bits = _cidr(length if slash else None, _CIDR4, 32, 32, term)
            network: IPNetwork = ipaddress.IPv4Network(f"{address}/{bits}", strict=False)
        else:
            if not re.fullmatch(r"[0-9A-Fa-f:.]+", address):
                raise ValueError(address)
            bits = _cidr(length if slash else None, _CIDR6, 128, 128, term)
            network = ipaddress.IPv6Network(f"{address}/{bits}", strict=False)
    except ValueError:
        raise PermError(f"bad address in {term!r} (§5.6)") from None
    return Mechanism(qualifier, name, term, network=network)


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


# --------------------------------------------------------------------------- helpers


def domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot be looked up (§4.3: label > 63, empty label, too long), or None."""
    name = domain.removesuffix(".")
    if not name:
        return "empty domain"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_DOMAIN:
        return "domain longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "empty label"
        if len(label.encode("utf-8", "surrogateescape")) > MAX_LABEL:
            return "label longer than 63 octets"
    return None


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def qname(domain: str) -> str:
    """A lookup name the resolver parses back exactly: every odd octet written as \\DDD."""
    name = domain.removesuffix(".")
    if _PLAIN_NAME.match(name):
        return name  # the common case: nothing to escape
    labels = [label.encode("utf-8", "surrogateescape") for label in name.split(".")]
    return dns.name.Name(labels).to_text(omit_final_dot=True)


def truncate_domain(domain: str) -> str:
    """§4.8: drop labels from the left until at most 253 characters remain."""
    while len(domain) > MAX_DOMAIN and "." in domain:
        domain = domain.split(".", 1)[1]
    return domain


def normalize_ip(ip: str | IPAddress) -> IPAddress:
    """Parse the client IP; an IPv4-mapped IPv6 address is its IPv4 address (§5, tests ip4-mapped-ip6)."""
    address = ip if not isinstance(ip, str) else ipaddress.ip_address(ip.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reverse_name(ip: IPAddress) -> str:
    """The in-addr.arpa / ip6.arpa name of ``ip`` (RFC 1035 §3.5, RFC 3596 §2.5)."""
    return ip.reverse_pointer


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


def _txt_strings(rr: Any) -> str:
    """One TXT RR's strings joined with no separator (§3.3); bytes kept one-to-one."""
    return b"".join(rr.strings).decode("latin-1")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class SPFOptions:
    """Limits and local parameters; the defaults are RFC 7208's."""

    max_dns_terms: int = 10  # §4.6.4
    max_void_lookups: int = 2  # §4.6.4 (SHOULD, configurable)
    max_mx_names: int = 10  # §4.6.4
    max_ptr_names: int = 10  # §4.6.4, §5.5
    timeout: float = 20.0  # §4.6.4: "at least 20 seconds"
    default_explanation: str = "%{d} does not designate %{c} as a permitted sender"
    receiver: str = "unknown"  # %{r} (§7.2)
    clock: Callable[[], float] = time.time  # %{t}


def _show(answer: Answer) -> str:
    shown = ", ".join(answer.texts[:12]) if answer.rrs else answer.outcome.value
    if answer.detail and answer.outcome.temporary:
        shown += f" ({answer.detail})"
    return f"{answer.qtype} {answer.qname} -> {shown}"


@dataclass(slots=True)
class TraceEntry:
    """One step of an evaluation: a record fetch, a term, or a limit hit."""

    depth: int  # 0 for the checked domain, +1 per include/redirect
    domain: str
    term: str
    result: str = ""  # "match", "no match", a §2.6 result, or a note
    steps: list[Answer | str] = field(default_factory=list)  # lookups made, and notes
    dns_terms: int = 0  # DNS-querying terms counted so far (§4.6.4)
    void_lookups: int = 0
    target: str | None = None  # the expanded domain the term looked at

    @property
    def lookups(self) -> list[str]:
        """Each lookup as text, ``"A mail.example.com -> 192.0.2.1"`` (rendered only when shown)."""
        return [step if isinstance(step, str) else _show(step) for step in self.steps]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "depth": self.depth,
            "domain": self.domain,
            "term": self.term,
            "result": self.result,
            "lookups": list(self.lookups),
            "dns_terms": self.dns_terms,
            "void_lookups": self.void_lookups,
        }
        if self.target is not None:
            body["target"] = self.target
        return body


@dataclass(slots=True)
class SPFResult:
    """The outcome of check_host(): the §2.6 result, its explanation (fail only), and the trace."""

    result: str
    sender: str
    ip: str
    domain: str
    helo: str = ""
    explanation: str | None = None
    reason: str = ""  # why, for humans: the matching term, or what went wrong
    trace: list[TraceEntry] = field(default_factory=list)
    dns_terms: int = 0
    void_lookups: int = 0
    elapsed_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The contract's ``spf`` object, with additions."""
        return {
            "result": self.result,
            "sender": self.sender,
            "ip": self.ip,
            "domain": self.domain,
            "helo": self.helo,
            "explanation": self.explanation,
            "reason": self.reason,
            "dns_terms": self.dns_terms,
            "void_lookups": self.void_lookups,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "trace": [entry.to_json() for entry in self.trace],
        }


# --------------------------------------------------------------------------- evaluate


class _Evaluation:
    """State of one check_host() call: counters shared across include/redirect (§4.6.4)."""

    def __init__(self, resolver: Lookups, ip: IPAddress, sender: str, helo: str, options: SPFOptions) -> None:
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        local, _, sender_domain = sender.rpartition("@")
        self.local = local or "postmaster"  # §4.3
        self.sender_domain = sender_domain
        self.helo = helo
        self.options = options
        self.dns_terms = 0
        self.voids = 0
        self.trace: list[TraceEntry] = []
        self._p_cache: dict[str, str] = {}
        self.reason = ""

    # -- bookkeeping ---------------------------------------------------------
    def _entry(self, depth: int, domain: str, term: str) -> TraceEntry:
        entry = TraceEntry(depth, domain, term, dns_terms=self.dns_terms, void_lookups=self.voids)
        self.trace.append(entry)
        return entry

    def _count_term(self, entry: TraceEntry) -> None:
        self.dns_terms += 1
        entry.dns_terms = self.dns_terms
        if self.dns_terms > self.options.max_dns_terms:
            raise PermError(f"more than {self.options.max_dns_terms} DNS-querying terms (§4.6.4)")

    def _void(self, answer: Answer, entry: TraceEntry) -> bool:
        """Count a void lookup (NXDOMAIN, or NOERROR with no answers) toward the §4.6.4 limit."""
        if answer.outcome not in (Outcome.NXDOMAIN, Outcome.NODATA) and (answer.outcome != Outcome.RECORDS or answer.rrs):
            return False
        self.voids += 1
        entry.void_lookups = self.voids
        if self.voids > self.options.max_void_lookups:
            raise PermError(f"more than {self.options.max_void_lookups} void lookups (§4.6.4)")
        return True

    async def _lookup(self, name: str, qtype: str, entry: TraceEntry | None) -> Answer:
        answer = await self.resolver.lookup(qname(name), qtype)
        if entry is not None:
            entry.steps.append(answer)
        return answer

    @staticmethod
    def _temporary(answer: Answer, what: str) -> None:
        if answer.outcome.temporary:
            raise TempError(f"DNS {answer.outcome.value} for {what} (§2.6.6)")

    # -- record --------------------------------------------------------------
    async def check_host(self, domain: str, depth: int, want_exp: bool) -> tuple[str, str | None]:
        """§4: the result for ``domain``, and the explanation when it is fail and ``want_exp``."""
        entry = self._entry(depth, domain, "record")
        problem = domain_problem(domain) if not domain.startswith("[") else "a domain literal"
        if problem is None and "." not in domain.rstrip("."):
            problem = "not a multi-label domain name"
        if problem is not None:
            self.reason = f"{domain!r}: {problem} (§4.3)"
            entry.result = f"none: {self.reason}"
            return NONE, None
        answer = await self._lookup(domain, "TXT", entry)
        self._temporary(answer, f"TXT {domain}")
        if depth and answer.outcome in (Outcome.NXDOMAIN, Outcome.NODATA):
            self._void(answer, entry)
        records = [text for text in map(_txt_strings, answer.rrs) if is_spf_record(text)]
        if not records:
            self.reason = f"{domain} publishes no v=spf1 record (§4.5)"
            entry.result = f"none: {self.reason}"
            return NONE, None
        if len(records) > 1:
            raise PermError(f"{len(records)} v=spf1 records at {domain} (§4.5)")
        entry.result = records[0] if len(records[0]) <= 512 else records[0][:509] + "..."
        try:
            record = parse_record(records[0])
        except PermError as exc:
            raise PermError(f"{domain}: {exc.reason}") from None
        return await self._evaluate(record, domain, depth, want_exp)

    async def _evaluate(self, record: Record, domain: str, depth: int, want_exp: bool) -> tuple[str, str | None]:
        for mechanism in record.mechanisms:
            entry = self._entry(depth, domain, mechanism.text)
            if mechanism.queries_dns:
                self._count_term(entry)
            matched = await self._match(mechanism, domain, depth, entry, want_exp)
            entry.result = "match" if matched else "no match"
            if matched:
                entry.result = f"match -> {mechanism.result}"
                self.reason = f"{domain}: {mechanism.text} matched"
                explanation = None
                if mechanism.result == FAIL and want_exp:
                    explanation = await self._explain(record, domain, depth)
                return mechanism.result, explanation
        if record.redirect is not None:
            # §6.1: used only when no mechanism matched (so never with "all").
            entry = self._entry(depth, domain, record.redirect_text)
            self._count_term(entry)
            target = await self._target(record.redirect, domain, entry)
            if target is None or domain_problem(target) is not None:
                raise PermError(f"redirect target {target!r} is not a valid domain (§6.1)")
            result, explanation = await self.check_host(target, depth + 1, want_exp)
            entry.result = f"redirect -> {result}"
            if result == NONE:
                raise PermError(f"redirect target {target} has no SPF record (§6.1)")
            return result, explanation
        self._entry(depth, domain, "(default)").result = "no match -> neutral (§4.7)"
        self.reason = f"{domain}: no mechanism matched"
        return NEUTRAL, None

    # -- mechanisms ------------------------------------------------------------
    async def _target(self, spec: tuple[MacroToken, ...] | None, domain: str, entry: TraceEntry) -> str:
        if spec is None:
            entry.target = domain
            return domain
        target = truncate_domain(await self.expand(spec, domain))
        entry.target = target
        return target

    async def _match(self, m: Mechanism, domain: str, depth: int, entry: TraceEntry, want_exp: bool) -> bool:
        family = self.ip.version
        if m.name == "all":
            return True
        if m.network is not None:  # ip4 / ip6 (§5.6): a family mismatch is no match
            return m.network.version == family and self.ip in m.network
        target = await self._target(m.spec, domain, entry)
        if m.name == "include":
            if domain_problem(target) is not None:
                raise PermError(f"include target {target!r} is not a valid domain (§5.2)")
            result, _ = await self.check_host(target, depth + 1, False)
            # §5.2 table: pass -> match; fail/softfail/neutral -> no match; errors propagate.
            if result == PASS:
                return True
            if result in (FAIL, SOFTFAIL, NEUTRAL):
                return False
            raise PermError(f"include:{target} gave none (§5.2)")
        if domain_problem(target) is not None:
            entry.steps.append(f"skipped: {domain_problem(target)}")
            return False  # an invalid name matches nothing (tests invalid-domain-*)
        if m.name == "exists":  # §5.7: always an A query, whatever the client's family
            answer = await self._lookup(target, "A", entry)
            self._temporary(answer, f"A {target}")
            return not self._void(answer, entry)
        if m.name == "a":
            return await self._a_match(target, m, entry, count_void=True)
        if m.name == "mx":
            return await self._mx_match(target, m, entry)
        return await self._ptr_match(target, entry)

    def _network_contains(self, m: Mechanism, address: Any) -> bool:
        bits = m.cidr4 if self.ip.version == 4 else m.cidr6
        network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
        return self.ip in network

    async def _a_match(self, name: str, m: Mechanism, entry: TraceEntry, *, count_void: bool) -> bool:
        qtype = "A" if self.ip.version == 4 else "AAAA"  # §5.3
        answer = await self._lookup(name, qtype, entry)
        self._temporary(answer, f"{qtype} {name}")
        if count_void:
            self._void(answer, entry)
        return any(self._network_contains(m, rr.address) for rr in answer.rrs)

    async def _mx_match(self, target: str, m: Mechanism, entry: TraceEntry) -> bool:
        answer = await self._lookup(target, "MX", entry)
        self._temporary(answer, f"MX {target}")
        if self._void(answer, entry):
            return False
        # A null MX ("0 .", RFC 7505) names no host: nothing to look up (test mx-empty).
        names = [rr.exchange.to_text(omit_final_dot=True) for rr in answer.rrs if rr.exchange != dns.name.root]
        if len(names) > self.options.max_mx_names:
            raise PermError(f"MX {target} names {len(names)} hosts, more than {self.options.max_mx_names} (§4.6.4)")
        for name in sorted(names):
            if domain_problem(name) is None and await self._a_match(name, m, entry, count_void=False):
                return True
        return False

    async def _validated_names(self, entry: TraceEntry | None, *, count_void: bool) -> list[str]:
        """§5.5 steps: PTR of the client IP, then A/AAAA of the first 10 names; names that map back."""
        answer = await self._lookup(reverse_name(self.ip), "PTR", entry)
        if answer.outcome.temporary:
            return []  # §5.5: "If a DNS error occurs while doing the PTR RR lookup, ... fails to match"
        if count_void and entry is not None:
            self._void(answer, entry)
        validated: list[str] = []
        qtype = "A" if self.ip.version == 4 else "AAAA"
        for rr in answer.rrs[: self.options.max_ptr_names]:
            name = rr.target.to_text(omit_final_dot=True)
            if domain_problem(name) is not None:
                continue
            forward = await self._lookup(name, qtype, entry)
            # §5.5: a DNS error on an A lookup skips that name; the search continues.
            if any(ipaddress.ip_address(a.address) == self.ip for a in forward.rrs):
                validated.append(name)
        return validated

    async def _ptr_match(self, target: str, entry: TraceEntry) -> bool:
        wanted = target.rstrip(".").lower()
        for name in await self._validated_names(entry, count_void=True):
            name = name.lower()
            if name == wanted or name.endswith("." + wanted):
                return True
        return False

    async def _p_value(self, domain: str) -> str:
        """§7.3 ``p``: a validated name of the client, preferring ``domain`` and its subdomains."""
        if domain in self._p_cache:
            return self._p_cache[domain]
        entry = self._entry(-1, domain, "%{p}")
        names = await self._validated_names(entry, count_void=False)
        wanted = domain.rstrip(".").lower()
        value = "unknown"
        for choice in (
            [n for n in names if n.lower() == wanted],
            [n for n in names if n.lower().endswith("." + wanted)],
            names,
        ):
            if choice:
                value = choice[0]
                break
        entry.result = value
        self._p_cache[domain] = value
        return value

    # -- macros and explanation ----------------------------------------------------
    async def _macro_value(self, letter: str, domain: str, explanation: bool) -> str:
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
            return await self._p_value(domain)
        if letter == "v":
            return "in-addr" if ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(ip)
        if letter == "r":
            return self.options.receiver
        if letter == "t":
            return str(int(self.options.clock()))
        raise PermError(f"unknown macro letter {letter!r}")  # parse_macro_string prevents this

    async def expand(self, tokens: tuple[MacroToken, ...], domain: str, *, explanation: bool = False) -> str:
        """§7.3/§7.4: expand a tokenized macro-string for the current ``domain``."""
        out: list[str] = []
        size = 0
        for token in tokens:
            if isinstance(token, str):
                piece = token
            elif not token.letter:
                continue  # an escape marker; its text is in the previous literal
            else:
                value = await self._macro_value(token.letter, domain, explanation)
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

    async def _explain(self, record: Record, domain: str, depth: int) -> str:
        """§6.2: the exp= text, or the default; any problem means "no explanation"."""
        default = await self._default_explanation(domain)
        if record.exp is None:
            return default
        entry = self._entry(depth, domain, record.exp_text)
        try:
            target = truncate_domain(await self.expand(record.exp, domain))
        except PermError as exc:
            entry.result = f"ignored: {exc.reason}"
            return default
        entry.target = target
        if domain_problem(target) is not None:
            entry.result = f"ignored: {domain_problem(target)}"
            return default
        answer = await self._lookup(target, "TXT", entry)
        if len(answer.rrs) != 1:  # no record, several, or a DNS error (§6.2)
            entry.result = f"ignored: {len(answer.rrs)} TXT records" if answer.rrs or not answer.outcome.temporary else "ignored: DNS error"
            return default
        text = _txt_strings(answer.rrs[0])
        try:
            explanation = await self.expand(parse_macro_string(text, exp=True), domain, explanation=True)
        except PermError as exc:
            entry.result = f"ignored: {exc.reason}"
            return default
        entry.result = "explanation"
        return explanation

    async def _default_explanation(self, domain: str) -> str:
        try:
            return await self.expand(parse_macro_string(self.options.default_explanation, exp=True), domain, explanation=True)
        except PermError:
            return self.options.default_explanation


async def check_host(
    resolver: Lookups,
    ip: str | IPAddress,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    options: SPFOptions | None = None,
) -> SPFResult:
    """RFC 7208 §4 ``check_host(<ip>, <domain>, <sender>)``; never raises for DNS or record problems.

    ``ip`` must be an IP address (ValueError otherwise: that is a caller's bug, not a result).
    """
    options = options or SPFOptions()
    address = normalize_ip(ip)
    if "@" not in sender:
        sender = f"postmaster@{sender}"
    if sender.startswith("@"):
        sender = "postmaster" + sender  # §4.3: no local-part
    evaluation = _Evaluation(resolver, address, sender, helo, options)
    started = time.perf_counter()
    explanation: str | None = None
    try:
        async with asyncio.timeout(options.timeout):
            result, explanation = await evaluation.check_host(domain, 0, True)
    except SPFError as exc:
        result, evaluation.reason = exc.result, exc.reason
        evaluation._entry(0, domain, "(stop)").result = f"{exc.result}: {exc.reason}"
    except TimeoutError:
        result = TEMPERROR
        evaluation.reason = f"evaluation took longer than {options.timeout:g} s (§4.6.4)"
        evaluation._entry(0, domain, "(stop)").result = f"temperror: {evaluation.reason}"
    return SPFResult(
        result=result,
        sender=sender,
        ip=str(address),
        domain=domain,
        helo=helo,
        explanation=explanation if result == FAIL else None,
        reason=evaluation.reason,
        trace=evaluation.trace,
        dns_terms=evaluation.dns_terms,
        void_lookups=evaluation.voids,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


def identity(sender: str, helo: str) -> tuple[str, str]:
    """The (domain, sender) pair to check: MAIL FROM, or postmaster@HELO for a null sender (§2.4)."""
    if not sender:
        return helo, f"postmaster@{helo}"
    local, at, domain = sender.rpartition("@")
    if not at:
        return sender, f"postmaster@{sender}"
    return domain, f"{local or 'postmaster'}@{domain}"


async def check_sender(
    resolver: Lookups,
    ip: str | IPAddress,
    sender: str,
    helo: str,
    *,
    options: SPFOptions | None = None,
) -> SPFResult:
    """check_host() for an SMTP transaction's MAIL FROM (or HELO identity when it is null)."""
    domain, full_sender = identity(sender, helo)
    return await check_host(resolver, ip, domain, full_sender, helo=helo, options=options)


async def expand_macros(
    resolver: Lookups,
    text: str,
    *,
    ip: str | IPAddress,
    sender: str,
    domain: str,
    helo: str = "",
    explanation: bool = False,
    options: SPFOptions | None = None,
) -> str:
    """Expand one macro-string as check_host() would (§7); raise PermError if it is malformed.

    ``explanation`` selects explain-string rules (c, r, t allowed, SP kept); otherwise
    ``text`` is a domain-spec and the §4.8 left truncation applies. The resolver is
    only used by ``%{p}``.
    """
    evaluation = _Evaluation(resolver, normalize_ip(ip), sender, helo, options or SPFOptions())
    if explanation:
        return await evaluation.expand(parse_macro_string(text, exp=True), domain, explanation=True)
    return truncate_domain(await evaluation.expand(parse_domain_spec(text), domain))
