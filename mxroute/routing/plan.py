"""The routing plan: facts about a domain → the ordered addresses delivery will try.

A pure function (no I/O, no clock; randomness is injected) implementing RFC 5321
§5.1 and RFC 7505. ``explain`` and delivery call the same ``build_plan`` on the
same facts, so what ``explain`` shows is what delivery does. Every decision
carries the rule it applied and its RFC clause.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mxroute.address import IPAddress
from mxroute.dns.answer import Answer, Outcome

if TYPE_CHECKING:
    from mxroute.routing.rules import Chosen
    from mxroute.tls.dane import DanePosture

Family = Literal["ipv6-first", "ipv4-first", "ipv4-only", "ipv6-only"]

# SEC-11: never dialled unless allow_private_destinations (explicit list, not
# ipaddress.is_private alone: CVE-2024-4032 and version drift).
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8",
    )
)
MAX_MX_NAMES = 32  # SEC-12: an MX RRset is processed up to this many names


class Verdict(enum.Enum):
    DELIVERABLE = "deliverable"
    TEMPORARY = "temporary-failure"
    PERMANENT = "permanent-failure"


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """The settings the planner depends on (``routing.route.policy_from_settings``)."""

    family: Family = "ipv6-first"
    port: int = 25
    address_limit: int = 5  # MX-16, Postfix smtp_mx_address_limit
    allow_private: bool = False  # SEC-11
    self_names: frozenset[str] = frozenset()  # MX-11: helo_name and other names of this relay
    self_addresses: frozenset[str] = frozenset()  # MX-11: listen and egress addresses
    # issue 16: every (host, port) this relay listens on, and its egress addresses: what "this
    # relay" is at a next hop's port (``for_next_hop``)
    listeners: tuple[tuple[str, int], ...] = ()
    egress: frozenset[str] = frozenset()
    self_loopback: bool = False  # MX-11: every loopback address is this relay (a wildcard listener)

    @property
    def families(self) -> tuple[int, ...]:
        """Address families to look up, in preference order."""
        orders = {"ipv6-first": (6, 4), "ipv4-first": (4, 6), "ipv4-only": (4,), "ipv6-only": (6,)}
        return orders[self.family]


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What DNS said about one exchange: its A and AAAA answers (absent: not asked)."""

    name: str
    a: Answer | None = None
    aaaa: Answer | None = None

    def answer(self, family: int) -> Answer | None:
        return self.a if family == 4 else self.aaaa


@dataclass(frozen=True, slots=True)
class DomainFacts:
    """Everything DNS said that routing needs for one domain (gathered by routing.gather)."""

    domain: str
    literal: IPAddress | None = None
    mx: Answer | None = None
    hosts: dict[str, HostFacts] = field(default_factory=dict)
    # issue 16: the ``routes`` rule sending ``domain`` to its next hop, and the facts about that
    # hop (its MX for ``host:port``, else only its addresses; nothing for an IP)
    route: Chosen | None = None
    hop: DomainFacts | None = None


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    exchange: str
    ttl: int

    def to_json(self) -> dict[str, Any]:
        return {"preference": self.preference, "exchange": self.exchange, "ttl": self.ttl}


@dataclass(frozen=True, slots=True)
class Target:
    """One address delivery will try, in order."""

    exchange: str
    preference: int
    address: str
    family: int
    port: int

    def to_json(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "preference": self.preference,
            "address": self.address,
            "family": self.family,
            "port": self.port,
        }

    def __str__(self) -> str:
        shown = f"[{self.address}]" if self.family == 6 else self.address
        if self.exchange:
            return f"{self.exchange}[{self.address}]:{self.port}"
        return f"{shown}:{self.port}"


@dataclass(frozen=True, slots=True)
class Pruned:
    """An exchange or address delivery will not try, and why."""

    exchange: str | None
    address: str | None
    reason: str  # a stable code: blocked-address, self, no-address, ...
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "address": self.address, "reason": self.reason,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Decision:
    """One step of the reasoning, with the rule it applied."""

    rule: str  # e.g. "MX-3"
    ref: str  # e.g. "RFC 5321 §5.1"
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "ref": self.ref, "text": self.text}


@dataclass(frozen=True, slots=True)
class Plan:
    """The routing decision for one domain: a verdict and the ordered targets."""

    domain: str
    verdict: Verdict
    reason: str
    dsn_status: str  # the enhanced status a DSN or deferral would carry (RFC 3463)
    null_mx: bool = False
    implicit_mx: bool = False
    cnames: tuple[str, ...] = ()
    mx: tuple[MxRecord, ...] = ()
    targets: tuple[Target, ...] = ()
    pruned: tuple[Pruned, ...] = ()
    decisions: tuple[Decision, ...] = ()
    # TLS-7: set by routing.route() for destinations at the TLS level "dane"
    dane: DanePosture | None = None
    # issue 16: the ``routes`` rule that sent this destination to its next hop (None: the MX)
    route: Chosen | None = None

    @property
    def deliverable(self) -> bool:
        return self.verdict is Verdict.DELIVERABLE


def blocked(address: IPAddress) -> str | None:
    """Why ``address`` may not be dialled by default (SEC-11), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or _nat64(address) or _compat(address)
        if embedded is not None:
            why = blocked(embedded)
            return f"embeds {embedded}: {why}" if why else None
    for network in BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return f"{address} is in {network} (loopback/private/link-local/reserved)"
    return None


@functools.lru_cache(maxsize=65536)
def record_address(text: str) -> tuple[str, str | None]:
    """An A/AAAA record's address: its normal text and why it is ``blocked`` (or None).
    Remembered: a bulk ``explain`` plans the same hosts' addresses again and again."""
    address = ipaddress.ip_address(text)
    return str(address), blocked(address)


def _nat64(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _compat(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    value = int(address)
    if value >> 32 == 0 and value > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(value)
    return None


@functools.lru_cache(maxsize=65536)
def is_ip_name(name: str) -> bool:
    """An MX exchange written as an address (MX-12): never to be dialled as one (remembered)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def mx_records(answer: Answer) -> list[MxRecord]:
    """The MX RRset as records (exchange lower-case, no trailing dot; "." stays ".")."""
    records = []
    for rr in answer.rrs:
        exchange = rr.exchange.to_text(omit_final_dot=True).lower() or "."
        records.append(MxRecord(int(rr.preference), exchange, answer.ttl))
    return records


def is_null_mx(records: list[MxRecord]) -> bool:
    """RFC 7505 §3: the domain's only MX record has the exchange "." (it accepts no mail)."""
    return len(records) == 1 and records[0].exchange == "."


WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def build_plan(facts: DomainFacts, policy: RoutingPolicy, rng: random.Random) -> Plan:
    """Decide, from DNS facts alone, the ordered addresses delivery will try."""
    if facts.route is not None and facts.hop is not None:
        return _next_hop_plan(facts.domain, facts.route, facts.hop, policy, rng)
    return _Planner(facts, policy, rng).plan()


def for_next_hop(policy: RoutingPolicy, port: int) -> RoutingPolicy:
    """The policy at a configured next hop on ``port`` (issue 16): private and loopback addresses
    allowed (the operator chose it, as Postfix trusts ``relayhost``); "this relay" (MX-11) is a
    listener on that port: its address, or with a wildcard listener every loopback and egress
    address."""
    ours = [host for host, listening in policy.listeners if listening == port]
    wildcard = any(host in WILDCARDS for host in ours)
    addresses = frozenset(h for h in ours if h not in WILDCARDS)
    return dataclasses.replace(
        policy, port=port, allow_private=True,
        self_names=policy.self_names if ours else frozenset(),
        self_addresses=addresses | (policy.egress if wildcard else frozenset()),
        self_loopback=wildcard)


def _next_hop_plan(
    domain: str, chosen: Chosen, hop: DomainFacts, policy: RoutingPolicy, rng: random.Random,
) -> Plan:
    """The plan for ``domain`` at ``chosen``'s next hop: the hop's own plan (its MX, or its
    addresses alone), with the rule named first; a hop that cannot be used defers."""
    next_hop = chosen.rule.next_hop
    how = ("the MX of " + next_hop.host if next_hop.mx else
           "the address given" if next_hop.literal is not None else
           f"the addresses of {next_hop.host} (no MX lookup)")
    first = Decision("ROUTE", f"routes rule {chosen.number}",
                     f"{domain} is routed by {chosen.describe()}: delivery goes to {how} at "
                     f"port {next_hop.port}, not to the MX of {domain}; private addresses "
                     "allowed for a configured next hop")
    if next_hop.literal is not None:  # an IP next hop: no DNS at all
        hop = DomainFacts(next_hop.host, literal=next_hop.literal)
    planner = _Planner(hop, for_next_hop(policy, next_hop.port), rng)
    inner = planner.plan() if hop.literal is not None or hop.mx is not None else planner.host()
    plan = dataclasses.replace(inner, domain=domain, route=chosen,
                               implicit_mx=inner.implicit_mx and next_hop.mx,
                               decisions=(first, *inner.decisions))
    if plan.deliverable:
        return plan
    status = "4" + plan.dsn_status[1:]
    last = Decision("ROUTE", f"routes rule {chosen.number}",
                    f"next hop {next_hop} is not usable: deferred ({status}) and retried, "
                    "never bounced (fix the rule or the hop)")
    return dataclasses.replace(
        plan, verdict=Verdict.TEMPORARY, dsn_status=status,
        reason=f"next hop {next_hop} (routes rule {chosen.number}): {plan.reason}",
        decisions=(*plan.decisions, last))


class _Planner:
    def __init__(self, facts: DomainFacts, policy: RoutingPolicy, rng: random.Random) -> None:
        self.facts = facts
        self.policy = policy
        self.rng = rng
        self.decisions: list[Decision] = []
        self.pruned: list[Pruned] = []
        self.temporary: list[str] = []

    def decide(self, rule: str, ref: str, text: str) -> None:
        self.decisions.append(Decision(rule, ref, text))

    def prune(self, exchange: str | None, address: str | None, reason: str, detail: str) -> None:
        self.pruned.append(Pruned(exchange, address, reason, detail))

    def result(self, verdict: Verdict, reason: str, status: str, **kw: Any) -> Plan:
        cnames = self.facts.mx.cnames if self.facts.mx else ()
        return Plan(
            self.facts.domain, verdict, reason, status, cnames=cnames,
            pruned=tuple(self.pruned), decisions=tuple(self.decisions), **kw,
        )

    def plan(self) -> Plan:
        facts = self.facts
        if facts.literal is not None:
            return self.literal(facts.literal)
        mx = facts.mx
        assert mx is not None, "gather() looks up MX for every non-literal domain"
        domain = facts.domain
        if mx.cnames:
            self.decide("MX-4", "RFC 5321 §5.1",
                        f"{domain} is an alias: followed CNAME chain {' -> '.join(mx.cnames)}")
        if mx.outcome is Outcome.NXDOMAIN:
            self.decide("MX-5", "RFC 5321 §5.1",
                        f"{domain} does not exist (NXDOMAIN): permanent error, no retry")
            return self.result(Verdict.PERMANENT, f"domain {domain} does not exist (NXDOMAIN)",
                               "5.1.2")
        if mx.outcome.temporary:
            self.decide("MX-6", "RFC 5321 §5.1",
                        f"MX lookup failed temporarily ({mx.outcome.value}): queue and retry, "
                        "never fall back to implicit MX")
            detail = f": {mx.detail}" if mx.detail else ""
            reason = f"MX lookup for {domain} failed: {mx.outcome.value}{detail}"
            return self.result(Verdict.TEMPORARY, reason, "4.4.3")
        implicit = mx.outcome is Outcome.NODATA
        if implicit:
            self.decide("MX-7", "RFC 5321 §5.1",
                        f"{domain} has no MX records: implicit MX, the domain itself at "
                        "preference 0")
            records = [MxRecord(0, mx.canonical, mx.ttl)]
        else:
            records = mx_records(mx)
            if len(records) > MAX_MX_NAMES:
                self.decide("SEC-12", "RFC 1035 §4.2.1",
                            f"{len(records)} MX records: only the {MAX_MX_NAMES} best are used")
                records = sorted(records, key=lambda r: r.preference)[:MAX_MX_NAMES]
        shown_mx = () if implicit else tuple(sorted(records, key=lambda r: (r.preference,
                                                                          r.exchange)))
        if is_null_mx(records):
            self.decide("MX-10", "RFC 7505 §3", f"{domain} publishes a null MX: it accepts no mail")
            return self.result(
                Verdict.PERMANENT, f"domain {domain} does not accept mail (null MX, RFC 7505)",
                "5.1.10", null_mx=True, mx=shown_mx,
            )
        return self.exchanges(records, shown_mx, implicit)

    def host(self) -> Plan:
        """A next hop in brackets (issue 16): the addresses of one host, as an implicit MX."""
        return self.exchanges([MxRecord(0, self.facts.domain, 0)], (), implicit=True)

    def exchanges(
        self, records: list[MxRecord], shown_mx: tuple[MxRecord, ...], implicit: bool,
    ) -> Plan:
        """From the MX records to the plan: prune (MX-10, MX-12), order (MX-2/3, MX-11), address."""
        domain = self.facts.domain
        for _ in (r for r in records if r.exchange == "."):
            self.prune(".", None, "null-mx-mixed",
                       "a null MX beside other MX records is invalid and ignored (RFC 7505 §3)")
        usable = []
        for record in (r for r in records if r.exchange != "."):
            if is_ip_name(record.exchange):
                self.prune(record.exchange, None, "numeric-mx-target",
                           "an MX exchange must be a host name, never dialled as an address "
                           "(RFC 5321 §5.1, MX-12)")
            else:
                usable.append(record)
        ordered = self.drop_self(self.sort(usable))
        if ordered is None:
            reason = f"mail for {domain} loops back to myself"
            return self.result(Verdict.PERMANENT, reason, "5.4.6", mx=shown_mx,
                               implicit_mx=implicit)
        targets = self.addresses(ordered)
        targets = self.cap(targets)
        if targets:
            return self.result(
                Verdict.DELIVERABLE, f"{len(targets)} address(es) to try", "2.0.0",
                mx=shown_mx, implicit_mx=implicit, targets=tuple(targets),
            )
        if self.temporary:
            self.decide("MX-9", "RFC 5321 §5.1",
                        "no usable address, but a lookup failed temporarily: retry later")
            return self.result(
                Verdict.TEMPORARY,
                f"no usable address for {domain} yet: {'; '.join(self.temporary)}", "4.4.3",
                mx=shown_mx, implicit_mx=implicit,
            )
        self.decide("MX-9", "RFC 5321 §5.1", "no MX host has a usable address: permanent error")
        what = "the domain has no address" if implicit else "no usable MX host"
        return self.result(
            Verdict.PERMANENT, f"{what} for {domain}", "5.4.4", mx=shown_mx, implicit_mx=implicit,
        )

    def literal(self, address: IPAddress) -> Plan:
        domain = self.facts.domain
        self.decide("MX-13", "RFC 5321 §4.1.3", f"{domain} is an address literal: no DNS lookup")
        family = address.version
        if family not in self.policy.families:
            self.prune(None, str(address), "family-disabled",
                       f"IPv{family} is disabled (address_family={self.policy.family})")
        elif self.is_self_address(address):
            self.prune(None, str(address), "self",
                       f"{address} is this relay (RFC 5321 §5.1, MX-11)")
            return self.result(Verdict.PERMANENT, f"mail for {domain} loops back to myself",
                               "5.4.6")
        elif (why := blocked(address)) and not self.policy.allow_private:
            self.prune(None, str(address), "blocked-address", why)
        else:
            target = Target("", 0, str(address), family, self.policy.port)
            return self.result(Verdict.DELIVERABLE, "1 address to try", "2.0.0", targets=(target,))
        return self.result(Verdict.PERMANENT,
                           f"address literal {domain} is not a usable destination", "5.4.4")

    def sort(self, records: list[MxRecord]) -> list[MxRecord]:
        """MX-2: by preference, lowest first; MX-3: equal preferences in random order."""
        groups: dict[int, list[MxRecord]] = {}
        for record in records:
            groups.setdefault(record.preference, []).append(record)
        ordered: list[MxRecord] = []
        for preference in sorted(groups):
            group = sorted(groups[preference], key=lambda r: r.exchange)
            if len(group) > 1:
                self.rng.shuffle(group)
                names = ", ".join(r.exchange for r in group)
                self.decide("MX-3", "RFC 5321 §5.1",
                            f"preference {preference}: equal preferences shuffled -> {names}")
            ordered.extend(group)
        if len(groups) > 1 or len(records) > 1:
            shown = ", ".join(f"{r.preference} {r.exchange}" for r in ordered)
            self.decide("MX-2", "RFC 5321 §5.1", "sorted by preference: " + shown)
        return ordered

    def drop_self(self, records: list[MxRecord]) -> list[MxRecord] | None:
        """MX-11: drop this relay and every exchange of equal or higher preference."""
        for record in records:
            why = self.is_self(record.exchange)
            if why is None:
                continue
            cutoff = record.preference
            kept = [r for r in records if r.preference < cutoff]
            for dropped in records:
                if dropped.preference >= cutoff:
                    detail = why if dropped is record else (
                        f"preference {dropped.preference} >= {cutoff} of this relay's own MX entry")
                    self.prune(dropped.exchange, None, "self", detail)
            self.decide("MX-11", "RFC 5321 §5.1", f"{record.exchange} is this relay ({why}): "
                        f"kept only preferences below {cutoff}")
            if not kept:
                self.decide("MX-11", "RFC 5321 §5.1",
                            "nothing remains: mail loops back to myself (5.4.6)")
                return None
            return kept
        return records

    def is_self_address(self, address: IPAddress) -> bool:
        """MX-11: ``address`` is one of this relay's (at the port being planned)."""
        return str(address) in self.policy.self_addresses or (
            self.policy.self_loopback and address.is_loopback)

    def is_self(self, exchange: str) -> str | None:
        if exchange in self.policy.self_names:
            return f"{exchange} is this relay's name"
        host = self.facts.hosts.get(exchange)
        if host is None:
            return None
        for family in self.policy.families:
            answer = host.answer(family)
            if answer is None or answer.outcome is not Outcome.RECORDS:
                continue
            for rr in answer.rrs:
                if self.is_self_address(ipaddress.ip_address(rr.address)):
                    return f"{exchange} resolves to {rr.address}, an address of this relay"
        return None

    def addresses(self, records: list[MxRecord]) -> list[Target]:
        """MX-14/15: each exchange's addresses, families in the configured order."""
        targets: list[Target] = []
        seen: set[str] = set()
        for record in records:
            host = self.facts.hosts.get(record.exchange, HostFacts(record.exchange))
            found = 0
            for family in self.policy.families:
                answer = host.answer(family)
                if answer is None:
                    continue
                told = any(d.rule == "MX-12" and d.text.startswith(record.exchange + " ")
                           for d in self.decisions)
                if answer.cnames and not told:
                    self.decide("MX-12", "RFC 2181 §10.3",
                                f"{record.exchange} is an alias ({' -> '.join(answer.cnames)}): "
                                "followed, but MX targets must not be aliases")
                if answer.outcome.temporary:
                    kind = "AAAA" if family == 6 else "A"
                    self.temporary.append(
                        f"{kind} lookup for {record.exchange} failed: {answer.outcome.value}")
                    continue
                for rr in answer.rrs:
                    text, why = record_address(rr.address)
                    if why and not self.policy.allow_private:
                        self.prune(record.exchange, text, "blocked-address",
                                   why + " (SEC-11; allow_private_destinations=false)")
                        continue
                    if text in seen:
                        self.prune(record.exchange, text, "duplicate-address",
                                   f"{text} is already in the plan")
                        continue
                    seen.add(text)
                    targets.append(Target(record.exchange, record.preference, text, family,
                                          self.policy.port))
                    found += 1
            failing = any((a := host.answer(f)) is not None and a.outcome.temporary
                          for f in self.policy.families)
            pruned = any(p.exchange == record.exchange for p in self.pruned)
            if found == 0 and not failing and not pruned:
                families = "/".join("AAAA" if f == 6 else "A" for f in self.policy.families)
                self.prune(record.exchange, None, "no-address",
                           f"{record.exchange} has no {families} record")
        if len(self.policy.families) == 2:
            first, second = self.policy.families
            self.decide("MX-15", "RFC 3974 §3", f"each host's IPv{first} addresses before its "
                        f"IPv{second} addresses (address_family={self.policy.family})")
        else:
            self.decide("MX-14", "RFC 5321 §5.2", f"only IPv{self.policy.families[0]} is used "
                        f"(address_family={self.policy.family})")
        return targets

    def cap(self, targets: list[Target]) -> list[Target]:
        """MX-16: at most address_limit addresses, shared between the families.

        As Postfix's smtp_balance_inet_protocols: when both families are present,
        each keeps up to half of the budget, so one broken family cannot use it all.
        """
        limit = self.policy.address_limit
        if len(targets) <= limit:
            return targets
        counts = {4: sum(t.family == 4 for t in targets), 6: sum(t.family == 6 for t in targets)}
        reserve = {f: min(counts[f], limit // 2) for f in (4, 6)} if limit >= 2 else {4: 0, 6: 0}
        taken = {4: 0, 6: 0}
        kept: list[Target] = []
        for target in targets:
            other = 10 - target.family
            ceiling = limit - reserve[other]
            if len(kept) < limit and taken[target.family] < ceiling:
                kept.append(target)
                taken[target.family] += 1
            else:
                self.prune(target.exchange, target.address, "over-limit",
                           f"beyond mx_address_limit={limit} (MX-16)")
        self.decide("MX-16", "RFC 5321 §5.1",
                    f"at most {limit} addresses per attempt, shared between IPv6 and IPv4")
        return kept


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The routing part of the contract's ``explain --json`` object."""
    return {
        "status": plan.verdict.value,
        "reason": plan.reason,
        "dsn_status": plan.dsn_status,
        "null_mx": plan.null_mx,
        "implicit_mx": plan.implicit_mx,
        "cnames": list(plan.cnames),
        "mx": [r.to_json() for r in plan.mx],
        "plan": [t.to_json() for t in plan.targets],
        "pruned": [p.to_json() for p in plan.pruned],
        "decisions": [d.to_json() for d in plan.decisions],
        "route": plan.route.to_json() if plan.route is not None else None,
    }

