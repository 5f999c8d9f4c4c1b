"""DANE for outbound SMTP (RFC 7672; TLS-7): what each MX host needs, does its certificate match.

The TLS level ``dane`` (Postfix's ``smtp_tls_security_level = dane`` with
``smtp_dns_support_level = dnssec``) asks, per MX host of the plan:

* the MX RRset (or the secure denial behind an implicit MX) and the host's address
  records must be DNSSEC-secure, else DANE does not apply and the host gets ``may``
  (RFC 7672 §2.2.1, §2.2.2; "secure" = the trusted resolver set AD, ``dns_trust_ad``);
* then the TLSA RRset at ``_PORT._tcp.<mx host>`` (§2.2.3):

  ========================================  =========================================
  TLSA lookup                               the host needs
  ========================================  =========================================
  SERVFAIL, timeout (bogus data is SERVFAIL  ``defer``: no delivery to this host now,
  at a validating resolver)                  4.7.5, the next MX is tried (§2.2)
  no records, or records not secure          ``may`` (§2.2)
  a usable DANE-EE(3) / DANE-TA(2) record    ``dane``: TLS whose certificate matches (§3.1)
  only unusable records                      ``encrypt``: TLS, not authenticated (§3.1.3)
  ========================================  =========================================

Usable here: DANE-EE(3) with selector 0 (full certificate) or 1 (SPKI) and matching
type 0 (exact), 1 (SHA-256) or 2 (SHA-512), matched against the leaf alone, with
no name and no expiry check (§3.1.1); DANE-TA(2) only as ``2 0 0``, the full
trust-anchor certificate, loaded as the only trust anchor of the handshake, which
then checks the chain and the MX host name (§3.1.2, §3.2.2). Other DANE-TA forms
need the peer's certificate chain, which Python 3.11's ``ssl`` does not expose:
they are unusable, as are PKIX-TA(0) and PKIX-EE(1) (§3.1.3). When a host has both
usable DANE-EE and DANE-TA records the handshake is unverified and only the
DANE-EE records are checked (one handshake checks one kind). SNI is the MX host name.
Not done: for an MX host name that is a CNAME (itself against RFC 2181 §10.3, MX-12) the
TLSA records are looked up at the MX name only, not first at the expanded name (§2.2.2).

Pure apart from building an SSL context; the TLSA lookups are in ``routing.route``,
the handshake in the courier. The records themselves are ``tls.tlsa``'s.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mxroute.dns.answer import Answer, Outcome
from mxroute.tls.policy import STATUS, TlsPolicy
from mxroute.tls.tlsa import DANE_EE, Tlsa


class Need(enum.Enum):
    """What delivery to one MX host needs under the level ``dane``."""

    MAY = "may"  # DANE does not apply to this host: opportunistic TLS
    DANE = "dane"  # authenticated TLS: the certificate must match a usable TLSA record
    ENCRYPT = "encrypt"  # only unusable TLSA records: TLS mandatory, certificate not checked
    DEFER = "defer"  # the TLSA lookup failed: do not deliver to this host now


@dataclass(frozen=True, slots=True)
class HostDane:
    """The DANE verdict for one MX host, with the facts behind it (EXP-3)."""

    exchange: str
    need: Need
    reason: str
    addresses_secure: bool
    tlsa_name: str | None = None  # None: not looked up
    tlsa_outcome: str | None = None  # "NOERROR", "NODATA", "SERVFAIL", ...
    tlsa_secure: bool = False
    records: tuple[Tlsa, ...] = ()

    @property
    def usable(self) -> tuple[Tlsa, ...]:
        return tuple(r for r in self.records if r.problem is None)

    def to_json(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange, "requirement": self.need.value, "reason": self.reason,
            "addresses_secure": self.addresses_secure, "tlsa_name": self.tlsa_name,
            "tlsa_lookup": self.tlsa_outcome, "tlsa_secure": self.tlsa_secure,
            "records": [r.to_json() for r in self.records],
        }


@dataclass(frozen=True, slots=True)
class DanePosture:
    """DANE for one destination domain: the MX RRset's status and each planned host's verdict."""

    domain: str
    mx_secure: bool
    hosts: tuple[HostDane, ...] = ()

    def host(self, exchange: str) -> HostDane | None:
        return next((h for h in self.hosts if h.exchange == exchange), None)

    @property
    def unreachable(self) -> str | None:
        """When the TLSA lookup of every planned host failed, why nothing can be tried now
        (else None)."""
        if not self.hosts or any(h.need is not Need.DEFER for h in self.hosts):
            return None
        failed = ", ".join(f"{h.tlsa_name} ({h.tlsa_outcome})" for h in self.hosts)
        return f"DANE: the TLSA lookup of every MX host of {self.domain} failed: {failed}"

    def decisions(self) -> tuple[tuple[str, str, str], ...]:
        """The reasoning lines ``explain`` shows: (rule, reference, text)."""
        mx = "secure" if self.mx_secure else "not DNSSEC-validated"
        lines = [("TLS-7", "RFC 7672 §2.2.1",
                  f"TLS level dane: the MX RRset of {self.domain} is {mx}")]
        lines += [("TLS-7", "RFC 7672 §2.2", f"{h.exchange}: {h.need.value}: {h.reason}")
                  for h in self.hosts]
        return tuple(lines)

    def to_json(self) -> dict[str, Any]:
        return {"mx_secure": self.mx_secure, "hosts": [h.to_json() for h in self.hosts]}


def tlsa_name(exchange: str, port: int) -> str:
    """Where the TLSA records of an MX host are (RFC 7672 §2.2.3, RFC 6698 §3)."""
    return f"_{port}._tcp.{exchange}"


def addresses_secure(answers: Sequence[Answer | None]) -> bool:
    """The host's address lookups are secure: every one that found records was validated
    (§2.2.2)."""
    found = [a for a in answers if a is not None and a.outcome is Outcome.RECORDS]
    return bool(found) and all(a.secure for a in found)


def decide_host(exchange: str, *, mx_secure: bool, addresses: Sequence[Answer | None],
                tlsa: Answer | None) -> HostDane:
    """What delivery to ``exchange`` needs, from its DNS facts alone (see the module docstring)."""
    secure = addresses_secure(addresses)
    if not mx_secure:
        return HostDane(exchange, Need.MAY, "the MX RRset is not DNSSEC-validated: no DANE, as may "
                        "(RFC 7672 §2.2.1)", secure)
    if not secure:
        return HostDane(exchange, Need.MAY, "its address records are not DNSSEC-validated: "
                        "no DANE, as may (RFC 7672 §2.2.2)", secure)
    if tlsa is None:
        return HostDane(exchange, Need.MAY, "no TLSA lookup was made: as may", secure)

    def verdict(need: Need, why: str, records: tuple[Tlsa, ...] = ()) -> HostDane:
        return HostDane(exchange, need, why, secure, tlsa.qname, tlsa.outcome.value, tlsa.secure,
                        records)

    if tlsa.outcome.temporary:
        return verdict(Need.DEFER, f"TLSA lookup failed ({tlsa.outcome.value}): not delivering to "
                                   "this host now (RFC 7672 §2.2)")
    if tlsa.outcome is not Outcome.RECORDS or not tlsa.rrs:
        kind = "secure denial" if tlsa.secure else "not DNSSEC-validated"
        return verdict(Need.MAY, f"no TLSA records ({kind}): as may (RFC 7672 §2.2)")
    records = tuple(Tlsa.from_rdata(rr) for rr in tlsa.rrs)
    if not tlsa.secure:
        return verdict(Need.MAY, "TLSA records not DNSSEC-validated are ignored: as may "
                                 "(RFC 7672 §2.2)", records)
    usable = [r for r in records if r.problem is None]
    if usable:
        return verdict(Need.DANE, f"{len(usable)} usable TLSA record(s): TLS with a matching "
                                  "certificate required (RFC 7672 §3.1)", records)
    return verdict(Need.ENCRYPT, "only unusable TLSA records: TLS required, certificate not "
                                 "authenticated (RFC 7672 §3.1.3, §2.2)", records)


def posture(domain: str, mx: Answer | None, hosts: Mapping[str, Sequence[Answer | None]],
            tlsa: Mapping[str, Answer]) -> DanePosture:
    """The DANE posture of ``domain``: ``hosts`` maps each planned exchange to its address answers,
    ``tlsa`` each exchange whose TLSA records were asked for to that answer."""
    mx_secure = mx is not None and mx.secure and mx.outcome in (Outcome.RECORDS, Outcome.NODATA)
    return DanePosture(domain, mx_secure, tuple(
        decide_host(name, mx_secure=mx_secure, addresses=answers, tlsa=tlsa.get(name))
        for name, answers in hosts.items()))


def wants_tlsa(mx: Answer | None, addresses: Sequence[Answer | None]) -> bool:
    """Is a TLSA lookup due for a host with these address answers (MX and addresses secure,
    §2.2)?"""
    return mx is not None and mx.secure and addresses_secure(addresses)


# --- what the courier asks --------------------------------------------------------------------

def host_policy(policy: TlsPolicy, dane: DanePosture | None, exchange: str) -> TlsPolicy:
    """The TLS policy for one MX host: DANE's where it applies, else ``policy`` (the domain's).

    DANE takes precedence over any other policy for that host (RFC 8461 §2: over MTA-STS).
    """
    host = dane.host(exchange) if dane is not None and exchange else None
    if host is None or host.need in (Need.MAY, Need.DEFER):  # DEFER: see deferral()
        return policy
    if host.need is Need.DANE:
        return TlsPolicy("dane", "dane", host.tlsa_name, tlsa=host.usable)
    return TlsPolicy("encrypt", "dane", host.tlsa_name)


def deferral(dane: DanePosture | None, exchange: str, target: str) -> str | None:
    """The reply for a host delivery must skip because its TLSA lookup failed, or None."""
    host = dane.host(exchange) if dane is not None and exchange else None
    if host is None or host.need is not Need.DEFER:
        return None
    return (f"451 {STATUS} DANE: TLSA lookup {host.tlsa_name} failed ({host.tlsa_outcome}): "
            f"not delivering to {target}")


def ta_context(records: Sequence[Tlsa]) -> ssl.SSLContext | None:
    """The handshake context for DANE-TA-only hosts: the ``2 0 0`` certificates as the only trust
    anchors (partial chains allowed), the MX name checked. None: DANE-EE records decide, after an
    unverified handshake (``peer_problem``)."""
    usable = [r for r in records if r.problem is None]
    if not usable or any(r.usage == DANE_EE for r in usable):
        return None
    anchors = b"".join(r.data for r in usable)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=anchors)
    # a DANE-TA may be an intermediate (RFC 7671 §5.2)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_problem(records: Sequence[Tlsa], der: bytes | None) -> str | None:
    """Why the leaf ``der`` fails the host's DANE check after the handshake, or None
    (authenticated).

    With DANE-EE records, one must match the leaf (RFC 7672 §3.1.1). Without, the handshake
    itself was verified against the DANE-TA anchors (``ta_context``).
    """
    ee = [r for r in records if r.problem is None and r.usage == DANE_EE]
    if not ee:
        return None
    if not der:
        return "the server sent no certificate"
    if any(r.matches(der) for r in ee):
        return None
    return f"the certificate matches none of {len(ee)} DANE-EE record(s)"


def mismatch(target: str, why: str) -> str:
    return f"451 {STATUS} DANE: TLS authentication of {target} failed: {why}"


__all__ = [
    "DanePosture", "HostDane", "Need", "addresses_secure", "decide_host", "deferral", "host_policy",
    "mismatch", "peer_problem", "posture", "ta_context", "tlsa_name", "wants_tlsa",
]
