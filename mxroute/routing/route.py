"""Gather the DNS facts for a destination, then plan: the one routing path.

``route()`` is what delivery calls on every attempt (MX-18: re-resolved each
time, the resolver's cache honouring TTLs) and what ``explain`` calls to show
it. The DNS I/O lives here; every decision lives in ``plan.build_plan``. It returns
the plan with the destination's TLS level (``Route``): the one place that level is looked up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from mxroute.address import parse_literal
from mxroute.dns.answer import Answer, Outcome
from mxroute.dns.resolver import Resolver
from mxroute.routing.plan import (
    MAX_MX_NAMES,
    WILDCARDS,
    Decision,
    DomainFacts,
    HostFacts,
    Plan,
    RoutingPolicy,
    Verdict,
    blocked,
    build_plan,
    is_ip_name,
    mx_records,
)
from mxroute.routing.rules import Chosen, choose
from mxroute.settings import Settings
from mxroute.settingsrules import Level
from mxroute.tls.mtasts.fetch import Reach
from mxroute.tls.policy import ROUTES_SOURCE, STATUS, TlsPolicy, of_settings

if TYPE_CHECKING:  # DANE loads where a destination's TLS level is dane
    from mxroute.tls import dane


async def gather(
    resolver: Resolver, domain: str, policy: RoutingPolicy, chosen: Chosen | None = None,
) -> DomainFacts:
    """Ask DNS everything ``build_plan`` needs for ``domain`` (an A-label name or a literal); with
    a ``routes`` rule (issue 16), about its next hop instead: the MX of ``host:port``, else
    only the host's addresses (nothing for an IP)."""
    if chosen is not None:
        hop = chosen.rule.next_hop
        if hop.literal is not None:
            facts = DomainFacts(hop.host, literal=hop.literal)
        elif hop.mx:
            facts = await gather(resolver, hop.host, policy)
        else:
            facts = DomainFacts(hop.host, hosts={hop.host: await _host(resolver, hop.host, policy)})
        return DomainFacts(domain, route=chosen, hop=facts)
    if domain.startswith("["):
        return DomainFacts(domain, literal=parse_literal(domain))
    mx = await resolver.lookup(domain, "MX")
    if mx.outcome is Outcome.RECORDS:
        best = sorted(mx_records(mx), key=lambda r: r.preference)[:MAX_MX_NAMES]
        names = [r.exchange for r in best]
        names = [n for n in dict.fromkeys(names) if n != "." and not is_ip_name(n)]
    elif mx.outcome is Outcome.NODATA:
        names = [mx.canonical]  # MX-7: implicit MX
    else:
        names = []
    hosts = await asyncio.gather(*(_host(resolver, name, policy) for name in names))
    return DomainFacts(domain, mx=mx, hosts={h.name: h for h in hosts})


async def _host(resolver: Resolver, name: str, policy: RoutingPolicy) -> HostFacts:
    families = policy.families
    a_task = resolver.lookup(name, "A") if 4 in families else None
    aaaa_task = resolver.lookup(name, "AAAA") if 6 in families else None
    a = await a_task if a_task else None
    aaaa = await aaaa_task if aaaa_task else None
    return HostFacts(name, a=a, aaaa=aaaa)


@dataclass(frozen=True, slots=True)
class Route:
    """What ``route()`` found for a destination: the plan, and the TLS level delivery applies.

    ``tls`` is looked up once, here, from ``tls_policy`` and ``tls_policy_domains`` (TLS-3):
    routing needs it for DANE (TLS-7), the courier applies it and ``explain`` shows it (EXP-3).
    Whether MTA-STS is consulted follows from both (``tls.mtasts.skip_reason``); its fetch is the
    caller's step, made only when it is needed.
    """

    plan: Plan
    tls: TlsPolicy


async def route(
    resolver: Resolver, domain: str, policy: RoutingPolicy, rng: random.Random, settings: Settings,
    sender: str | None = None,
) -> Route:
    """The ordered delivery plan for ``domain`` and its TLS level: gather facts, then decide.

    ``sender``: the envelope sender ("" the null sender; None unknown, as for ``explain``
    without ``--sender``: rules naming a sender do not apply), for the ``routes`` rules.
    """
    chosen = choose(settings.routes, domain, sender)
    tls = of_settings(domain, settings) if chosen is None else routed_tls(chosen, settings)
    facts = await gather(resolver, domain, policy, chosen)
    plan = build_plan(facts, policy, rng)
    dane_facts = facts.hop if facts.hop is not None else facts
    port = chosen.rule.next_hop.port if chosen is not None else policy.port
    if tls.level == "dane" and dane_facts.literal is None:  # TLS-7: the planned hosts' posture
        posture = await _dane(resolver, dane_facts, plan, port)
        decisions = plan.decisions + tuple(Decision(*line) for line in posture.decisions())
        plan = dataclasses.replace(plan, dane=posture, decisions=decisions)
        if plan.deliverable and posture.unreachable:  # RFC 7672 §2.2: no host may be tried now
            plan = dataclasses.replace(plan, verdict=Verdict.TEMPORARY, reason=posture.unreachable,
                                       dsn_status=STATUS)
    return Route(plan, tls)


def routed_tls(chosen: Chosen, settings: Settings) -> TlsPolicy:
    """The TLS level at a rule's next hop (issue 16): the rule's (``verify`` with auth or
    smtps://), else ``tls_policy``; never ``tls_policy_domains`` (keyed by recipient domain)."""
    level = chosen.tls_level or cast(Level, settings.tls_policy)  # validated by check_level
    return TlsPolicy(level=level, source=ROUTES_SOURCE,
                     match=f"rule {chosen.number}")


async def _dane(resolver: Resolver, facts: DomainFacts, plan: Plan, port: int) -> dane.DanePosture:
    """TLSA lookups for the planned hosts whose MX RRset and addresses are secure (RFC 7672 2.2)."""
    from mxroute.tls import dane

    hosts: dict[str, list[Answer | None]] = {}
    for target in plan.targets:
        host = facts.hosts.get(target.exchange)
        if host is not None and target.exchange not in hosts:
            hosts[target.exchange] = [host.a, host.aaaa]
    mx = facts.mx
    if mx is None and facts.literal is None:  # a [host] next hop (issue 16): no MX was asked;
        # its address records stand for the MX RRset (secure when validated), as Postfix's DANE
        found = [a for h in hosts.values() for a in h if a and a.outcome is Outcome.RECORDS]
        mx = found[0] if found else None
    asked = [name for name, answers in hosts.items() if dane.wants_tlsa(mx, answers)]
    answers = await asyncio.gather(
        *(resolver.lookup(dane.tlsa_name(name, port), "TLSA") for name in asked))
    return dane.posture(facts.domain, mx, hosts, dict(zip(asked, answers)))


def policy_from_settings(settings: Settings) -> RoutingPolicy:
    """The routing policy a relay with these settings applies."""
    names = {settings.helo_name.lower()}
    addresses = set(settings.egress_ips)
    listeners = tuple(settings.listen_addresses())
    for host, port in listeners:
        # A listener is "this relay" for routing only where delivery would dial it:
        # the same port (a relay on :2525 delivering to a local MTA on :25 is no loop).
        if port == settings.smtp_port and host not in WILDCARDS:
            addresses.add(host)
    return RoutingPolicy(
        family=settings.address_family,
        port=settings.smtp_port,
        address_limit=settings.mx_address_limit,
        allow_private=settings.allow_private_destinations,
        self_names=frozenset(names),
        self_addresses=frozenset(addresses),
        listeners=listeners,
        egress=frozenset(settings.egress_ips),
    )


def mta_sts_reach(settings: Settings) -> Reach:
    """Where an MTA-STS policy fetch may connect (TLS-5): the settings' port and CA bundle, and
    routing's address family order and SEC-11 screen, as for delivery."""
    policy = policy_from_settings(settings)
    screen = None if policy.allow_private else blocked
    return Reach(settings.mta_sts_port, settings.tls_ca_file, policy.families, screen)
