"""The TLS decisions delivery and ``explain --probe`` share, made here once (TLS-1/3/6/7, EXP-3).

* ``opportunistic_context`` and ``verify_context``: the two kinds of client context.
* ``Contexts.for_host``: the SSL context a STARTTLS with one MX host uses.
* ``peer_of``: what the peer of a TLS session showed (certificate, protocol, cipher).
* ``verdict``: what a host's TLS policy level demands of what STARTTLS gave, and the
  deferral when it is not met; ``satisfied`` (a pooled session) and ``probe_verdict``
  ask it.

May import: ``tls`` and the ground.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

from mxroute.tls import dane
from mxroute.tls import policy as tlspolicy
from mxroute.tls.policy import TlsPolicy

# where a policy demands TLS (encrypt, verify, dane, MTA-STS enforce): TLS 1.2 at least, as
# Postfix's smtp_tls_mandatory_protocols (issue 21)
MANDATORY_MIN = ssl.TLSVersion.TLSv1_2


def opportunistic_context() -> ssl.SSLContext:
    """TLS without verification: better than plain text when no policy says more (RFC 7435,
    TLS-1). Any protocol version and cipher this OpenSSL can still speak (SECLEVEL=0: TLS 1.0
    and 1.1 too), as Postfix's ``may``: an old TLS beats the plain-text retry (issue 21)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def mandatory_context() -> ssl.SSLContext:
    """TLS 1.2 and up without verification: ``encrypt``, and DANE-EE hosts (whose certificate
    is matched after the handshake) (issue 21)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = MANDATORY_MIN
    return context


def verify_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """PKIX and host-name checking (level ``verify``): ``ca_file`` if given, else the system
    store."""
    cafile = str(ca_file) if ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = MANDATORY_MIN
    return context


class Contexts:
    """The SSL contexts of one courier (or one probe), each made once.

    ``opportunistic``: the context without verification (RFC 7435, TLS-1); by default
    ``opportunistic_context()``; ``mandatory``: the unverified one with TLS 1.2 at least, for a
    policy that demands TLS. The verifying context is made on first use, and
    again when ``tls_ca_file`` changed (a reload).
    """

    def __init__(self, opportunistic: ssl.SSLContext | None = None) -> None:
        self.opportunistic = opportunistic or opportunistic_context()
        self.mandatory = mandatory_context()
        self._verifying: tuple[Path | str | None, ssl.SSLContext] | None = None

    def for_host(
        self, policy: TlsPolicy, exchange: str, ca_file: Path | str | None, *, audited: bool = False
    ) -> ssl.SSLContext:
        """The context for STARTTLS with MX ``exchange`` under its ``policy``.

        DANE-TA anchors for a DANE host without DANE-EE records (TLS-7); the verifying
        context for ``verify`` and for a host an MTA-STS ``testing`` policy audits
        (``audited``, TLS-6); the unverified TLS 1.2+ one where the policy still demands TLS
        (``encrypt``, DANE-EE); otherwise, and for a host without a name to verify, the
        opportunistic one (any version).
        """
        if policy.tlsa and not audited:
            return dane.ta_context(policy.tlsa) or self.mandatory
        if self.verifies(policy, exchange, audited=audited):
            return self.verifying(ca_file)
        return self.mandatory if policy.required else self.opportunistic

    @staticmethod
    def verifies(policy: TlsPolicy, exchange: str, *, audited: bool = False) -> bool:
        """Does ``for_host`` give the verifying context: the handshake checks the certificate
        for ``exchange`` (``verify``, or an MTA-STS ``testing`` audit, TLS-3/6)?"""
        return (policy.verify or audited) and bool(exchange)

    def verifying(self, ca_file: Path | str | None) -> ssl.SSLContext:
        """PKIX and host-name checking against ``ca_file`` (or the system store), TLS-3."""
        if self._verifying is None or self._verifying[0] != ca_file:
            self._verifying = (ca_file, verify_context(ca_file))
        return self._verifying[1]


@dataclass(frozen=True, slots=True)
class Peer:
    """What the peer of a TLS session showed: its DER leaf certificate, protocol and cipher."""

    der: bytes | None = None
    protocol: str | None = None
    cipher: str | None = None

    def summary(self) -> str:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384``, or ``?`` when the session showed nothing."""
        return f"{self.protocol or '?'} {self.cipher or ''}".strip()


def peer_of(transport: asyncio.BaseTransport | None) -> Peer:
    """The ``Peer`` of a connection's transport (also after an unverified handshake)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return Peer()
    cipher = ssl_object.cipher()
    return Peer(
        ssl_object.getpeercert(binary_form=True),
        ssl_object.version(),
        cipher[0] if cipher else None,
    )


@dataclass(frozen=True, slots=True)
class TlsOutcome:
    """What STARTTLS gave with one host (a session, pooled or new, or a probe).

    ``refused``: the reply refusing STARTTLS; ``error``: why the handshake failed, and
    ``verification``: that it was the certificate check; ``audited``: the context was the
    verifying one only because MTA-STS ``testing`` audits the host (TLS-6). After a
    handshake: ``verified_name``, the name PKIX verification checked (TLS-3), and
    ``dane_name``, the name whose TLSA records the certificate matched, or ``dane_problem``,
    why it matched none (TLS-7).
    """

    offered: bool = True
    refused: str | None = None
    error: str | None = None
    verification: bool = False
    audited: bool = False
    tls: bool = False
    verified_name: str | None = None
    dane_name: str | None = None
    dane_problem: str | None = None


def _named(name: str | None, exchange: str) -> bool:
    return bool(exchange) and name is not None and name.lower() == exchange.lower()


def unmeetable(policy: TlsPolicy, host: str, exchange: str) -> str | None:
    """The refusal a policy gives ``host`` before any handshake, or None: ``verify`` needs an MX
    name to check, and an address literal has none (TLS-3)."""
    return tlspolicy.no_name(host) if policy.verify and not exchange else None


def verdict(policy: TlsPolicy, host: str, exchange: str, seen: TlsOutcome) -> tuple[bool, str]:
    """Does what STARTTLS gave with ``host`` (MX name ``exchange``) meet ``policy``? (TLS-3, TLS-7)

    The one place that says what a level demands. The text of a refusal is the deferral
    delivery gives (``451 4.7.5 ...``); otherwise it says what delivery does with the host.
    """
    if policy.level == "none":
        return True, "none: delivery never sends STARTTLS to this host"
    if not policy.required:  # may, or dane without TLSA records for this host: opportunistic
        if not seen.offered:
            return True, "may: STARTTLS not offered; delivery goes on in plain text"
        if seen.error and seen.audited and seen.verification:
            return True, (
                "may: certificate not valid (MTA-STS testing: logged); "
                "delivery uses TLS with this host unverified"
            )
        if seen.error or seen.refused:
            return True, "may: TLS failed; delivery retries this host in plain text"
        return True, "may: delivery uses TLS with this host (certificate not checked)"
    if not seen.offered:
        return False, tlspolicy.not_offered(host, policy)
    refusal = unmeetable(policy, host, exchange)
    if refusal is not None:
        return False, refusal
    if seen.refused is not None:
        return False, tlspolicy.refused(host, policy, seen.refused)
    if seen.error:
        return False, tlspolicy.handshake_failed(
            host, policy, seen.error, verification=seen.verification
        )
    if policy.tlsa:
        if seen.dane_problem is not None:
            return False, dane.mismatch(host, seen.dane_problem)
        if _named(seen.dane_name, exchange):
            return True, f"dane: certificate matched a TLSA record of {exchange}"
        return (
            False,
            f"451 {tlspolicy.STATUS} DANE: TLS with {host} was not authenticated for {exchange}",
        )
    if policy.verify:
        if _named(seen.verified_name, exchange):
            return True, f"verify: certificate verified for {exchange}"
        return False, f"451 {tlspolicy.STATUS} TLS with {host} was not verified for {exchange}"
    if seen.tls:
        return True, "encrypt: TLS established (certificate not checked)"
    return False, tlspolicy.not_offered(host, policy)


def satisfied(
    policy: TlsPolicy,
    *,
    tls: bool,
    verified_name: str | None,
    exchange: str,
    dane_name: str | None = None,
) -> bool:
    """Does a session (pooled or new) meet ``policy`` for a host named ``exchange``?

    ``verified_name``: the name PKIX verification checked (TLS-3); ``dane_name``: the name whose
    TLSA records the certificate matched (TLS-7). Neither stands in for the other.
    """
    seen = TlsOutcome(tls=tls, verified_name=verified_name, dane_name=dane_name)
    return verdict(policy, exchange, exchange, seen)[0]


def probe_verdict(
    policy: TlsPolicy,
    host: str,
    exchange: str,
    *,
    offered: bool,
    error: str | None = None,
    verification: bool = False,
) -> tuple[bool, str]:
    """``verdict`` for what ``explain --probe`` saw (EXP-3): ``offered``, STARTTLS was in the
    EHLO reply; ``error``, why STARTTLS or the handshake failed (None: TLS came up, verified
    when the policy is ``verify``, matching a TLSA record where the policy has them)."""
    up = offered and not error
    name = exchange if up else None
    seen = TlsOutcome(
        offered=offered,
        error=error,
        verification=verification,
        tls=up,
        verified_name=name if policy.verify else None,
        dane_name=name if policy.tlsa else None,
    )
    return verdict(policy, host, exchange, seen)


__all__ = [
    "Contexts",
    "Peer",
    "TlsOutcome",
    "mandatory_context",
    "opportunistic_context",
    "peer_of",
    "probe_verdict",
    "satisfied",
    "unmeetable",
    "verdict",
    "verify_context",
]
