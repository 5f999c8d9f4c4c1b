"""The shared resolver: every DNS question mxroute asks goes through here.

One async ``Resolver`` over a pluggable ``Transport`` (the network, or zone files
for offline what-if routing). It keeps the four outcomes routing needs distinct
(records / NODATA / NXDOMAIN / temporary failure, the last split into SERVFAIL and
TIMEOUT), follows CNAME chains with a bound and loop detection (RFC 5321 §5.1,
MX-4), caches positive answers by TTL and negative ones by the SOA minimum
(RFC 2308 §5), coalesces concurrent identical questions into one query, notes whether each
answer was DNSSEC-validated (the AD bit, only when ``trust_ad``: TLS-7), and
records every lookup so ``explain`` can show it. ``cached()`` gives the answer
``lookup`` would give from the cache alone, without I/O (the intake's fast path).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rrset

from mxroute.address import parse_dns_server
from mxroute.dns.answer import Answer, Outcome

MAX_CNAME_CHAIN = 16  # as mox; RFC 5321 §5.1 only says "process as if it were the initial name"
# when a negative answer carries no SOA (RFC 2308 §5: SHOULD NOT cache; we cache briefly)
DEFAULT_NEGATIVE_TTL = 60
MAX_TTL = 86400  # cap, as RFC 2308 §5 suggests for negative answers and dnspython does for positive
# a SERVFAIL is remembered briefly so a burst does not hammer a sick server (RFC 2308 §7.1)
TEMPFAIL_TTL = 5


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One question and its answer, as ``explain`` shows it (contract: ``dns`` list)."""

    qname: str
    qtype: str
    rcode: str
    answers: tuple[str, ...]
    ttl: int
    ms: float
    cached: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "qname": self.qname,
            "qtype": self.qtype,
            "rcode": self.rcode,
            "answers": list(self.answers),
            "ttl": self.ttl,
            "ms": round(self.ms, 3),
            "cached": self.cached,
        }


class Lookups(Protocol):
    """What SPF and iprev ask of a resolver: ``lookup`` alone (``Resolver``, or a wrapper)."""

    async def lookup(self, name: str, qtype: str) -> Answer: ...


class Transport(Protocol):
    """Asks one question and returns the raw response; raises dns.exception.Timeout on no answer."""

    async def query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
    ) -> dns.message.Message: ...

    def describe(self) -> str: ...


@dataclass(slots=True)
class _Step:
    """One raw response, classified, for one name in a chain."""

    outcome: Outcome
    rrs: tuple[Any, ...]
    ttl: int
    target: str | None  # when the chain left this response unfinished: the name to ask next
    chain: tuple[tuple[str, str], ...] = ()  # (alias, target) pairs followed inside this response
    detail: str = ""
    secure: bool = False  # the response carried AD and AD is trusted (RFC 6840 §5.7)
    shown: tuple[str, ...] | None = None  # the trace's answers, made once (``texts``)

    def texts(self) -> tuple[str, ...]:
        """The answers as ``explain`` shows them (aliases first), made at most once per step."""
        if self.shown is None:
            self.shown = (tuple(f"CNAME {target}." for _, target in self.chain)
                          + tuple(rr.to_text() for rr in self.rrs))
        return self.shown


@dataclass
class ResolverStats:
    queries: int = 0  # questions sent to the transport
    hits: int = 0  # answered from the cache
    coalesced: int = 0  # answered by joining a question already in flight


class Resolver:
    """Async DNS lookups with a TTL cache, coalescing, CNAME following and a query trace."""

    def __init__(
        self,
        transport: Transport,
        *,
        cache_size: int = 10000,
        trace_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        observers: Sequence[Callable[[str, str, dns.message.Message | None, Outcome], None]] = (),
        trust_ad: bool = False,
    ) -> None:
        self.transport = transport
        # TLS-7: believe the AD bit of the transport's answers (only behind a validating resolver
        # on a trusted path: RFC 4035 §4.9.3, RFC 6840 §5.7); otherwise no answer is ever "secure".
        self.trust_ad = trust_ad
        self.cache_size = cache_size
        self.clock = clock
        self.stats = ResolverStats()
        self.trace: deque[QueryRecord] = deque(maxlen=trace_size)
        self.observers = list(observers)
        self._cache: OrderedDict[tuple[str, str], tuple[float, _Step]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[_Step]] = {}

    def sharing(self, trace_size: int | None = None) -> Resolver:
        """A view of this resolver with a trace of its own: the same transport, cache,
        questions in flight, stats and observers (bulk ``explain``: one ``dns`` list per address,
        every question asked once for them all)."""
        view = copy.copy(self)
        view.trace = deque(maxlen=trace_size)
        return view

    async def lookup(self, name: str, qtype: str) -> Answer:
        """Resolve (name, qtype), following CNAMEs; never raises for DNS failures."""
        chain = _Chain(name, qtype)
        while chain.answer is None:
            chain.add(await self._step(chain.current, chain.qtype))
        return chain.answer

    def cached(self, name: str, qtype: str) -> Answer | None:
        """What ``lookup`` would answer from the cache alone (no I/O, no await), or None."""
        chain = _Chain(name, qtype)
        while chain.answer is None:
            step = self._fresh(chain.current, chain.qtype)
            if step is None:
                return None
            chain.add(step)
        return chain.answer

    def _fresh(self, qname: str, qtype: str) -> _Step | None:
        """The cached step for (qname, qtype) if it has not expired (an expired one is dropped)."""
        key = (qname, qtype)
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, step = entry
        now = self.clock()
        if expires <= now:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        self.stats.hits += 1
        self._record(qname, qtype, step, int(expires - now), 0.0, cached=True)
        return step

    async def _step(self, qname: str, qtype: str) -> _Step:
        key = (qname, qtype)
        fresh = self._fresh(qname, qtype)
        if fresh is not None:
            return fresh
        pending = self._inflight.get(key)
        if pending is not None:
            self.stats.coalesced += 1
            step = await asyncio.shield(pending)
            self._record(qname, qtype, step, step.ttl, 0.0, cached=True)
            return step
        future: asyncio.Future[_Step] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            started = time.perf_counter()
            step = await self._ask(qname, qtype)
            ms = (time.perf_counter() - started) * 1000
            self._store(key, step)
            self._record(qname, qtype, step, step.ttl, ms, cached=False)
            future.set_result(step)
            return step
        except BaseException as exc:  # cancellation: wake the waiters with a temporary failure
            step = _Step(Outcome.TIMEOUT, (), 0, None, detail=f"lookup abandoned: {exc!r}")
            future.set_result(step)
            raise
        finally:
            del self._inflight[key]

    async def _ask(self, qname: str, qtype: str) -> _Step:
        self.stats.queries += 1
        try:
            name = dns.name.from_text(qname)
            rdtype = dns.rdatatype.from_text(qtype)
        except (dns.exception.DNSException, ValueError) as exc:
            return _Step(Outcome.SERVFAIL, (), 0, None, detail=f"cannot ask for {qname!r}: {exc}")
        try:
            response = await self.transport.query(name, rdtype)
        except dns.exception.Timeout:
            step = _Step(Outcome.TIMEOUT, (), TEMPFAIL_TTL, None,
                         detail=f"no answer from {self.transport.describe()}")
            self._notify(qname, qtype, None, step.outcome)
            return step
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            step = _Step(Outcome.SERVFAIL, (), TEMPFAIL_TTL, None,
                         detail=f"{type(exc).__name__}: {exc}")
            self._notify(qname, qtype, None, step.outcome)
            return step
        step = classify(name, rdtype, response)
        authenticated = bool(response.flags & dns.flags.AD)
        step.secure = self.trust_ad and not step.outcome.temporary and authenticated
        self._notify(qname, qtype, response, step.outcome)
        return step

    def _notify(
        self, qname: str, qtype: str, response: dns.message.Message | None, outcome: Outcome,
    ) -> None:
        for observer in self.observers:
            observer(qname, qtype, response, outcome)

    def _store(self, key: tuple[str, str], step: _Step) -> None:
        if step.ttl <= 0:
            return
        self._cache[key] = (self.clock() + step.ttl, step)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _record(
        self, qname: str, qtype: str, step: _Step, ttl: int, ms: float, *, cached: bool,
    ) -> None:
        if self.trace.maxlen == 0:
            return
        self.trace.append(QueryRecord(qname, qtype, step.outcome.value, step.texts(),
                                      max(ttl, 0), ms, cached))


class _Chain:
    """A lookup's walk along a CNAME chain (pure, MX-4): the name to ask next, then the answer."""

    __slots__ = ("answer", "cnames", "current", "qname", "qtype", "secure", "seen", "ttl")

    def __init__(self, name: str, qtype: str) -> None:
        self.qname = self.current = name.lower().rstrip(".")
        self.qtype = qtype.upper()
        self.seen = {self.qname}
        self.cnames: list[str] = []
        self.ttl = MAX_TTL
        self.secure = True  # every step DNSSEC-validated (TLS-7)
        self.answer: Answer | None = None

    def add(self, step: _Step) -> None:
        """Take the step for ``current``: follow its aliases (bounded, loops detected) or finish."""
        self.ttl = min(self.ttl, step.ttl)
        self.secure = self.secure and step.secure
        for alias, target in step.chain:
            if target in self.seen or len(self.cnames) >= MAX_CNAME_CHAIN:
                if target in self.seen:
                    why = "CNAME loop"
                else:
                    why = f"CNAME chain longer than {MAX_CNAME_CHAIN}"
                self.answer = Answer(self.qname, self.qtype, Outcome.CNAME_LOOP, (), 0,
                                     tuple(self.cnames), f"{why} at {alias}")
                return
            self.seen.add(target)
            self.cnames.append(target)
        if step.target is None:
            self.answer = Answer(self.qname, self.qtype, step.outcome, step.rrs, self.ttl,
                                 tuple(self.cnames), step.detail, self.secure)
        else:
            self.current = step.target


def classify(
    qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, response: dns.message.Message,
) -> _Step:
    """Turn one raw response into a classified step (pure; RFC 1034 §3.6.2, RFC 2308 §2)."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return _Step(Outcome.SERVFAIL, (), TEMPFAIL_TTL, None,
                     detail=f"server answered {dns.rcode.to_text(rcode)}")
    # Walk the CNAME chain inside the answer section, answer-section data only (SEC-12).
    name = qname
    chain: list[tuple[str, str]] = []
    seen = {qname}
    ttl = MAX_TTL
    while True:
        rrset = _find(response.answer, name, rdtype)
        if rrset is not None and len(rrset):
            ttl = min(ttl, rrset.ttl)
            return _Step(Outcome.RECORDS, tuple(rrset), ttl, None, chain=tuple(chain))
        alias = None
        if rdtype != dns.rdatatype.CNAME:
            alias = _find(response.answer, name, dns.rdatatype.CNAME)
        if alias is None or not len(alias):
            break
        target = alias[0].target
        ttl = min(ttl, alias.ttl)
        chain.append((_text(name), _text(target)))
        if target in seen or len(chain) > MAX_CNAME_CHAIN:
            return _Step(Outcome.CNAME_LOOP, (), 0, None, chain=tuple(chain),
                         detail=f"CNAME loop at {_text(name)}")
        seen.add(target)
        name = target
    if chain:
        # The chain ended inside this response without records of the asked type.
        # Servers differ in what the rcode then speaks for (RFC 6604), so the last
        # target is asked again: exact, and cached like any other name.
        return _Step(Outcome.RECORDS, (), ttl, chain[-1][1], chain=tuple(chain))
    negative_ttl = _negative_ttl(response)
    if rcode == dns.rcode.NXDOMAIN:
        return _Step(Outcome.NXDOMAIN, (), negative_ttl, None)
    return _Step(Outcome.NODATA, (), negative_ttl, None)


def _find(
    section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


def _negative_ttl(response: dns.message.Message) -> int:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) of the authority section's SOA."""
    for rrset in response.authority:
        soa = rrset[0] if len(rrset) else None
        if isinstance(soa, dns.rdtypes.ANY.SOA.SOA):
            return min(rrset.ttl, soa.minimum, MAX_TTL)
    return DEFAULT_NEGATIVE_TTL


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


@dataclass(frozen=True)
class Server:
    """A DNS server to ask: an IP address and a port."""

    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Server:
        """Parse ``ip``, ``ip:port``, ``[v6]:port`` or ``v6`` (``address.parse_dns_server``)."""
        return cls(*parse_dns_server(text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class NetworkTransport:
    """Asks real servers: UDP, TCP when truncated (RFC 7766 §5), the next server on failure."""

    servers: list[Server]
    timeout: float = 5.0  # per query and server
    attempts: int = 2  # rounds over the server list
    edns_payload: int = 1232  # the DNS Flag Day 2020 figure, safe from fragmentation
    # set AD in queries: ask a validating resolver for its verdict (RFC 6840 §5.7)
    authenticated_data: bool = False
    _rotate: int = field(default=0, repr=False)

    @classmethod
    def system(
        cls, timeout: float = 5.0, attempts: int = 2, authenticated_data: bool = False,
    ) -> NetworkTransport:
        """The servers of /etc/resolv.conf (no search list is ever applied: MX-1)."""
        import dns.resolver

        try:
            conf = dns.resolver.Resolver(configure=True)
            servers = [Server(ns, conf.port) for ns in conf.nameservers if isinstance(ns, str)]
        except (dns.resolver.NoResolverConfiguration, OSError):
            servers = []
        return cls(servers or [Server("127.0.0.1")], timeout, attempts,
                   authenticated_data=authenticated_data)

    def describe(self) -> str:
        return ", ".join(str(s) for s in self.servers)

    async def query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
    ) -> dns.message.Message:
        import dns.asyncquery

        request = dns.message.make_query(qname, rdtype, use_edns=0, payload=self.edns_payload)
        request.flags |= dns.flags.RD
        if self.authenticated_data:
            request.flags |= dns.flags.AD
        # dnspython: DNSException.__init__ is unannotated
        last: Exception = dns.exception.Timeout()  # type: ignore[no-untyped-call, unused-ignore]
        for _ in range(self.attempts):
            for server in self.servers:
                try:
                    response = await dns.asyncquery.udp(
                        request, server.host, timeout=self.timeout, port=server.port,
                        ignore_unexpected=True,
                    )
                    if response.flags & dns.flags.TC:
                        response = await dns.asyncquery.tcp(
                            request, server.host, timeout=self.timeout, port=server.port,
                        )
                except (dns.exception.Timeout, OSError, EOFError, dns.exception.FormError) as exc:
                    last = exc
                    continue
                failed = response.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED)
                if failed and len(self.servers) > 1:
                    last_response = response
                    last = _Failed(last_response)
                    continue
                return response
        if isinstance(last, _Failed):
            return last.response
        raise last


class _Failed(Exception):
    def __init__(self, response: dns.message.Message) -> None:
        self.response = response
