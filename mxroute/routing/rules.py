"""Next-hop rules (``routes``, issue 16): which rule, if any, sends a recipient's mail to an
operator-chosen next hop instead of its domain's MX. PURE: no I/O.

Postfix's ``transport_maps`` / ``relayhost`` with ``sender_dependent_relayhost_maps``: rules are
tried in order and the first whose ``match`` covers the recipient domain and whose ``sender``
(when it has one) is the envelope sender wins. ``match`` is a domain, ``.domain`` (its subdomains
only, as in ``tls_policy_domains``) or ``*`` (every destination, address literals included).
``sender`` is an address (compared without regard to case, as Postfix's table lookups), an
``@domain`` (every sender at that domain) or ``<>`` (the null sender: bounces and notices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxroute.settingsrules import Level, RouteRule


@dataclass(frozen=True, slots=True)
class Chosen:
    """The rule that routes a destination: its number (the first rule is 1) and itself."""

    number: int
    rule: RouteRule

    @property
    def tls_level(self) -> Level | None:
        """The TLS level the rule demands: its ``tls`` (``may`` with AUTH is ``encrypt``: TLS
        without verification, but TLS), else ``verify`` when it authenticates or speaks smtps://
        (a password, or a connection that is TLS by design, goes only to a certificate that
        verifies); None: the relay's ``tls_policy`` applies."""
        if self.rule.auth is not None and self.rule.tls == "may":
            return "encrypt"  # AUTH goes only over TLS: "may" (no verification) still demands it
        if self.rule.tls is not None:
            return self.rule.tls
        if self.rule.auth is not None or self.rule.next_hop.implicit_tls:
            return "verify"
        return None

    def describe(self) -> str:
        """One line for logs and ``explain``, never the secret: ``rule 2 (.example.com) → …``."""
        sender = f", sender {self.rule.sender}" if self.rule.sender else ""
        auth = f", AUTH as {self.rule.auth.username}" if self.rule.auth else ""
        return f"rule {self.number} ({self.rule.match}{sender}) → {self.rule.next_hop}{auth}"

    def to_json(self) -> dict[str, Any]:
        """``explain --json``'s ``route``: ``{"rule", "match", "next_hop", "auth", ...}``."""
        return {
            "rule": self.number,
            "match": self.rule.match,
            "sender": self.rule.sender,
            "next_hop": str(self.rule.next_hop),
            "mx_lookup": self.rule.next_hop.mx,
            "implicit_tls": self.rule.next_hop.implicit_tls,
            "auth": self.rule.auth is not None,
            "tls": self.tls_level,
        }


def domain_matches(match: str, domain: str) -> bool:
    """``match`` (``*``, ``example.com`` or ``.example.com``) covers ``domain`` (normalized)."""
    if match == "*":
        return True
    if match.startswith("."):
        return domain.endswith(match) and len(domain) > len(match)
    return domain == match


def sender_matches(wanted: str | None, sender: str | None) -> bool:
    """A rule's ``sender`` covers the envelope ``sender`` ("" is the null sender; None: not
    known, as for ``explain`` without ``--sender``: only rules without ``sender`` apply)."""
    if wanted is None:
        return True
    if sender is None:
        return False
    if wanted == "<>":
        return sender == ""
    if not sender:
        return False
    if wanted.startswith("@"):
        return sender.rpartition("@")[2].lower() == wanted[1:]
    return sender.lower() == wanted.lower()


def choose(rules: Sequence[RouteRule], domain: str, sender: str | None) -> Chosen | None:
    """The first rule covering ``domain`` and ``sender``; None: deliver to the domain's MX."""
    name = domain.lower()
    for number, rule in enumerate(rules, start=1):
        if domain_matches(rule.match, name) and sender_matches(rule.sender, sender):
            return Chosen(number, rule)
    return None


def sender_dependent(rules: Sequence[RouteRule]) -> bool:
    """Whether any rule looks at the sender (then routes are per domain *and* sender)."""
    return any(rule.sender is not None for rule in rules)


__all__ = ["Chosen", "choose", "domain_matches", "sender_dependent", "sender_matches"]
