"""The domain names check_host() looks up: §4.3 validity, §4.8 truncation, the query name."""

from __future__ import annotations

import re

import dns.name

MAX_DOMAIN = 253  # §4.8 (presentation form, no root dot)
MAX_LABEL = 63

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def domain_problem(domain: str) -> str | None:
    """Why ``domain`` cannot be looked up (§4.3: label > 63, empty label, too long), or None."""
    name = domain.removesuffix(".")
    if not name:
        return "empty domain"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_DOMAIN:
        return "domain longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "empty label"
        if len(label.encode("utf-8", "surrogateescape")) > MAX_LABEL:
            return "label longer than 63 octets"
    return None


def qname(domain: str) -> str:
    """A lookup name the resolver parses back exactly: every odd octet written as \\DDD."""
    name = domain.removesuffix(".")
    if _PLAIN_NAME.match(name):
        return name  # the common case: nothing to escape
    labels = [label.encode("utf-8", "surrogateescape") for label in name.split(".")]
    return dns.name.Name(labels).to_text(omit_final_dot=True)


def truncate_domain(domain: str) -> str:
    """§4.8: drop labels from the left until at most 253 characters remain."""
    while len(domain) > MAX_DOMAIN and "." in domain:
        domain = domain.split(".", 1)[1]
    return domain
