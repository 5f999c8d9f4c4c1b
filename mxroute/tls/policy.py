"""TLS policy per destination (TLS-3): which security level applies, and what it demands.

The levels are Postfix's ``smtp_tls_security_level`` and ``smtp_tls_policy_maps``:

``none``
    never send STARTTLS, even when offered.
``may``
    opportunistic (RFC 7435, TLS-1, the default): STARTTLS when offered, no
    certificate check; a refused STARTTLS or a failed handshake falls back to
    plain text.
``encrypt``
    TLS is mandatory, the certificate is not checked. No STARTTLS, a refused
    STARTTLS or a failed handshake defers that host (4.7.5) and delivery moves
    on to the next one; never plain text (RFC 3207 §6: a stripped STARTTLS is
    the attack this level exists for).
``verify``
    as ``encrypt``, and the certificate must chain to a trusted CA (``tls_ca_file``
    or the system store) and name the MX host (RFC 6125, RFC 7672 §3.2.3 style
    reference identifier = the MX name, as Postfix's ``verify`` level does).
``dane``
    opportunistic DANE (RFC 7672, TLS-7; Postfix's ``dane``): for each MX host whose
    MX RRset, addresses and TLSA records DNSSEC says are secure, what ``mxroute/tls/dane.py``
    decides (authenticated TLS, or mandatory unauthenticated TLS); for every other host
    ``may``. Needs ``dns_trust_ad``. The courier turns it into a per-host policy that
    carries the TLSA records (``TlsPolicy.tlsa``).

Lookup (as Postfix's policy table with ``parent_domain_matches_subdomains``): the
recipient domain exactly, then ``.parent`` entries for each parent domain, then
the default ``tls_policy``. Pure: no I/O beyond building an SSL context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mxroute.tls.tlsa import Tlsa

if TYPE_CHECKING:
    from mxroute.settingsrules import Level

DEFAULT_SOURCE = "tls_policy"
TABLE_SOURCE = "tls_policy_domains"
ROUTES_SOURCE = "routes"  # issue 16: a next-hop rule's level (``routing.route.routed_tls``)
STATUS = "4.7.5"  # RFC 3463 X.7.5 "cryptographic failure", as Postfix defers TLS policy failures


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """The effective TLS level for one destination domain, and where it came from."""

    level: Level = "may"
    source: str = DEFAULT_SOURCE  # "tls_policy" (the default) or "tls_policy_domains"
    match: str | None = None  # the table key that matched ("example.com" or ".example.com")
    # TLS-7, one MX host's usable TLSA records: its certificate must match one
    tlsa: tuple[Tlsa, ...] = ()

    @property
    def required(self) -> bool:
        """TLS is mandatory: no plain-text fallback, failures defer the host (TLS-3, TLS-7)."""
        return self.level in ("encrypt", "verify") or bool(self.tlsa)

    @property
    def verify(self) -> bool:
        return self.level == "verify"

    def describe(self) -> str:
        where = f"{self.source}: {self.match}" if self.match else self.source
        return f"{self.level} (from {where})"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"policy": self.level, "source": self.source}
        if self.match:
            body["match"] = self.match
        return body


def policy_for(domain: str, default: Level, table: Mapping[str, Level]) -> TlsPolicy:
    """The effective policy for ``domain`` (an A-label name, or an address literal).

    Exact entry first, then ``.parent`` entries from the nearest parent up, then
    the default level. Levels and keys as the settings validated them
    (``settingsrules.check_level``, ``settings.normalize_table``).
    """
    name = domain.strip().rstrip(".").lower()
    level = table.get(name)
    if level is not None:
        return TlsPolicy(level, TABLE_SOURCE, name)
    if not name.startswith("["):
        labels = name.split(".")
        for i in range(1, len(labels)):
            key = "." + ".".join(labels[i:])
            level = table.get(key)
            if level is not None:
                return TlsPolicy(level, TABLE_SOURCE, key)
    return TlsPolicy(default, DEFAULT_SOURCE, None)


def of_settings(domain: str, settings: Any) -> TlsPolicy:
    """``policy_for`` with the settings' ``tls_policy`` and ``tls_policy_domains``: what delivery
    applies to ``domain`` and what ``explain`` shows (TLS-3, EXP-3)."""
    return policy_for(domain, settings.tls_policy, settings.tls_policy_domains)


# --- the replies a policy failure leaves (each a "451 4.7.5 ..." line, TLS-3) -----------------

def not_offered(host: str, policy: TlsPolicy) -> str:
    return f"451 {STATUS} TLS required ({policy.level}) but not offered by {host}"


def refused(host: str, policy: TlsPolicy, reply: str) -> str:
    return f"451 {STATUS} TLS required ({policy.level}) but {host} refused STARTTLS: {reply}"


def handshake_failed(host: str, policy: TlsPolicy, why: str, *, verification: bool) -> str:
    if verification:
        return (f"451 {STATUS} TLS certificate verification failed for {host} "
                f"(policy {policy.level}): {why}")
    return f"451 {STATUS} TLS required ({policy.level}) but the handshake with {host} failed: {why}"


def no_name(host: str) -> str:
    return f"451 {STATUS} TLS policy verify needs an MX host name to check; {host} has none"


# --- SSL contexts -----------------------------------------------------------------------------

__all__ = [
    "STATUS", "TlsPolicy", "handshake_failed", "no_name", "not_offered", "policy_for", "refused",
]
