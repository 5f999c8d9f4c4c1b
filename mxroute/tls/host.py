"""The TLS policy for one MX host: DANE where it governs the host, else MTA-STS, else the
domain's.

One function, so that delivery (the courier) and ``explain --probe`` make the same choice.
RFC 8461 §2: a host with DNSSEC-authenticated TLSA records is DANE's (TLS-7), and MTA-STS
(TLS-6) is consulted only for the others. Pure: the DNS and HTTPS work is done before. It
takes the MX host's name, not routing's types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.policy import TlsPolicy

if TYPE_CHECKING:
    from mxroute.tls import dane


class HostTls(NamedTuple):
    policy: TlsPolicy  # what a session with this host must satisfy
    refusal: str | None  # "451 4.7.5 ...": do not deliver to this host now
    rule: str  # "TLS-7" (DANE decided), "TLS-6" (MTA-STS or the domain's policy)


def for_host(
    tls: TlsPolicy, posture: dane.DanePosture | None, sts: mtasts.Lookup | None, exchange: str,
    target: str,
) -> HostTls:
    """The policy delivery applies to MX host ``exchange`` (empty: none, as for an address
    literal) given the domain's ``tls``, the plan's DANE ``posture`` and the destination's
    MTA-STS lookup ``sts`` (None: not consulted). ``target`` names the host and address in a
    refusal (``mx1.example.com[192.0.2.1]:25``)."""
    host = posture.host(exchange) if posture is not None and exchange else None
    if host is not None:  # a DANE posture: routing loaded the DANE module to make it
        from mxroute.tls import dane

        if host.need is not dane.Need.MAY:  # DNSSEC-secure TLSA (or its failure)
            refusal = dane.deferral(posture, exchange, target)  # the TLSA lookup failed
            if refusal is not None:
                return HostTls(tls, refusal, "TLS-7")
            return HostTls(dane.host_policy(tls, posture, exchange), None, "TLS-7")
    policy, refusal = mtasts.host_policy(sts, exchange, tls)
    return HostTls(policy, refusal, "TLS-6")
