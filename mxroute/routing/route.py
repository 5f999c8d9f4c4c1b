"""Gather the DNS facts for a destination, then plan: the one routing path.

``route()`` is what delivery calls on every attempt (MX-18: re-resolved each
time, the resolver's cache honouring TTLs) and what ``explain`` calls to show
it. The DNS I/O lives here; every decision lives in ``plan.build_plan``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

from mxroute.address import parse_literal
from mxroute.dns.resolver import Answer, Outcome, Resolver
from mxroute.routing.plan import (
    MAX_MX_NAMES,
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
from mxroute.settings import Settings, parse_hostport
from mxroute.tls import dane
from mxroute.tls.mtasts.fetch import Reach
from mxroute.tls.policy import STATUS, policy_for


async def gather(resolver: Resolver, domain: str, policy: RoutingPolicy) -> DomainFacts:
    """Ask DNS everything ``build_plan`` needs for ``domain`` (an A-label name or a literal)."""
    if domain.startswith("["):
        return DomainFacts(domain, literal=parse_literal(domain))
    mx = await resolver.lookup(domain, "MX")
    if mx.outcome is Outcome.RECORDS:
        names = [r.exchange for r in sorted(mx_records(mx), key=lambda r: r.preference)[:MAX_MX_NAMES]]
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


async def route(resolver: Resolver, domain: str, policy: RoutingPolicy, rng: random.Random) -> Plan:
    """The ordered delivery plan for ``domain``: gather facts, then decide."""
    facts = await gather(resolver, domain, policy)
    plan = build_plan(facts, policy, rng)
    if wants_dane(policy, domain):  # TLS-7: the DANE posture of the planned hosts
        posture = await _dane(resolver, facts, plan, policy.port)
        decisions = plan.decisions + tuple(Decision(*line) for line in posture.decisions())
        plan = dataclasses.replace(plan, dane=posture, decisions=decisions)
        if plan.deliverable and posture.unreachable:  # RFC 7672 §2.2: no host may be tried now
            plan = dataclasses.replace(plan, verdict=Verdict.TEMPORARY, reason=posture.unreachable, dsn_status=STATUS)
    return plan


def wants_dane(policy: RoutingPolicy, domain: str) -> bool:
    """Is ``domain`` at the TLS level "dane" (an MX host name to look TLSA records up for)?"""
    if domain.startswith("["):
        return False
    return policy_for(domain, policy.tls_policy, dict(policy.tls_policy_domains)).level == "dane"


async def _dane(resolver: Resolver, facts: DomainFacts, plan: Plan, port: int) -> dane.DanePosture:
    """TLSA lookups for the planned hosts whose MX RRset and addresses are secure (RFC 7672 §2.2)."""
    hosts: dict[str, list[Answer | None]] = {}
    for target in plan.targets:
        host = facts.hosts.get(target.exchange)
        if host is not None and target.exchange not in hosts:
            hosts[target.exchange] = [host.a, host.aaaa]
    asked = [name for name, answers in hosts.items() if dane.wants_tlsa(facts.mx, answers)]
    answers = await asyncio.gather(*(resolver.lookup(dane.tlsa_name(name, port), "TLSA") for name in asked))
    return dane.posture(plan.domain, facts.mx, hosts, dict(zip(asked, answers)))


def policy_from_settings(settings: Settings) -> RoutingPolicy:
    """The routing policy a relay with these settings applies."""
    names = {settings.helo_name.lower()}
    addresses = set(settings.egress_ips)
    for host, port in (parse_hostport(item, 2525) for item in settings.listen):
        # A listener is "this relay" for routing only where delivery would dial it:
        # the same port (a relay on :2525 delivering to a local MTA on :25 is no loop).
        if port == settings.smtp_port and host not in ("0.0.0.0", "::", ""):
            addresses.add(host)
    return RoutingPolicy(
        family=settings.address_family,
        port=settings.smtp_port,
        address_limit=settings.mx_address_limit,
        allow_private=settings.allow_private_destinations,
        self_names=frozenset(names),
        self_addresses=frozenset(addresses),
        tls_policy=settings.tls_policy,
        tls_policy_domains=tuple(sorted(settings.tls_policy_domains.items())),
    )


def mta_sts_reach(settings: Settings) -> Reach:
    """Where an MTA-STS policy fetch may connect (TLS-5): the settings' port and CA bundle, and
    routing's address family order and SEC-11 screen, as for delivery."""
    policy = policy_from_settings(settings)
    screen = None if policy.allow_private else blocked
    return Reach(settings.mta_sts_port, settings.tls_ca_file, policy.families, screen)


def resolver_from_settings(settings: Settings, zones: list[str] | None = None, trace_size: int | None = 0) -> Resolver:
    """The shared resolver as the settings (or ``--zone`` files) configure it.

    ``trace_size`` 0 keeps no trace (the daemon); None keeps every query (``explain``).
    """
    from mxroute.dns.resolver import NetworkTransport, Transport

    transport: Transport
    if zones:
        # dns.zonefile and friends only when asked for: explain's start-up stays short
        from mxroute.dns.zonefile import ZoneData, ZoneTransport

        transport = ZoneTransport(ZoneData.from_files(zones), list(zones), authenticated_data=settings.dns_trust_ad)
    elif settings.dns_servers:
        transport = NetworkTransport(settings.dns_server_list(), settings.dns_timeout, settings.dns_attempts,
                                     authenticated_data=settings.dns_trust_ad)
    else:
        transport = NetworkTransport.system(settings.dns_timeout, settings.dns_attempts, settings.dns_trust_ad)
    return Resolver(transport, cache_size=settings.dns_cache_size, trace_size=trace_size,
                    trust_ad=settings.dns_trust_ad)
