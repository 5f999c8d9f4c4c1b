"""The entries of the table-shaped settings, and what they share with ``Settings``.

``routes`` (``RouteRule``, ``UpstreamAuth``: issue 16), ``shaping`` (``ShapingRule``: issue 18)
and ``reply_patterns`` (``ReplyPatternRule``); the TLS levels (``Level``, ``check_level``) and
domain keys (``normalize_key``) they and ``mxroute.settings`` validate with. Each model checks
its own fields; ``mxroute.settings`` holds the lists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from mxroute.address import NextHop, normalize_domain, parse_address, parse_next_hop
from mxroute.errors import AddressError

# --- the TLS levels (TLS-3; what each demands: mxroute/tls/policy.py) ---------------------------

Level = Literal["none", "may", "encrypt", "verify", "dane"]
LEVELS: tuple[Level, ...] = ("none", "may", "encrypt", "verify", "dane")


def check_level(value: object, what: str = "TLS policy level") -> Level:
    """``value`` as a level, or ValueError naming the allowed ones."""
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text not in LEVELS:
        raise ValueError(f"unknown {what} {value!r} (one of {', '.join(LEVELS)})")
    return text


def normalize_key(key: str) -> str:
    """A table key: lower-case A-labels, no trailing dot; a leading dot (subdomains) is kept.

    An address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) is kept in its canonical form.
    """
    text = key.strip().rstrip(".")
    if text.startswith("["):
        try:
            return parse_address(f"postmaster@{text}").domain.lower()
        except AddressError as exc:
            raise ValueError(f"{key!r} is not an address literal: {exc.message}") from None
    dot = text.startswith(".")
    name = text[1:] if dot else text
    if not name:
        raise ValueError(f"{key!r} is not a domain")
    try:
        name = normalize_domain(name)
    except AddressError as exc:
        raise ValueError(f"{key!r} is not a domain: {exc.message}") from None
    return ("." if dot else "") + name


class UpstreamAuth(BaseModel):
    """A ``routes`` rule's AUTH (RFC 4954) at its next hop: the secret only in ``password_file``
    (read when delivering, never logged, never a setting's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password_file: Path


class RouteRule(BaseModel):
    """One ``[[routes]]`` entry (issue 16): mail for ``match`` (and ``sender``, when set) goes to
    ``next_hop`` instead of the recipient domain's MX; the first matching rule wins
    (``mxroute.routing.rules``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    match: str  # "example.com", ".example.com" (its subdomains) or "*"
    next_hop: NextHop  # "[host]:port", "host:port" (MX of host) or "smtps://host:port"
    # the envelope sender ("app@example.com"), its domain ("@example.com") or "<>" (bounces)
    sender: str | None = None
    auth: UpstreamAuth | None = None
    # the TLS level at the next hop; None: "verify" with auth (or smtps://), else ``tls_policy``
    tls: Level | None = None

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: object) -> str:
        text = str(value).strip()
        return "*" if text == "*" else normalize_key(text)

    @field_validator("next_hop", mode="before")
    @classmethod
    def _next_hop(cls, value: object) -> NextHop:
        return value if isinstance(value, NextHop) else parse_next_hop(str(value))

    @field_serializer("next_hop")
    def _show_next_hop(self, value: NextHop) -> str:
        return str(value)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "<>":
            return None if value is None else "<>"
        text = value.strip()
        if text.startswith("@"):
            return "@" + normalize_key(text[1:])
        try:
            address = parse_address(text)
        except AddressError as exc:
            raise ValueError(f"sender {value!r}: {exc.message}") from None
        return f"{address.local}@{address.domain}"

    @field_validator("tls", mode="before")
    @classmethod
    def _tls(cls, value: object) -> Level | None:
        return None if value is None else check_level(value, "routes tls level")

    @model_validator(mode="after")
    def _auth_needs_tls(self) -> RouteRule:
        if self.auth is not None and self.tls == "none":
            raise ValueError("a rule with auth needs TLS (RFC 4954 §4: AUTH only after TLS); "
                             "tls = \"none\" would send the password in clear text")
        return self


class ShapingRule(BaseModel):
    """One ``[[shaping]]`` entry (issue 18, docs/shaping.md): the limits for the destinations
    ``match`` covers: ``domain:NAME`` (one recipient domain), ``mx:GLOB`` (every destination
    whose MX host names all match: one shared limit) or ``*``; the first matching rule wins
    (``mxroute.routing.shaping``). An unset number: no such limit (``connection_limit``:
    ``destination_concurrency``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str
    connection_limit: int | None = Field(None, ge=1)  # connections open at once
    max_messages_per_connection: int | None = Field(None, ge=1)
    connection_rate: float | None = Field(None, gt=0)  # new connections per minute
    message_rate: float | None = Field(None, gt=0)  # messages per second
    message_burst: int | None = Field(None, ge=1)  # messages at once above message_rate

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: object) -> str:
        text = str(value).strip()
        if text == "*":
            return text
        kind, _, name = text.partition(":")
        kind, name = kind.strip().lower(), name.strip()
        if kind == "domain" and name and "*" not in name:
            return f"domain:{normalize_key(name)}"
        if kind == "mx" and name and not name.startswith(".") and " " not in name:
            return f"mx:{name.lower().rstrip('.')}"
        raise ValueError(f"shaping match {text!r}: expected domain:NAME, mx:GLOB "
                         "(e.g. mx:*.google.com) or *")


class ReplyPatternRule(BaseModel):
    """One ``[[reply_patterns]]`` entry (issue 18 §2, docs/shaping.md): a reply matching ``regex``
    (case-insensitive, searched in ``CODE X.Y.Z text``) throttles its site to ``message_rate``
    per second, or suspends it, for ``duration`` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regex: str = Field(min_length=1)
    action: Literal["throttle", "suspend"]
    duration: int = Field(ge=1)
    message_rate: float | None = Field(None, gt=0)
    name: str | None = None

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"regex {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _rate(self) -> ReplyPatternRule:
        if (self.action == "throttle") != (self.message_rate is not None):
            raise ValueError("message_rate is given with action = \"throttle\" (and only then)")
        return self


__all__ = [
    "LEVELS",
    "Level",
    "ReplyPatternRule",
    "RouteRule",
    "ShapingRule",
    "UpstreamAuth",
    "check_level",
    "normalize_key",
]
