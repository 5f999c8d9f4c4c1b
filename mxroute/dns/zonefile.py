"""Zone files as a DNS backend, and the recorder that writes them.

``ZoneData`` answers questions from RFC 1035 zone files as an authoritative
server would (CNAME chains, wildcards, NODATA vs NXDOMAIN with the enclosing
SOA for negative TTLs). ``ZoneTransport`` puts it behind the resolver's
``Transport`` interface for ``--zone``; the tests' loopback DNS server serves
the same data over the wire.

Three comment directives express what a zone file cannot: a server failure, a
dropped query and a DNSSEC-validated answer, so a recorded session (``explain
--record``) replays exactly::

    ; mxroute: SERVFAIL example.com MX
    ; mxroute: TIMEOUT example.net        (every type)
    ; mxroute: SECURE example.org MX      (answered with AD when the query sets AD; TLS-7)
    ; mxroute: SECURE .example.org        (every name and type under example.org)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.zonefile

from mxroute.dns.answer import Outcome

_DIRECTIVE = re.compile(r"^\s*;\s*mxroute:\s*(SERVFAIL|TIMEOUT|SECURE)\s+(\S+)(?:\s+(\S+))?\s*$",
                        re.IGNORECASE | re.MULTILINE)
# RFC 6895 §3.1 private-use type: marks a name that exists with no records of the asked type.
EXISTS_MARKER = dns.rdatatype.RdataType.make(65280)
MAX_CHAIN = 16


@dataclass
class ZoneData:
    """Resource records by owner name, plus names that fail or time out."""

    nodes: dict[dns.name.Name, dns.node.Node] = field(default_factory=dict)
    failures: dict[tuple[dns.name.Name, int | None], str] = field(default_factory=dict)
    # TLS-7: (name, type or None) a validating resolver would call secure; a name with a leading
    # "." covers every name under it. Lower-case, no trailing dot.
    secure: set[tuple[str, int | None]] = field(default_factory=set)
    # (node count it was computed at, the zone apexes): apexes() once per change, not per name
    _apexes: tuple[int, frozenset[dns.name.Name]] | None = field(default=None, repr=False)
    # (node count, every proper ancestor of an owner name): the empty non-terminals and above,
    # so a name's existence is one set lookup, not a walk over every owner (bulk explain --zone)
    _enclosers: tuple[int, frozenset[dns.name.Name]] | None = field(default=None, repr=False)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> ZoneData:
        data = cls()
        for path in paths:
            data.load_text(Path(path).read_text(encoding="utf-8"), str(path))
        return data

    def load_text(self, text: str, source: str = "<zone>") -> None:
        """Add the records of one zone file (absolute names, or relative to its $ORIGIN)."""
        for rrset in parse_zone_text(text, source):
            node = self.nodes.setdefault(rrset.name, dns.node.Node())  # type: ignore[no-untyped-call, unused-ignore]  # dnspython: unannotated
            existing = node.find_rdataset(rrset.rdclass, rrset.rdtype, create=True)
            # dnspython: Rdataset.update is unannotated
            existing.update(rrset)  # type: ignore[no-untyped-call, unused-ignore]
        for kind, name, rdtype in _DIRECTIVE.findall(text):
            if kind.upper() == "SECURE":
                self.mark_secure(name, rdtype or None)
                continue
            key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype) if rdtype else None)
            self.failures[key] = kind.upper()

    def add(self, name: str, rdtype: str, ttl: int, *rdatas: str, origin: str = ".") -> None:
        """Add records given as presentation text (``add("a.test", "MX", 300, "10 mx.a.test.")``).

        ``name`` is absolute (the final dot optional). Relative names inside the
        rdata are completed with ``origin``, as a zone file's ``$ORIGIN`` would;
        every stored name is absolute (never relativized), so answers render
        and CNAME chains are followed.
        """
        base = dns.name.from_text(origin)
        owner = dns.name.from_text(name)
        kind = dns.rdatatype.from_text(rdtype)
        node = self.nodes.setdefault(owner, dns.node.Node())  # type: ignore[no-untyped-call, unused-ignore]  # dnspython: unannotated
        rdataset = node.find_rdataset(dns.rdataclass.IN, kind, create=True)
        for text in rdatas:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=base,
                                        relativize=False)
            rdataset.add(rdata, ttl)

    def fail(self, name: str, kind: str = "SERVFAIL", rdtype: str | None = None) -> None:
        """Make questions for ``name`` (of ``rdtype``, or any) answer SERVFAIL or time out."""
        qtype = dns.rdatatype.from_text(rdtype) if rdtype else None
        self.failures[(dns.name.from_text(name), qtype)] = kind.upper()

    def mark_secure(self, name: str, rdtype: str | None = None) -> None:
        """Answers for ``name`` (of ``rdtype``, or any; ".name": the subtree) carry AD when asked
        (TLS-7)."""
        qtype = dns.rdatatype.from_text(rdtype) if rdtype else None
        self.secure.add((name.lower().rstrip("."), qtype))

    def is_secure(self, qname: dns.name.Name, rdtype: int) -> bool:
        name = qname.to_text(omit_final_dot=True).lower()
        for owner, kind in self.secure:
            if kind not in (None, rdtype):
                continue
            below = owner.startswith(".") and (name.endswith(owner) or name == owner[1:])
            if owner == name or below:
                return True
        return False

    def answer(self, request: dns.message.Message) -> dns.message.Message | None:
        """The authoritative response to ``request``, or None when it should be dropped.

        AD is set, as a validating resolver sets it, only when the query asked with AD or DO
        (RFC 6840 §5.7) and the question is marked secure.
        """
        response = self._answer(request)
        if response is not None and response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) \
                and (request.flags & dns.flags.AD or request.ednsflags & dns.flags.DO) \
                and self.is_secure(request.question[0].name, request.question[0].rdtype):
            response.flags |= dns.flags.AD
        return response

    def _answer(self, request: dns.message.Message) -> dns.message.Message | None:
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        question = request.question[0]
        qname, rdtype = question.name, question.rdtype
        name = qname
        for _ in range(MAX_CHAIN):
            failure = self.failures.get((name, rdtype)) or self.failures.get((name, None))
            if failure == "TIMEOUT":
                return None
            if failure == "SERVFAIL":
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            node = self._node(name)
            if node is None:
                if not self._exists(name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    self._add_soa(response, name)
                    return response
                self._add_soa(response, name)
                return response
            found = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if found is not None and rdtype != EXISTS_MARKER:
                response.answer.append(_rrset(name, found))
                return response
            alias = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if alias is None or rdtype == dns.rdatatype.CNAME:
                self._add_soa(response, name)
                return response
            response.answer.append(_rrset(name, alias))
            name = alias[0].target
        return response

    def _node(self, name: dns.name.Name) -> dns.node.Node | None:
        node = self.nodes.get(name)
        if node is not None:
            return node
        # Wildcard (RFC 4592): the closest encloser's "*" child, if the name does not exist.
        if self._exists(name):
            return None
        parent = name
        while len(parent) > 1:
            parent = parent.parent()
            wild = self.nodes.get(dns.name.Name((b"*",) + parent.labels))
            if wild is not None:
                return wild
            if self._exists(parent):
                return None
        return None

    def _exists(self, name: dns.name.Name) -> bool:
        """The name owns records or is an empty non-terminal."""
        if name in self.nodes:
            return True
        if self._enclosers is None or self._enclosers[0] != len(self.nodes):
            self._enclosers = (len(self.nodes), frozenset(
                ancestor for owner in self.nodes for ancestor in _ancestors(owner)))
        return name in self._enclosers[1]

    def apexes(self) -> frozenset[dns.name.Name]:
        """The loaded zones: the owners of SOA records, and for names outside those, the topmost
        owner names (records without an SOA are a zone at each name no other name encloses)."""
        if self._apexes is None or self._apexes[0] != len(self.nodes):
            soa = {name for name, node in self.nodes.items()
                   if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA) is not None}
            rest = {name for name in self.nodes
                    if name not in soa and not any(a in soa for a in _ancestors(name))}
            tops = {name for name in rest if not any(a in rest for a in _ancestors(name))}
            self._apexes = (len(self.nodes), frozenset(soa | tops))
        return self._apexes[1]

    def zone_of(self, domain: str) -> str | None:
        """The loaded zone ``domain`` is in (its apex, no final dot), or None: outside every one
        (issue 16 §2: explain says so, instead of a bare NXDOMAIN)."""
        try:
            name = dns.name.from_text(domain)
        except (dns.exception.DNSException, ValueError):
            return None
        apexes = self.apexes()
        for candidate in (name, *_ancestors(name)):
            if candidate in apexes:
                return str(candidate.to_text(omit_final_dot=True))
        return None

    def _add_soa(self, response: dns.message.Message, name: dns.name.Name) -> None:
        zone = name
        while True:
            node = self.nodes.get(zone)
            soa = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA) if node else None
            if soa is not None:
                response.authority.append(_rrset(zone, soa))
                return
            if len(zone) <= 1:
                return
            zone = zone.parent()


def _ancestors(name: dns.name.Name) -> list[dns.name.Name]:
    """The names enclosing ``name``, nearest first, the root excluded."""
    found = []
    while len(name) > 2:
        name = name.parent()
        found.append(name)
    return found


def parse_zone_text(text: str, source: str = "<zone>") -> list[dns.rrset.RRset]:
    """Parse RFC 1035 master-file text into RRsets, honouring $ORIGIN and $TTL.

    Unlike ``dns.zone`` this takes records of many zones in one file (several
    SOAs), which is what a recording of one routing decision holds.
    """
    manager = _AnyOriginManager(dns.name.root, False, dns.rdataclass.IN)
    try:
        # dnspython: RRSetsReaderManager.writer is unannotated
        with manager.writer(True) as txn:  # type: ignore[no-untyped-call, unused-ignore]
            tokenizer = dns.tokenizer.Tokenizer(text, source)
            reader = dns.zonefile.Reader(tokenizer, dns.rdataclass.IN, txn, allow_include=False,
                                         allow_directives=True)
            reader.read()
    except dns.exception.DNSException as exc:
        raise ValueError(str(exc)) from None
    return manager.rrsets


class _AnyName(dns.name.Name):
    """Compares equal to every name: lets an SOA stand at any owner in one file."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = dns.name.Name.__hash__


class _AnyOriginManager(dns.zonefile.RRSetsReaderManager):
    def origin_information(self) -> tuple[dns.name.Name | None, bool, object]:  # type: ignore[override]
        return (self.origin, self.relativize, _AnyName([b""]))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    # dnspython: Rdataset.update is unannotated
    rrset.update(rdataset)  # type: ignore[no-untyped-call, unused-ignore]
    return rrset


class ZoneTransport:
    """The resolver's transport answered from zone files: offline what-if routing (``--zone``)."""

    def __init__(
        self, data: ZoneData, sources: list[str] | None = None, authenticated_data: bool = False,
    ) -> None:
        self.data = data
        self.sources = sources or []
        # ask with AD, as NetworkTransport does (TLS-7)
        self.authenticated_data = authenticated_data

    def describe(self) -> str:
        return "zone files " + ", ".join(self.sources) if self.sources else "zone data"

    def zone_of(self, domain: str) -> str | None:
        """The loaded zone holding ``domain``, or None (``ZoneData.zone_of``)."""
        return self.data.zone_of(domain)

    async def query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
    ) -> dns.message.Message:
        import dns.exception

        query = dns.message.make_query(qname, rdtype)
        if self.authenticated_data:
            query.flags |= dns.flags.AD
        response = self.data.answer(query)
        if response is None:
            # dnspython: DNSException.__init__ is unannotated
            raise dns.exception.Timeout()  # type: ignore[no-untyped-call, unused-ignore]
        return response


class Recorder:
    """Collects every response the resolver sees and writes them as a replayable zone file."""

    def __init__(self) -> None:
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.exists: set[dns.name.Name] = set()
        self.failures: dict[tuple[str, str], str] = {}
        self.secure: set[tuple[str, str]] = set()  # answers that carried AD (TLS-7)

    def __call__(
        self, qname: str, qtype: str, response: dns.message.Message | None, outcome: Outcome,
    ) -> None:
        if outcome in (Outcome.SERVFAIL, Outcome.TIMEOUT):
            self.failures[(qname, qtype)] = outcome.value
            return
        if response is None:
            return
        if response.flags & dns.flags.AD:
            self.secure.add((qname, qtype))
        for rrset in [*response.answer, *response.authority]:
            if rrset.rdtype in (dns.rdatatype.NS, dns.rdatatype.RRSIG, dns.rdatatype.NSEC,
                                dns.rdatatype.NSEC3):
                continue
            self.rrsets.setdefault((rrset.name, rrset.rdtype), rrset)
        if outcome == Outcome.NODATA:
            self.exists.add(dns.name.from_text(qname))

    def zone_text(self, comment: str = "") -> str:
        lines = ["; recorded by mxroute explain --record; replay with --zone", "$ORIGIN ."]
        if comment:
            lines.insert(1, f"; {comment}")
        for (qname, qtype), kind in sorted(self.failures.items()):
            lines.append(f"; mxroute: {kind} {qname}. {qtype}")
        for qname, qtype in sorted(self.secure):
            lines.append(f"; mxroute: SECURE {qname}. {qtype}")
        owners = {name for name, _ in self.rrsets}
        for key in sorted(self.rrsets, key=lambda k: (k[0].to_text(), k[1])):
            lines.append(self.rrsets[key].to_text())
        for name in sorted(self.exists - owners, key=lambda n: n.to_text()):
            lines.append(f"{name.to_text()} 300 IN TYPE65280 \\# 0")
        return "\n".join(lines) + "\n"
