"""SPF ``check_host()`` (RFC 7208 §4): evaluate a parsed record with DNS lookups.

Records are fetched through ``mxroute.dns.resolver`` (every lookup, so ``explain``
shows it and the cache serves repeats). The §4.6.4 limits (10 DNS-querying terms,
2 void lookups, 10 MX / PTR names) and an overall time bound apply, and every term
is recorded in the trace. Nothing here raises for bad DNS data or hostile records:
every path ends in one of the seven §2.6 results.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.name

from mxroute.address import IPAddress
from mxroute.dns.answer import Answer, Outcome
from mxroute.dns.resolver import Lookups
from mxroute.identity.ip import normalize_ip, reverse_name
from mxroute.identity.spf.macros import (
    Expander,
    MacroToken,
    parse_domain_spec,
    parse_macro_string,
)
from mxroute.identity.spf.names import domain_problem, qname, truncate_domain
from mxroute.identity.spf.parse import Mechanism, Record, is_spf_record, parse_record
from mxroute.identity.spf.results import (
    FAIL,
    NEUTRAL,
    NONE,
    PASS,
    SOFTFAIL,
    TEMPERROR,
    PermError,
    SPFError,
    SPFResult,
    TempError,
    TraceEntry,
)


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


def _txt_strings(rr: Any) -> str:
    """One TXT RR's strings joined with no separator (§3.3); bytes kept one-to-one."""
    return b"".join(rr.strings).decode("latin-1")


class _Evaluation:
    """State of one check_host() call: counters shared across include/redirect (§4.6.4)."""

    def __init__(
        self, resolver: Lookups, ip: IPAddress, sender: str, helo: str, options: SPFOptions
    ) -> None:
        self.resolver = resolver
        self.ip = ip
        self.options = options
        self.macros = Expander(
            ip, sender, helo,
            receiver=options.receiver, clock=options.clock, validated_name=self._p_value,
        )
        self.dns_terms = 0
        self.voids = 0
        self.trace: list[TraceEntry] = []
        self._p_cache: dict[str, str] = {}
        self.reason = ""

    # -- bookkeeping ---------------------------------------------------------
    def entry(self, depth: int, domain: str, term: str) -> TraceEntry:
        """A new trace entry, carrying the counters as they stand."""
        entry = TraceEntry(depth, domain, term, dns_terms=self.dns_terms, void_lookups=self.voids)
        self.trace.append(entry)
        return entry

    def _count_term(self, entry: TraceEntry) -> None:
        self.dns_terms += 1
        entry.dns_terms = self.dns_terms
        if self.dns_terms > self.options.max_dns_terms:
            raise PermError(
                f"more than {self.options.max_dns_terms} DNS-querying terms (§4.6.4)"
            )

    def _void(self, answer: Answer, entry: TraceEntry) -> bool:
        """Count a void lookup (NXDOMAIN, or NOERROR with no answers) toward the §4.6.4 limit."""
        if answer.outcome not in (Outcome.NXDOMAIN, Outcome.NODATA) and (
            answer.outcome != Outcome.RECORDS or answer.rrs
        ):
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
    async def check_host(
        self, domain: str, depth: int, want_exp: bool
    ) -> tuple[str, str | None]:
        """§4: the result for ``domain``, and the explanation when it is fail and ``want_exp``."""
        entry = self.entry(depth, domain, "record")
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

    async def _evaluate(
        self, record: Record, domain: str, depth: int, want_exp: bool
    ) -> tuple[str, str | None]:
        for mechanism in record.mechanisms:
            entry = self.entry(depth, domain, mechanism.text)
            if mechanism.queries_dns:
                self._count_term(entry)
            matched = await self._match(mechanism, domain, depth, entry)
            entry.result = "match" if matched else "no match"
            if matched:
                entry.result = f"match -> {mechanism.result}"
                self.reason = f"{domain}: {mechanism.text} matched"
                explanation = None
                if mechanism.result == FAIL and want_exp:
                    explanation = await self._explain(record, domain, depth)
                return mechanism.result, explanation
        if record.redirect is not None:
            return await self._redirect(record, domain, depth, want_exp)
        self.entry(depth, domain, "(default)").result = "no match -> neutral (§4.7)"
        self.reason = f"{domain}: no mechanism matched"
        return NEUTRAL, None

    async def _redirect(
        self, record: Record, domain: str, depth: int, want_exp: bool
    ) -> tuple[str, str | None]:
        """§6.1: used only when no mechanism matched (so never with "all")."""
        entry = self.entry(depth, domain, record.redirect_text)
        self._count_term(entry)
        target = await self._target(record.redirect, domain, entry)
        if target is None or domain_problem(target) is not None:
            raise PermError(f"redirect target {target!r} is not a valid domain (§6.1)")
        result, explanation = await self.check_host(target, depth + 1, want_exp)
        entry.result = f"redirect -> {result}"
        if result == NONE:
            raise PermError(f"redirect target {target} has no SPF record (§6.1)")
        return result, explanation

    # -- mechanisms ------------------------------------------------------------
    async def _target(
        self, spec: tuple[MacroToken, ...] | None, domain: str, entry: TraceEntry
    ) -> str:
        if spec is None:
            entry.target = domain
            return domain
        target = truncate_domain(await self.macros.expand(spec, domain))
        entry.target = target
        return target

    async def _match(self, m: Mechanism, domain: str, depth: int, entry: TraceEntry) -> bool:
        family = self.ip.version
        if m.name == "all":
            return True
        if m.network is not None:  # ip4 / ip6 (§5.6): a family mismatch is no match
            return m.network.version == family and self.ip in m.network
        target = await self._target(m.spec, domain, entry)
        if m.name == "include":
            return await self._include(target, depth)
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

    async def _include(self, target: str, depth: int) -> bool:
        if domain_problem(target) is not None:
            raise PermError(f"include target {target!r} is not a valid domain (§5.2)")
        result, _ = await self.check_host(target, depth + 1, False)
        # §5.2 table: pass -> match; fail/softfail/neutral -> no match; errors propagate.
        if result == PASS:
            return True
        if result in (FAIL, SOFTFAIL, NEUTRAL):
            return False
        raise PermError(f"include:{target} gave none (§5.2)")

    def _network_contains(self, m: Mechanism, address: Any) -> bool:
        bits = m.cidr4 if self.ip.version == 4 else m.cidr6
        network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
        return self.ip in network

    async def _a_match(
        self, name: str, m: Mechanism, entry: TraceEntry, *, count_void: bool
    ) -> bool:
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
        names = [
            rr.exchange.to_text(omit_final_dot=True)
            for rr in answer.rrs
            if rr.exchange != dns.name.root
        ]
        limit = self.options.max_mx_names
        if len(names) > limit:
            raise PermError(f"MX {target} names {len(names)} hosts, more than {limit} (§4.6.4)")
        for name in sorted(names):
            if domain_problem(name) is None and await self._a_match(
                name, m, entry, count_void=False
            ):
                return True
        return False

    async def _validated_names(self, entry: TraceEntry | None, *, count_void: bool) -> list[str]:
        """§5.5: PTR of the client IP, then A/AAAA of the first 10 names; names that map back."""
        answer = await self._lookup(reverse_name(self.ip), "PTR", entry)
        if answer.outcome.temporary:
            # §5.5: "If a DNS error occurs while doing the PTR RR lookup, ... fails to match"
            return []
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
        entry = self.entry(-1, domain, "%{p}")
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

    # -- explanation -------------------------------------------------------------
    async def _explain(self, record: Record, domain: str, depth: int) -> str:
        """§6.2: the exp= text, or the default; any problem means "no explanation"."""
        default = await self._default_explanation(domain)
        if record.exp is None:
            return default
        entry = self.entry(depth, domain, record.exp_text)
        try:
            target = truncate_domain(await self.macros.expand(record.exp, domain))
        except PermError as exc:
            entry.result = f"ignored: {exc.reason}"
            return default
        entry.target = target
        if domain_problem(target) is not None:
            entry.result = f"ignored: {domain_problem(target)}"
            return default
        answer = await self._lookup(target, "TXT", entry)
        if len(answer.rrs) != 1:  # no record, several, or a DNS error (§6.2)
            if answer.rrs or not answer.outcome.temporary:
                entry.result = f"ignored: {len(answer.rrs)} TXT records"
            else:
                entry.result = "ignored: DNS error"
            return default
        try:
            explanation = await self.explain_text(_txt_strings(answer.rrs[0]), domain)
        except PermError as exc:
            entry.result = f"ignored: {exc.reason}"
            return default
        entry.result = "explanation"
        return explanation

    async def _default_explanation(self, domain: str) -> str:
        try:
            return await self.explain_text(self.options.default_explanation, domain)
        except PermError:
            return self.options.default_explanation

    async def explain_text(self, text: str, domain: str) -> str:
        """An explain-string (§6.2) expanded for ``domain``; raise PermError if malformed."""
        return await self.macros.expand(
            parse_macro_string(text, exp=True), domain, explanation=True
        )


async def check_host(
    resolver: Lookups,
    ip: str | IPAddress,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    options: SPFOptions | None = None,
) -> SPFResult:
    """RFC 7208 §4 ``check_host(<ip>, <domain>, <sender>)``; never raises for DNS or records.

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
        evaluation.entry(0, domain, "(stop)").result = f"{exc.result}: {exc.reason}"
    except TimeoutError:
        result = TEMPERROR
        evaluation.reason = f"evaluation took longer than {options.timeout:g} s (§4.6.4)"
        evaluation.entry(0, domain, "(stop)").result = f"temperror: {evaluation.reason}"
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
    """The (domain, sender) to check: MAIL FROM, or postmaster@HELO for a null sender (§2.4)."""
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
        return await evaluation.explain_text(text, domain)
    return truncate_domain(await evaluation.macros.expand(parse_domain_spec(text), domain))
