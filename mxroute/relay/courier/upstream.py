"""What a routed next hop demands on the wire (issue 16 §1): implicit TLS for ``smtps://``
(RFC 8314 §3.3) and AUTH (RFC 4954) as the ``routes`` rule's user.

* ``Upstream.of_plan``: the rule's demands for one delivery, with the secret read from its
  ``password_file`` (``read_secret``) at each delivery, so a changed file needs no reload.
* ``authenticate``: AUTH on a session, only once TLS is up (after STARTTLS and the EHLO that
  follows it, or on an implicit-TLS connection), with the strongest mechanism the upstream
  offers (CRAM-MD5, then PLAIN, then LOGIN); one mechanism per connection, never each in turn.
  Every refusal is a ``HostFailure`` (a deferral: 535 becomes 4.7.8 with the upstream's reply),
  never a bounce: a wrong password must not bounce the queue.

The secret is never logged, never put in a reply, an exception or ``repr()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mxroute.relay.courier.replies import enhanced_status, reply_text
from mxroute.relay.courier.session import HostFailure, Session
from mxroute.routing.plan import Plan, Target
from mxroute.settingsrules import RouteRule, UpstreamAuth
from mxroute.text import safe_text

log = logging.getLogger(__name__)  # AUTH refusals and unusable password files

# strongest first: CRAM-MD5 keeps the secret itself off the wire (RFC 2195)
MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")
CONFIG_STATUS = "4.3.5"  # RFC 3463: "system incorrectly configured" (the password file)


class SecretProblem(Exception):
    """The ``password_file`` cannot give a secret; the message names the file, never its text."""


def read_secret(path: Path) -> str:
    """The secret in ``path``: its one line (a final newline is not part of it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecretProblem(f"password_file {path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretProblem(f"password_file {path}: not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise SecretProblem(f"password_file {path} is empty")
    if "\n" in secret or "\r" in secret:
        raise SecretProblem(f"password_file {path}: more than one line (the secret is one line)")
    return secret


def password_problem(path: Path) -> str | None:
    """Why ``read_secret(path)`` would fail, or None (``check-config``)."""
    try:
        read_secret(path)
    except SecretProblem as exc:
        return str(exc)
    return None


def unusable_secrets(rules: Sequence[RouteRule]) -> list[tuple[str, Path]]:
    """The rules whose ``password_file`` gives no secret now: ("rule N (match): why", file),
    for ``check-config`` and the warning ``serve`` logs at start and reload."""
    found = []
    for number, rule in enumerate(rules, start=1):
        if rule.auth is not None:
            problem = password_problem(rule.auth.password_file)
            if problem:
                found.append((f"rule {number} ({rule.match}): {problem}", rule.auth.password_file))
    return found


def warn_unusable_secrets(rules: Sequence[RouteRule]) -> None:
    """Log one warning per rule whose mail will be deferred for want of its secret."""
    for problem, _ in unusable_secrets(rules):
        log.warning("routes %s: its mail is deferred until the file is fixed", problem)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A routed plan's demands: rule ``rule``'s implicit TLS, its AUTH user and secret, and the
    name TLS verifies when the next hop is an IP address (its IP SAN)."""

    rule: int
    implicit_tls: bool = False
    literal: str | None = None  # the next hop's IP address, when it is one
    auth: UpstreamAuth | None = None
    secret: str = field(default="", repr=False)

    @classmethod
    def of_plan(cls, plan: Plan) -> Upstream | None:
        """The plan's next hop demands (None: an MX plan); SecretProblem when its AUTH secret
        cannot be read."""
        chosen = plan.route
        if chosen is None:
            return None
        hop, auth = chosen.rule.next_hop, chosen.rule.auth
        return cls(
            chosen.number,
            implicit_tls=hop.implicit_tls,
            literal=str(hop.literal) if hop.literal is not None else None,
            auth=auth,
            secret=read_secret(auth.password_file) if auth is not None else "",
        )

    @property
    def identity(self) -> str | None:
        """Who sessions with this next hop are (None: anonymous): pooled sessions and host
        back-off are kept apart by it, so no session authenticated for one rule or user serves
        another."""
        return f"rule {self.rule} AUTH {self.auth.username}" if self.auth is not None else None

    def tls_name(self, target: Target) -> str:
        """The name TLS checks for ``target``: its host name, else the next hop's IP address."""
        return target.exchange or (self.literal or "")


def mechanism(offered: str) -> str | None:
    """The strongest of ``MECHANISMS`` in an EHLO ``AUTH`` line, or None."""
    names = offered.upper().split()
    return next((name for name in MECHANISMS if name in names), None)


async def authenticate(session: Session, upstream: Upstream, timeout: float) -> None:
    """AUTH as ``upstream``'s user on ``session``; HostFailure (a deferral) unless 235."""
    auth = upstream.auth
    if auth is None:
        return
    target, user = session.target, safe_text(auth.username, 200)
    if not session.tls:
        raise HostFailure(
            "4.7.0",
            f"451 4.7.0 TLS was not negotiated with {target}: AUTH as {user} is sent only "
            f"over TLS (routes rule {upstream.rule})",
            remote=False,
        )
    offered = session.extensions.get("auth") if session.esmtp else None
    chosen = mechanism(offered) if offered is not None else None
    if chosen is None:
        what = ("no AUTH" if offered is None
                else f"AUTH {safe_text(offered, 200)} (none of {', '.join(MECHANISMS)})")
        raise HostFailure(
            "4.7.0",
            f"451 4.7.0 {target} offers {what} after TLS: cannot authenticate as {user} "
            f"(routes rule {upstream.rule}, RFC 4954)",
            remote=False,
        )
    code, message = await _exchange(session, chosen, auth.username, upstream.secret, timeout)
    if code == 235:
        return
    reply = reply_text(code, message)
    status = enhanced_status(code, message, session.enhanced)
    if status.endswith(".0.0"):  # no enhanced code: 535 is "credentials invalid" (RFC 4954 §6)
        status = "4.7.8" if code == 535 else "4.7.0"
    status = "4" + status[1:]  # a refused login is deferred, never bounced
    log.warning("%s: AUTH %s as %s refused: %s (routes rule %d): deferred", target, chosen,
                user, reply, upstream.rule)
    raise HostFailure(status, reply, remote=True)


async def _exchange(
    session: Session, name: str, user: str, secret: str, timeout: float
) -> tuple[int, str]:
    """One AUTH exchange (RFC 4954 §4): the final reply's code and text."""
    if name == "PLAIN":  # the initial response with the command (RFC 4954 §4, RFC 4616)
        resp = await session.command(
            b"AUTH", b"PLAIN", _b64(f"\0{user}\0{secret}"), timeout=timeout, what="AUTH PLAIN"
        )
        return resp.code, resp.message
    resp = await session.command(b"AUTH", name.encode("ascii"), timeout=timeout,
                                 what=f"AUTH {name}")
    for step in range(2):
        if resp.code != 334:
            return resp.code, resp.message
        if name == "LOGIN":
            answer = (user, secret)[step]
        elif step == 0:  # CRAM-MD5 (RFC 2195): the user and the keyed digest of the challenge
            try:
                challenge = base64.b64decode(resp.message.strip(), validate=True)
            except ValueError:
                break
            answer = f"{user} {hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()}"
        else:
            break
        resp = await session.command(_b64(answer), timeout=timeout, what=f"AUTH {name}")
    if resp.code == 334:  # a challenge without an answer: cancel the exchange (RFC 4954 §4)
        resp = await session.command(b"*", timeout=timeout, what=f"AUTH {name}")
    return resp.code, resp.message


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


__all__ = [
    "CONFIG_STATUS",
    "MECHANISMS",
    "SecretProblem",
    "Upstream",
    "authenticate",
    "mechanism",
    "password_problem",
    "read_secret",
    "unusable_secrets",
    "warn_unusable_secrets",
]
