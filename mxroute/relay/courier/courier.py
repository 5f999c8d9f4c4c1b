"""The courier: carry one message to one destination over SMTP, following a routing plan.

RFC 5321 §3–4 (the client session), §5.1 (try the plan's addresses in order),
RFC 3207 (opportunistic STARTTLS), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
RFC 6531 (SMTPUTF8), RFC 3461 (DSN parameters), RFC 2034 / 3463 (enhanced codes).

As in chasquid, the queue and the courier never meet: the courier knows nothing
of retries, disk or bounces. It is handed a ``Plan`` and returns one
``RecipientResult`` per recipient — delivered, bounced (a permanent answer) or
deferred (try again later). Decisions cite checklist IDs (MX-*, SESS-*, TLS-*, SEC-*).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse

from mxroute.address import parse_address
from mxroute.errors import AddressError
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.settings import Settings
from mxroute.text import safe_text, xtext
from mxroute.tls import dane
from mxroute.tls import host as hosttls
from mxroute.tls import policy as tlspolicy
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.mtasts.store import MtaSts
from mxroute.tls.policy import TlsPolicy

log = logging.getLogger(__name__)  # one line per recipient per attempt, Postfix-style
hostlog = logging.getLogger(__name__ + ".hosts")  # per-host events: connect failures, skips, TLS fallbacks

CHUNK = 64 * 1024  # one "data block" for the §4.5.3.2.5 timeout
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
# aiosmtplib's own transport errors, plus the OS ones (a reset, an SSL failure).
_WIRE_ERRORS = (aiosmtplib.SMTPException, OSError, EOFError)


# --- pure helpers ---------------------------------------------------------------------------

def canonical_data(message: bytes) -> bytes:
    """CRLF line endings only, ending in CRLF (RFC 5321 §2.3.8, §4.1.1.4; SESS-10/11).

    A bare CR or LF becomes CRLF, so no terminator variant (``<LF>.<LF>``, ...)
    can reach the next hop (SEC-2).
    """
    crlf = message.count(b"\r\n")  # what intake stored is already canonical: check by counting
    data = message if message.count(b"\r") == crlf == message.count(b"\n") else _LINE_ENDINGS.sub(b"\r\n", message)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def dot_stuff(canonical: bytes) -> bytes:
    """Transparency (RFC 5321 §4.5.2): double each leading ".", then end with ``.<CRLF>``."""
    if not canonical.startswith(b".") and b"\n." not in canonical:  # nothing to stuff
        return canonical + b".\r\n"
    return _LEADING_DOT.sub(b"..", canonical) + b".\r\n"


def enhanced_status(code: int, text: str, advertised: bool) -> str:
    """The RFC 3463 status of a reply (SESS-5).

    Taken from the text when the server advertised ENHANCEDSTATUSCODES (RFC 2034)
    and its class matches the reply code; otherwise derived as ``X.0.0``.
    """
    klass = str(code)[0] if 200 <= code < 600 else "4"
    if advertised:
        match = _ENHANCED.match(text.strip())
        if match and match.group(1) == klass:
            return match.group(0)
    return f"{klass}.0.0"


def reply_text(code: int, text: str) -> str:
    """A reply as one safe line: ``550 5.1.1 no such user`` (multi-line replies joined; SEC-6)."""
    return safe_text(f"{code} " + " ".join(line.strip() for line in text.splitlines()), 1000)


def too_many_recipients(code: int, text: str) -> bool:
    """452, or the historical 552 "too many recipients" (RFC 5321 §4.5.3.1.10): retry the rest later."""
    if code == 452:
        return True
    return code == 552 and (text.strip().startswith("5.5.3") or "too many recipients" in text.lower())


def path_problem(address: str, *, null_ok: bool = False) -> str | None:
    """Why ``address`` may not be put in a MAIL/RCPT command, or None (SEC-5, RFC 5321 §4.1.2).

    Controls (CR, LF, NUL, ...), bad syntax and over-long parts are refused here, so
    nothing hostile ever reaches aiosmtplib's command writer.
    """
    if address == "" and null_ok:
        return None
    try:
        parse_address(address)
    except AddressError as exc:
        return safe_text(exc.message, 200)
    if any(c in address for c in "<>"):
        return "angle bracket inside the address"
    return None


def _headers(canonical: bytes) -> bytes:
    end = canonical.find(b"\r\n\r\n")
    return canonical if end < 0 else canonical[:end]


# --- sessions and the attempt state ---------------------------------------------------------

class _PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping every reply that arrives (RFC 2920 PIPELINING).

    aiosmtplib parses one reply per read and drops data that arrives while a parsed
    reply waits for pick-up, which is right for lock-step but loses the replies to a
    pipelined group. This keeps them in order in ``_replies`` while ``_expect`` says
    replies are outstanding; otherwise it behaves as aiosmtplib (unsolicited data is
    dropped). A session's protocol becomes this one after EHLO (and any STARTTLS), so
    STARTTLS still reads exactly one reply (TLS-2).
    """

    _replies: collections.deque[SMTPResponse | BaseException]
    _expect: int

    def data_received(self, data: bytes) -> None:
        if self._response_waiter is None or not (self._response_pending or self._expect):
            return
        self._buffer.extend(data)
        while True:
            try:
                response = self._read_response_from_buffer()
            except Exception as exc:  # noqa: BLE001 -- any malformed reply ends the session
                del self._buffer[:]
                self._hand(exc)
                return
            if response is None:
                break
            self._hand(response)
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            del self._buffer[:]
            self._hand(aiosmtplib.SMTPResponseException(500, "Response too long"))

    def _hand(self, item: SMTPResponse | BaseException) -> None:
        waiter = self._response_waiter
        if self._response_pending and not self._replies and waiter is not None and not waiter.done():
            if isinstance(item, BaseException):
                self._set_response_exception(waiter, item)
            else:
                waiter.set_result(item)
        else:
            self._replies.append(item)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        if self._replies:
            item = self._replies.popleft()
            if isinstance(item, BaseException):
                raise item
            return item
        return await super().read_response(timeout)


def _pipelining(protocol: SMTPProtocol | None) -> None:
    """Make a connected session's protocol keep pipelined replies (see ``_PipeliningProtocol``)."""
    if protocol is not None and type(protocol) is SMTPProtocol:
        protocol.__class__ = _PipeliningProtocol
        assert isinstance(protocol, _PipeliningProtocol)
        protocol._replies = collections.deque()
        protocol._expect = 0
        if protocol.transport is not None:  # uvloop caches the protocol's bound methods: renew them
            protocol.transport.set_protocol(protocol)


class _Stale(Exception):
    """A pooled connection that no longer answers (its RSET failed): nothing was sent on it."""


class _HostFailure(Exception):
    """The session with this address is over (421, drop, timeout): move on (MX-17, SESS-4).

    ``remote``: ``reply`` is the host's own reply (a 421, a refused greeting), not our reason (DSN-6).
    """

    def __init__(self, status: str, reply: str, *, remote: bool) -> None:
        super().__init__(reply)
        self.status = status
        self.reply = reply
        self.remote = remote


def _lost(session: _Session, what: str, exc: BaseException) -> _HostFailure:
    """A drop or a timeout while waiting for the reply to ``what``: the session is over (SESS-4)."""
    session.client.close()
    return _HostFailure("4.4.2", f"451 4.4.2 lost connection with {session.target} in reply to {what}: "
                                 f"{safe_text(str(exc) or type(exc).__name__)}", remote=False)


def _unless_closing(session: _Session, resp: SMTPResponse) -> SMTPResponse:
    """``resp``, unless it is a 421: the server is closing, so is the session (RFC 5321 §3.8, MX-17)."""
    if resp.code == 421:
        session.client.close()
        raise _HostFailure(enhanced_status(resp.code, resp.message, session.enhanced), reply_text(resp.code, resp.message),
                           remote=True)
    return resp


@dataclass
class _Session:
    client: aiosmtplib.SMTP
    target: Target
    key: tuple[str, int, str | None]
    esmtp: bool = False
    extensions: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    verified_name: str | None = None  # the MX name the certificate was verified for (TLS-3 verify)
    dane_name: str | None = None  # the MX name whose TLSA records the certificate matched (TLS-7)
    transactions: int = 0
    idle_timer: asyncio.TimerHandle | None = None
    rset_due: bool = False  # taken from the pool: RSET first, pipelined with the next transaction

    @property
    def pipelining(self) -> bool:
        return self.esmtp and "pipelining" in self.extensions

    def has(self, name: str) -> bool:
        return name in self.extensions

    @property
    def enhanced(self) -> bool:
        return self.has("enhancedstatuscodes")

    @property
    def size_limit(self) -> int | None:
        """RFC 1870 §4: a fixed maximum; "SIZE" or "SIZE 0" means no stated limit."""
        value = self.extensions.get("size", "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass
class _Attempt:
    """What one deliver() call has learnt so far."""

    envelope: Envelope
    body: bytes  # canonical (CRLF) message
    eight_bit: bool
    utf8: bool  # the envelope or the header needs SMTPUTF8 (SESS-15)
    tls: TlsPolicy = field(default_factory=TlsPolicy)  # the destination's TLS policy (TLS-3)
    dane: dane.DanePosture | None = None  # the plan's DANE verdict per MX host (TLS-7)
    sts: mtasts.Lookup | None = None  # the destination's MTA-STS state (TLS-5/6); None: not consulted
    results: dict[str, RecipientResult] = field(default_factory=dict)
    # address -> (status, reply, relay, remote): the last temporary reason
    last: dict[str, tuple[str, str, str | None, bool]] = field(default_factory=dict)
    relay: dict[str, str] = field(default_factory=dict)  # address -> last relay tried

    def finish(self, rcpt: Recipient, disposition: Disposition, status: str, reply: str, target: Target | None,
               *, remote: bool) -> None:
        """A final answer. ``remote``: ``reply`` is what ``target`` replied, not our own reason (DSN-6)."""
        relay = str(target) if target else None
        self.results[rcpt.address] = RecipientResult(rcpt.address, disposition, status, reply, relay,
                                                     remote_reply=remote and target is not None)

    def soft(self, recipients: Sequence[Recipient], status: str, reply: str, target: Target | None,
             *, remote: bool) -> None:
        """A temporary answer: the recipients stay pending; remember it as their last reason."""
        for rcpt in recipients:
            self.last[rcpt.address] = (status, reply, str(target) if target else None, remote and target is not None)


class Courier:
    """Deliver messages over SMTP following routing plans (see the module docstring).

    ``reuse`` keeps a few idle connections per destination address for the next
    message (RSET between transactions, SESS-17), closed after ``idle_timeout``
    seconds. ``tls_context`` is used for opportunistic STARTTLS; by default an
    unverified one (RFC 7435: no policy, no verification, TLS-1). A courier belongs to
    the event loop that runs its ``deliver()`` calls; ``close()`` it in that loop.
    ``stats`` counts connections, greeted sessions, reused ones, TLS sessions,
    cleartext fallbacks after a failed STARTTLS (never silent: each is also logged), and
    certificates that matched or failed a host's TLSA records (TLS-7).
    """

    def __init__(
        self,
        settings: Settings,
        tls_context: ssl.SSLContext | None = None,
        *,
        reuse: bool = True,
        idle_timeout: float = 30.0,
        max_idle_per_destination: int | None = None,
        starttls: bool = True,
        mta_sts: MtaSts | None = None,
    ) -> None:
        self.settings = settings
        self.mta_sts = mta_sts  # TLS-5/6: consulted per destination when settings.mta_sts is on
        self.tls_context = tls_context or tlspolicy.opportunistic_context()
        self._verify_context: tuple[object, ssl.SSLContext] | None = None  # (tls_ca_file, context), TLS-3
        self.reuse = reuse
        self.idle_timeout = idle_timeout
        self._max_idle = max_idle_per_destination
        self.starttls = starttls
        self.stats: dict[str, int] = {
            "connections": 0, "sessions": 0, "reused": 0, "tls": 0, "tls_fallbacks": 0,
            "dane": 0, "dane_failures": 0,  # TLS-7: certificates that matched / did not match TLSA records
            "policy_skips": 0,  # hosts not contacted: MTA-STS enforce (TLS-6) or a failed TLSA lookup (TLS-7)
        }
        self._idle: dict[tuple[str, int, str | None], list[_Session]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # RTY-4: hosts that failed at connect/greeting/EHLO, skipped until the time given,
        # so N messages for a dead host cost O(1) connections per retry cycle, not O(N).
        self._unreachable: dict[tuple[str, int, str | None], tuple[float, str, str]] = {}
        # Hosts that last gave a session; to any other, one connection at a time until it answers
        # (N messages arriving together for a dead host must not open N connections first).
        self._answering: set[tuple[str, int, str | None]] = set()
        self._probes: dict[tuple[str, int, str | None], asyncio.Future[None]] = {}

    @property
    def max_idle(self) -> int:
        """Idle connections kept per destination address: by default as many as may be busy with
        one destination at once (``destination_concurrency``, as reloaded), so a steady load never
        closes and reopens them."""
        return self.settings.destination_concurrency if self._max_idle is None else self._max_idle

    # --- the one public operation -----------------------------------------------------------

    async def deliver(
        self,
        plan: Plan,
        envelope: Envelope,
        recipients: list[Recipient],
        message: bytes,
        *,
        queue_id: str | None = None,
    ) -> list[RecipientResult]:
        """Deliver ``message`` to ``recipients`` (all of ``plan.domain``); one result per recipient."""
        started = time.monotonic()
        body = canonical_data(message)
        addresses_ascii = envelope.sender.isascii() and all(r.address.isascii() for r in recipients)
        attempt = _Attempt(
            envelope=envelope, body=body, eight_bit=not body.isascii(),
            utf8=not addresses_ascii or (envelope.smtputf8 and not _headers(body).isascii()),
            tls=self.tls_policy(plan.domain), dane=plan.dane,
        )
        valid: list[Recipient] = []
        seen: set[str] = set()
        sender_problem = path_problem(envelope.sender, null_ok=True)
        for rcpt in recipients:
            if rcpt.address in seen:
                continue
            seen.add(rcpt.address)
            problem = path_problem(rcpt.address)
            if problem:
                attempt.finish(rcpt, Disposition.BOUNCED, "5.1.3", f"553 5.1.3 bad recipient address: {problem}", None,
                               remote=False)
            elif sender_problem:
                attempt.finish(rcpt, Disposition.BOUNCED, "5.1.7", f"553 5.1.7 bad sender address: {sender_problem}", None,
                               remote=False)
            else:
                valid.append(rcpt)
        if plan.verdict is Verdict.TEMPORARY:  # MX-6: DNS said "later"
            for rcpt in valid:
                attempt.finish(rcpt, Disposition.DEFERRED, plan.dsn_status, f"451 {plan.dsn_status} {safe_text(plan.reason)}", None,
                               remote=False)
        elif plan.verdict is Verdict.PERMANENT:  # MX-5/9/10/11: DNS said "never"
            code = 556 if plan.dsn_status == "5.1.10" else 550
            for rcpt in valid:
                attempt.finish(rcpt, Disposition.BOUNCED, plan.dsn_status, f"{code} {plan.dsn_status} {safe_text(plan.reason)}", None,
                               remote=False)
        elif valid:
            if self.mta_sts is not None and mtasts.skip_reason(self.settings.mta_sts, plan.domain, attempt.tls, deliverable=plan.deliverable) is None:
                attempt.sts = await self.mta_sts.lookup(plan.domain)  # MTA-STS (TLS-5/6)
            await self._walk(plan, attempt, valid)
        out = [attempt.results[r.address] for r in recipients]
        delay = time.monotonic() - started
        for result in {r.recipient: r for r in out}.values():
            _log_result(queue_id, result, delay)
        return out

    def tls_policy(self, domain: str) -> TlsPolicy:
        """The TLS policy for mail to ``domain`` (TLS-3; ``explain`` shows the same lookup)."""
        return tlspolicy.of_settings(domain, self.settings)

    async def close(self) -> None:
        """Close every idle connection (QUIT, bounded) and wait for closings in progress."""
        sessions = [s for pool in self._idle.values() for s in pool]
        self._idle.clear()
        for session in sessions:
            if session.idle_timer:
                session.idle_timer.cancel()
        await asyncio.gather(*(self._quit(s) for s in sessions), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- walking the plan -------------------------------------------------------------------

    async def _walk(self, plan: Plan, attempt: _Attempt, recipients: list[Recipient]) -> None:
        """Try the plan's addresses in order until nothing is pending (RFC 5321 §5.1, MX-15..17).

        Host failures (refused, timeout, 4xx/5xx greeting or EHLO, 421, a drop) move on to
        the next address. Temporary answers to MAIL/RCPT/DATA leave the recipients
        pending too, so a backup MX may take them (as Postfix does while it is not at
        the last server). Permanent answers are final (MX-17). At most
        ``mx_session_limit`` sessions that reached a greeting (Postfix smtp_mx_session_limit).
        """
        pending = list(recipients)
        sessions = 0
        limit = self.settings.mx_session_limit
        for target in plan.targets:
            if not pending:
                break
            if sessions >= limit:
                hostlog.info("%s: mx_session_limit=%d reached, %d address(es) left untried (MX-16)",
                         plan.domain, limit, len(plan.targets) - plan.targets.index(target))
                break
            session, greeted = await self._open(target, attempt, pending)
            if greeted:
                sessions += 1
            if session is None:
                continue
            try:
                try:
                    pending = await self._transactions(session, attempt, pending)
                except _Stale:  # a pooled connection the server had closed: a new one (SESS-17)
                    self.stats["reused"] -= 1
                    fresh, _ = await self._open(target, attempt, pending, pool=False)
                    if fresh is None:
                        continue
                    session = fresh
                    pending = await self._transactions(session, attempt, pending)
            except _HostFailure as exc:
                attempt.soft(pending, exc.status, exc.reply, target, remote=exc.remote)
                pending = [r for r in pending if r.address not in attempt.results]
                self._discard(session)
                continue
            self._release(session)
        for rcpt in pending:
            status, reply, relay, remote = attempt.last.get(
                rcpt.address, ("4.4.1", "451 4.4.1 no address of the destination could be tried", None, False))
            if status[0] != "4":  # a host-level 5xx (greeting, EHLO) was only a reason to move on
                status = "4" + status[1:]
            attempt.results[rcpt.address] = RecipientResult(rcpt.address, Disposition.DEFERRED, status, reply, relay,
                                                            remote_reply=remote)

    async def _open(
        self, target: Target, attempt: _Attempt, pending: list[Recipient], *, pool: bool = True,
    ) -> tuple[_Session | None, bool]:
        """A ready session with ``target`` (pooled or new): greeting, EHLO/HELO, STARTTLS.

        Returns (session or None, whether a greeting was received).
        """
        key = (target.address, target.port, self._bind_address(target))
        # the MX host's own TLS policy: DANE where it governs the host (TLS-7), else MTA-STS (TLS-6)
        policy, refusal, rule = hosttls.for_host(attempt.tls, attempt.dane, attempt.sts, target.exchange, str(target))
        if refusal is not None:
            self.stats["policy_skips"] += 1
            hostlog.warning("%s: %s: skipped (%s)", target, refusal, rule)
            attempt.soft(pending, tlspolicy.STATUS, refusal, target, remote=False)  # TLS-6/7: never contacted
            return None, False
        audit = None  # MTA-STS testing: the lookup whose "enforce" verdict is only logged (TLS-6)
        if rule == "TLS-6":
            note = mtasts.testing_note(attempt.sts, target.exchange)
            if note is not None:
                hostlog.warning("%s: %s (TLS-6 testing)", target, note)
            audit = mtasts.audited(attempt.sts, target.exchange)
        pooled = await self._checkout(key) if pool else None
        if pooled is not None:
            if tlspolicy.satisfied(policy, tls=pooled.tls, verified_name=pooled.verified_name,
                                   exchange=target.exchange, dane_name=pooled.dane_name):
                return pooled, True
            self.stats["reused"] -= 1  # TLS-3: not good enough for this policy; back to the pool
            self._release(pooled)
        known = self._unreachable.get(key)
        if known is not None:
            if known[0] > time.monotonic():  # RTY-4: as Exim's host retry records
                attempt.soft(pending, known[1], f"{known[2]} (host skipped until its retry time, RTY-4)", target,
                             remote=False)
                return None, False
            del self._unreachable[key]
        probe: asyncio.Future[None] | None = None
        if key not in self._answering:  # RTY-4: first contact; while one connection finds out, the rest wait
            waiting = self._probes.get(key)
            if waiting is not None:
                await asyncio.shield(waiting)
                known = self._unreachable.get(key)
                if known is not None and known[0] > time.monotonic():
                    attempt.soft(pending, known[1], f"{known[2]} (host skipped until its retry time, RTY-4)", target,
                             remote=False)
                    return None, False
            else:
                probe = self._probes[key] = asyncio.get_running_loop().create_future()
        try:
            # starttls=False turns the opportunistic default off; a required policy still applies.
            use_tls = policy.level != "none" and (self.starttls or policy.required)
            session, greeted, problem = await self._connect(target, key, use_tls=use_tls, policy=policy, audit=audit)
            if session is None and isinstance(problem, _HostFailure) and problem.status == tlspolicy.STATUS:
                # TLS-3: this policy's failure, not the host's
                attempt.soft(pending, problem.status, problem.reply, target, remote=problem.remote)
                return None, greeted
            if problem == "tls-unverified":  # TLS-6 testing: the certificate failed; TLS as without a policy
                session, greeted2, problem = await self._connect(target, key, use_tls=True, policy=policy)
                greeted = greeted or greeted2
            if problem == "tls":  # TLS-1: opportunistic; a failed handshake → same host in plain text
                session, greeted2, problem = await self._connect(target, key, use_tls=False)
                greeted = greeted or greeted2
            if session is None:
                failure = problem if isinstance(problem, _HostFailure) else \
                    _HostFailure("4.4.1", "451 4.4.1 no session", remote=False)
                status, reply = failure.status, failure.reply
                attempt.soft(pending, status, reply, target, remote=failure.remote)
                if len(self._unreachable) >= 10000:
                    self._unreachable.clear()
                self._unreachable[key] = (time.monotonic() + self.settings.retry_min_seconds, status, reply)
                self._answering.discard(key)
            else:
                if len(self._answering) >= 10000:
                    self._answering.clear()
                self._answering.add(key)
            return session, greeted
        finally:
            if probe is not None:
                del self._probes[key]
                probe.set_result(None)

    def forget_unreachable(self) -> None:
        """Try every host again at the next delivery, and fetch MTA-STS policies whose last fetch
        failed (``mxroute queue flush``)."""
        self._unreachable.clear()
        if self.mta_sts is not None:
            self.mta_sts.forget_failures()

    async def _connect(
        self, target: Target, key: tuple[str, int, str | None], *, use_tls: bool,
        policy: TlsPolicy = TlsPolicy(), audit: mtasts.Lookup | None = None,
    ) -> tuple[_Session | None, bool, _HostFailure | str | None]:
        """Connect, read the greeting, EHLO (HELO fallback), STARTTLS when offered.

        Returns (session, greeted, problem); problem is a ``_HostFailure`` on failure,
        "tls" when a TLS handshake failed and a plain-text retry is due, or
        "tls-unverified" when an ``audit`` (MTA-STS testing, TLS-6) found the certificate
        invalid and an unverified TLS retry is due. Under a required ``policy`` (TLS-3) a
        host without STARTTLS is a failure, never plain text.
        """
        s = self.settings
        family = socket.AF_INET6 if target.family == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if key[2]:  # Postfix smtp_bind_address: leave from the egress address explain checks
                sock.bind((key[2], 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (target.address, target.port)),
                                   s.connect_timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            why = "timed out" if isinstance(exc, TimeoutError) else (os.strerror(exc.errno) if exc.errno else str(exc))
            hostlog.info("connect to %s: %s", target, why)
            return None, False, _HostFailure("4.4.1", f"451 4.4.1 connect to {target}: {safe_text(why)}", remote=False)
        self.stats["connections"] += 1
        client = aiosmtplib.SMTP(sock=sock, local_hostname=s.helo_name, timeout=s.greeting_timeout,
                                 start_tls=False, use_tls=False)
        try:
            await client.connect(timeout=s.greeting_timeout)  # RFC 5321 §4.5.3.2.1
        except aiosmtplib.SMTPConnectResponseError as exc:  # 4xx/5xx greeting: skip (smtp_skip_5xx_greeting)
            client.close()
            reply = reply_text(exc.code, exc.message)
            hostlog.info("%s greeted with %s: trying the next address (MX-17)", target, reply)
            return None, True, _HostFailure(enhanced_status(exc.code, exc.message, False), reply, remote=True)
        except _WIRE_ERRORS as exc:
            client.close()
            sock.close()
            return None, False, _HostFailure("4.4.2", f"451 4.4.2 no greeting from {target}: {safe_text(str(exc))}",
                                             remote=False)
        session = _Session(client, target, key)
        try:
            await self._hello(session)
            if use_tls and session.has("starttls"):
                retry = await self._starttls(session, policy, audit)
                if retry:
                    return None, True, retry
            elif audit is not None and not session.has("starttls"):  # TLS-6 testing: logged, delivered
                hostlog.warning("%s: %s (TLS-6 testing)", target,
                                mtasts.testing_refusal(audit, target.exchange, "STARTTLS not offered"))
            elif policy.required:  # TLS-3: no STARTTLS, no mail (RFC 3207 §6)
                reply = tlspolicy.not_offered(str(target), policy)
                hostlog.warning("%s: %s: trying the next address (TLS-3)", target, reply)
                await self._quit(session)
                return None, True, _HostFailure(tlspolicy.STATUS, reply, remote=False)
        except _HostFailure as exc:
            client.close()
            return None, True, exc
        self.stats["sessions"] += 1
        if session.pipelining:
            _pipelining(client.protocol)
        return session, True, None

    async def _hello(self, session: _Session) -> None:
        """EHLO, and HELO when EHLO gets a 5xx (RFC 5321 §4.1.1.1; SESS-1). 4xx/421: next host."""
        client, helo = session.client, self.settings.helo_name
        timeout = self.settings.greeting_timeout
        resp = await self._command(session, b"EHLO", helo.encode("ascii"), timeout=timeout)
        if resp.code == 250:
            client.last_ehlo_response = resp
            session.esmtp, session.extensions = True, dict(client.esmtp_extensions)
            return
        if resp.code >= 500:
            helo_resp = await self._command(session, b"HELO", helo.encode("ascii"), timeout=timeout)
            if helo_resp.code == 250:
                client.last_helo_response = helo_resp
                session.esmtp, session.extensions = False, {}  # HELO: no extension parameters
                return
            resp = helo_resp
        raise _HostFailure(enhanced_status(resp.code, resp.message, False), reply_text(resp.code, resp.message), remote=True)

    async def _starttls(
        self, session: _Session, policy: TlsPolicy = TlsPolicy(), audit: mtasts.Lookup | None = None,
    ) -> str | None:
        """STARTTLS (RFC 3207; TLS-1/2/3). None, or the retry due: "tls" (the handshake failed:
        plain text may follow) or "tls-unverified" (an MTA-STS testing ``audit`` found the
        certificate invalid: logged, then TLS as without a policy, TLS-6).

        Opportunistic (``may``): a non-220 reply leaves the session in plain text
        (logged, counted). Required (``encrypt``/``verify``, TLS-3): a refusal, a failed
        handshake or a failed verification raises ``_HostFailure`` (4.7.5): next host.
        After a handshake everything learnt before is discarded and EHLO is sent again
        (RFC 3207 §4.2). aiosmtplib reads exactly one reply to STARTTLS and drops
        whatever followed it before the handshake (TLS-2).
        """
        target = session.target
        if policy.verify and not target.exchange:  # an address literal: no name to verify
            raise _HostFailure(tlspolicy.STATUS, tlspolicy.no_name(str(target)), remote=False)
        plain = session.client.transport  # kept to abort it if the handshake fails half-way
        context = self._context(TlsPolicy("verify") if audit is not None else policy)
        try:
            await session.client.starttls(tls_context=context, server_hostname=target.exchange or None,
                                          timeout=self.settings.greeting_timeout)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise _HostFailure("4.7.0", reply_text(exc.code, exc.message), remote=True) from None
            if policy.required:
                reply = tlspolicy.refused(str(target), policy, reply_text(exc.code, exc.message))
                hostlog.warning("%s: %s: trying the next address (TLS-3)", target, reply)
                raise _HostFailure(tlspolicy.STATUS, reply, remote=False) from None
            if audit is not None:
                hostlog.warning("%s: %s (TLS-6 testing)", target, mtasts.testing_refusal(
                    audit, target.exchange, f"STARTTLS refused: {reply_text(exc.code, exc.message)}"))
            self.stats["tls_fallbacks"] += 1
            hostlog.warning("%s: STARTTLS refused (%s): continuing in plain text (TLS-1, opportunistic)",
                        target, reply_text(exc.code, exc.message))
            return None
        except (*_WIRE_ERRORS, ssl.SSLError) as exc:
            session.client.close()
            if plain is not None:
                # asyncio leaves it "closing" with the socket open after a failed start_tls. The ignore:
                # aiosmtplib types it BaseTransport though it is a Transport (it casts it so itself), and
                # no isinstance() as uvloop's transports are no asyncio.Transport subclasses
                plain.abort()  # type: ignore[attr-defined, unused-ignore]
                await asyncio.sleep(0)
            if policy.required:  # TLS-3: never plain text
                verification = isinstance(exc, ssl.SSLCertVerificationError)
                why = safe_text(getattr(exc, "verify_message", None) or str(exc) or type(exc).__name__)
                reply = tlspolicy.handshake_failed(str(target), policy, why, verification=verification)
                hostlog.warning("%s: %s: trying the next address (TLS-3)", target, reply)
                raise _HostFailure(tlspolicy.STATUS, reply, remote=False) from None
            if audit is not None:
                why = safe_text(getattr(exc, "verify_message", None) or str(exc) or type(exc).__name__)
                what = "certificate verification failed" if isinstance(exc, ssl.SSLCertVerificationError) else "TLS failed"
                hostlog.warning("%s: %s (TLS-6 testing)", target, mtasts.testing_refusal(
                    audit, target.exchange, f"{what} for {target.exchange}: {why}"))
                if isinstance(exc, ssl.SSLCertVerificationError):
                    return "tls-unverified"
            self.stats["tls_fallbacks"] += 1
            hostlog.warning("%s: TLS handshake failed (%s): retrying the same host in plain text (TLS-1, opportunistic)",
                        target, safe_text(str(exc) or type(exc).__name__))
            return "tls"
        session.tls = True
        if policy.tlsa:  # TLS-7: the certificate must match one of the host's TLSA records (RFC 7672 §3.1)
            problem = dane.peer_problem(policy.tlsa, _peer_certificate(session.client))
            if problem is not None:
                self.stats["dane_failures"] += 1
                reply = dane.mismatch(str(target), problem)
                hostlog.warning("%s: %s: trying the next address (TLS-7)", target, reply)
                raise _HostFailure(tlspolicy.STATUS, reply, remote=False)
            session.dane_name = target.exchange.lower()
            self.stats["dane"] += 1
        if policy.verify or audit is not None:
            session.verified_name = target.exchange.lower()
        self.stats["tls"] += 1
        await self._hello(session)
        return None

    def _context(self, policy: TlsPolicy) -> ssl.SSLContext:
        """The SSL context for ``policy``: verifying for ``verify``, DANE-TA anchors for a DANE host
        without DANE-EE records (TLS-7), else the opportunistic one."""
        if policy.tlsa:
            return dane.ta_context(policy.tlsa) or self.tls_context
        if not policy.verify:
            return self.tls_context
        ca_file = self.settings.tls_ca_file  # made on first use, again if a reload changed it
        if self._verify_context is None or self._verify_context[0] != ca_file:
            self._verify_context = (ca_file, tlspolicy.verify_context(ca_file))
        return self._verify_context[1]

    # --- transactions -----------------------------------------------------------------------

    async def _transactions(self, session: _Session, attempt: _Attempt, pending: list[Recipient]) -> list[Recipient]:
        """As many transactions as it takes on this session; return the recipients still pending.

        RFC 5321 §4.5.3.1.10 / SESS-9: recipients refused with "too many" go into a
        further transaction, as long as the previous one made progress.
        """
        target = session.target
        if attempt.utf8 and not session.has("smtputf8"):  # RFC 6531 §3.2: no downgrade (SESS-15)
            reply = f"553 5.6.7 {target} does not support SMTPUTF8, needed for a non-ASCII address"
            for rcpt in pending:
                attempt.finish(rcpt, Disposition.BOUNCED, "5.6.7", reply, target, remote=False)
            return []
        if attempt.eight_bit and not session.has("8bitmime"):  # RFC 6152 §3: never raw 8-bit (SESS-14)
            reply = f"554 5.6.3 {target} does not support 8BITMIME and the message has 8-bit content"
            for rcpt in pending:
                attempt.finish(rcpt, Disposition.BOUNCED, "5.6.3", reply, target, remote=False)
            return []
        limit = session.size_limit
        if limit is not None and len(attempt.body) > limit:  # RFC 1870 §6: do not send it (SESS-13)
            reply = f"552 5.3.4 message size {len(attempt.body)} exceeds the fixed limit {limit} of {target}"
            for rcpt in pending:
                attempt.finish(rcpt, Disposition.BOUNCED, "5.3.4", reply, target, remote=False)
            return []
        queue = list(pending)
        later: list[Recipient] = []
        while queue:
            rset = bool(session.transactions) or session.rset_due
            if session.pipelining:  # SESS-16: [RSET] MAIL RCPT... DATA in one write
                accepted, leftovers, soft = await self._pipelined(session, attempt, queue, rset)
                session.transactions += 1
            else:
                if rset:
                    await self._rset(session)
                session.rset_due = False
                session.transactions += 1
                accepted, leftovers, soft = await self._one_transaction(session, attempt, queue)
            later.extend(soft)
            if not accepted or not leftovers:
                later.extend(leftovers)
                break
            queue = leftovers
        return later

    async def _pipelined(
        self, session: _Session, attempt: _Attempt, queue: list[Recipient], rset: bool,
    ) -> tuple[list[Recipient], list[Recipient], list[Recipient]]:
        """RFC 2920 (SESS-16): [RSET,] MAIL and RCPT×n in one write, then every reply in order.

        The same decisions as ``_one_transaction``, each reply checked against its command.
        DATA is not pipelined: it is sent only once a recipient was accepted (SESS-6), and
        data only after its 354 (SESS-7). A failed RSET on a connection just taken from the
        pool raises ``_Stale`` (nothing was delivered on it; the caller opens a new one).
        """
        s, target, env = self.settings, session.target, attempt.envelope
        protocol = session.client.protocol
        lines = [b"RSET"] if rset else []
        lines.append(b" ".join([b"MAIL", b"FROM:<" + env.sender.encode("utf-8") + b">", *self._mail_params(session, attempt)]))
        for rcpt in queue:
            lines.append(b" ".join([b"RCPT", b"TO:<" + rcpt.address.encode("utf-8") + b">", *self._rcpt_params(session, rcpt)]))
        if any(COMMAND_INJECTION_REGEX.search(line) for line in lines):  # as aiosmtplib checks each command
            raise _HostFailure("4.4.2", f"451 4.4.2 refusing to send a control character to {target}", remote=False)
        fresh, session.rset_due = session.rset_due, False
        if not isinstance(protocol, _PipeliningProtocol) or not protocol.is_connected:
            if fresh:
                raise _Stale()
            raise _HostFailure("4.4.2", f"451 4.4.2 lost connection with {target}", remote=False)
        protocol._expect = len(lines)
        try:
            protocol.write(b"\r\n".join(lines) + b"\r\n")
            if rset:
                try:
                    resp = await self._reply(session, "RSET", s.mail_timeout)
                except _HostFailure:
                    if fresh:
                        raise _Stale() from None
                    raise
                if resp.code != 250:
                    session.client.close()
                    if fresh:
                        raise _Stale()
                    raise _HostFailure("4.4.2", f"451 4.4.2 {target} refused RSET: {reply_text(resp.code, resp.message)}",
                                       remote=False)
            mail = await self._reply(session, "MAIL", s.mail_timeout)
            accepted: list[Recipient] = []
            soft: list[Recipient] = []
            leftovers: list[Recipient] = []
            for rcpt in queue:
                try:
                    resp = await self._reply(session, "RCPT", s.rcpt_timeout)
                except _HostFailure:
                    attempt.soft(accepted, "4.4.2", "451 4.4.2 lost connection before DATA", target, remote=False)
                    raise
                if mail.code != 250:
                    continue  # the RCPT replies of a refused MAIL mean nothing
                status, reply = enhanced_status(resp.code, resp.message, session.enhanced), reply_text(resp.code, resp.message)
                if resp.code in (250, 251):
                    accepted.append(rcpt)
                elif too_many_recipients(resp.code, resp.message):  # SESS-9: in a further transaction
                    attempt.soft([rcpt], "4" + status[1:], reply, target, remote=True)
                    leftovers.append(rcpt)
                elif resp.code >= 500:  # SESS-6: this recipient fails, the others go on
                    attempt.finish(rcpt, Disposition.BOUNCED, status, reply, target, remote=True)
                else:
                    attempt.soft([rcpt], status, reply, target, remote=True)
                    soft.append(rcpt)
        finally:
            protocol._expect = 0
        if mail.code != 250:
            status, reply = enhanced_status(mail.code, mail.message, session.enhanced), reply_text(mail.code, mail.message)
            if mail.code >= 500:  # authoritative for every recipient (MX-17); never cached (SESS-17)
                for rcpt in queue:
                    attempt.finish(rcpt, Disposition.BOUNCED, status, reply, target, remote=True)
                return [], [], []
            attempt.soft(queue, status, reply, target, remote=True)
            return [], [], list(queue)
        if not accepted:  # SESS-6: no DATA without an accepted recipient
            return [], leftovers, soft
        await self._data(session, attempt, accepted)
        return accepted, leftovers, soft + [r for r in accepted if r.address not in attempt.results]

    async def _reply(self, session: _Session, what: str, timeout: float) -> SMTPResponse:
        """The next reply of a pipelined group; a 421, a drop or a timeout ends the session (SESS-4)."""
        try:
            resp = await session.client.protocol.read_response(timeout=timeout)  # type: ignore[union-attr]
        except (*_WIRE_ERRORS, TimeoutError, AttributeError) as exc:
            raise _lost(session, what, exc) from None
        return _unless_closing(session, resp)

    async def _one_transaction(
        self, session: _Session, attempt: _Attempt, queue: list[Recipient],
    ) -> tuple[list[Recipient], list[Recipient], list[Recipient]]:
        """MAIL, RCPT×n, DATA. Returns (accepted, too-many leftovers, temporarily refused)."""
        s, target, env = self.settings, session.target, attempt.envelope
        sender = env.sender.encode("utf-8")
        resp = await self._command(session, b"MAIL", b"FROM:<" + sender + b">", *self._mail_params(session, attempt),
                                   timeout=s.mail_timeout)
        status, reply = enhanced_status(resp.code, resp.message, session.enhanced), reply_text(resp.code, resp.message)
        if resp.code >= 500:  # authoritative for every recipient (MX-17); never cached (SESS-17)
            for rcpt in queue:
                attempt.finish(rcpt, Disposition.BOUNCED, status, reply, target, remote=True)
            return [], [], []
        if resp.code != 250:
            attempt.soft(queue, status, reply, target, remote=True)
            return [], [], list(queue)
        accepted: list[Recipient] = []
        soft: list[Recipient] = []
        leftovers: list[Recipient] = []
        for index, rcpt in enumerate(queue):
            try:
                resp = await self._command(session, b"RCPT", b"TO:<" + rcpt.address.encode("utf-8") + b">",
                                           *self._rcpt_params(session, rcpt), timeout=s.rcpt_timeout)
            except _HostFailure:
                attempt.soft(accepted, "4.4.2", "451 4.4.2 lost connection before DATA", target, remote=False)
                raise
            status, reply = enhanced_status(resp.code, resp.message, session.enhanced), reply_text(resp.code, resp.message)
            if resp.code in (250, 251):
                accepted.append(rcpt)
            elif too_many_recipients(resp.code, resp.message):  # SESS-9: the rest in a further transaction
                leftovers = queue[index:]
                attempt.soft(leftovers, "4" + status[1:], reply, target, remote=True)
                break
            elif resp.code >= 500:  # SESS-6: this recipient fails, the others go on
                attempt.finish(rcpt, Disposition.BOUNCED, status, reply, target, remote=True)
            else:
                attempt.soft([rcpt], status, reply, target, remote=True)
                soft.append(rcpt)
        if not accepted:  # SESS-6: no DATA without an accepted recipient
            return [], leftovers, soft
        await self._data(session, attempt, accepted)
        return accepted, leftovers, soft + [r for r in accepted if r.address not in attempt.results]

    async def _data(self, session: _Session, attempt: _Attempt, accepted: list[Recipient]) -> None:
        """DATA, the stuffed message, and the reply that covers every accepted recipient (SESS-7/8).

        Each stage has its own timeout (RFC 5321 §4.5.3.2.4–.6; SESS-3): aiosmtplib's
        ``data()`` applies a single timeout to the 354 and to the final reply and none
        to the writes, so the data phase is driven here, block by block.
        """
        s, target, client = self.settings, session.target, session.client
        resp = await self._command(session, b"DATA", timeout=s.data_init_timeout)
        if resp.code != 354:  # SESS-7: never send data without 354
            status, reply = enhanced_status(resp.code, resp.message, session.enhanced), reply_text(resp.code, resp.message)
            if resp.code >= 500:
                for rcpt in accepted:
                    attempt.finish(rcpt, Disposition.BOUNCED, status, reply, target, remote=True)
            else:
                attempt.soft(accepted, status, reply, target, remote=True)
            return
        payload = dot_stuff(attempt.body)
        protocol = client.protocol
        sent_end = False
        try:
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            protocol._response_pending = True  # replies arriving while we write belong to this command
            for start in range(0, len(payload), CHUNK):
                chunk = payload[start:start + CHUNK]
                sent_end = start + CHUNK >= len(payload)
                protocol.write(chunk)
                if protocol._paused or protocol._connection_lost:  # else nothing to wait for
                    await asyncio.wait_for(protocol._drain_helper(), s.data_block_timeout)
            resp = await protocol.read_response(timeout=s.data_done_timeout)
        except (*_WIRE_ERRORS, TimeoutError) as exc:
            client.close()
            why = safe_text(str(exc) or type(exc).__name__)
            if sent_end:
                # SESS-4: no reply after "." is "not delivered, retry later". Not retried at
                # another address in this attempt, to keep the duplicate risk to one retry.
                reply = f"451 4.4.2 lost connection with {target} after end of data: {why}"
                for rcpt in accepted:
                    attempt.finish(rcpt, Disposition.DEFERRED, "4.4.2", reply, target, remote=False)
                raise _HostFailure("4.4.2", reply, remote=False) from None
            raise _HostFailure("4.4.2", f"451 4.4.2 lost connection with {target} while sending data: {why}",
                               remote=False) from None
        status, reply = enhanced_status(resp.code, resp.message, session.enhanced), reply_text(resp.code, resp.message)
        disposition = {2: Disposition.DELIVERED, 5: Disposition.BOUNCED}.get(resp.code // 100)
        if disposition is None:
            attempt.soft(accepted, status, reply, target, remote=True)
            if resp.code == 421:
                client.close()
                raise _HostFailure(status, reply, remote=True)
            return
        for rcpt in accepted:
            attempt.finish(rcpt, disposition, status, reply, target, remote=True)
            # DSN-9: a DSN-capable hop got NOTIFY/ORCPT and now owns success notices (RFC 3461 §5.2.2)
            attempt.results[rcpt.address].next_hop_dsn = session.esmtp and session.has("dsn")

    def _mail_params(self, session: _Session, attempt: _Attempt) -> list[bytes]:
        """MAIL parameters, each only when the server advertised its extension (SESS-1/13/14/15, DSN-9)."""
        if not session.esmtp:
            return []
        env, params = attempt.envelope, []
        if session.has("size"):
            params.append(f"SIZE={len(attempt.body)}")
        if session.has("8bitmime") and (attempt.eight_bit or (env.body or "").upper() == "8BITMIME"):
            params.append("BODY=8BITMIME")
        if session.has("smtputf8") and (attempt.utf8 or env.smtputf8):
            params.append("SMTPUTF8")
        if session.has("dsn"):
            if env.ret and env.ret.upper() in ("FULL", "HDRS"):
                params.append(f"RET={env.ret.upper()}")
            if env.envid:
                params.append(f"ENVID={xtext(env.envid)}")
        return [p.encode("ascii") for p in params]

    def _rcpt_params(self, session: _Session, rcpt: Recipient) -> list[bytes]:
        """NOTIFY and ORCPT passed through to a DSN-capable next hop (RFC 3461 §5.2; DSN-9)."""
        if not session.has("dsn"):
            return []
        params = []
        notify = [n.upper() for n in rcpt.notify if n.upper() in ("NEVER", "SUCCESS", "FAILURE", "DELAY")]
        if notify:
            params.append("NOTIFY=" + ",".join(notify))
        if rcpt.orcpt:
            kind, sep, address = rcpt.orcpt.partition(";")
            if sep and re.fullmatch(r"[A-Za-z0-9-]+", kind):
                params.append(f"ORCPT={kind};{xtext(address)}")
        return [p.encode("ascii") for p in params]

    async def _command(self, session: _Session, *args: bytes, timeout: float) -> SMTPResponse:
        """One command and its reply; a 421, a drop or a timeout ends the session (SESS-4, MX-17)."""
        try:
            resp = await session.client.execute_command(*args, timeout=timeout)
        except (*_WIRE_ERRORS, TimeoutError, ValueError) as exc:
            raise _lost(session, args[0].decode("ascii", "replace"), exc) from None
        return _unless_closing(session, resp)

    async def _rset(self, session: _Session) -> None:
        resp = await self._command(session, b"RSET", timeout=self.settings.mail_timeout)
        if resp.code != 250:
            session.client.close()
            raise _HostFailure("4.4.2", f"451 4.4.2 {session.target} refused RSET: {reply_text(resp.code, resp.message)}",
                               remote=False)

    # --- connection reuse -------------------------------------------------------------------

    def _bind_address(self, target: Target) -> str | None:
        """The egress address of the target's family, if configured (Postfix smtp_bind_address[6])."""
        for ip in self.settings.egress_ips:
            if (":" in ip) == (target.family == 6):
                return ip
        return None

    async def _checkout(self, key: tuple[str, int, str | None]) -> _Session | None:
        """An idle connection to this address that still answers RSET (SESS-17), or None."""
        pool = self._idle.get(key)
        while pool:
            session = pool.pop()
            if session.idle_timer:
                session.idle_timer.cancel()
            if not session.client.is_connected:
                continue
            if session.pipelining:  # RSET goes with the next transaction's group (SESS-16/17)
                session.rset_due = True
            else:
                try:
                    await self._rset(session)
                except _HostFailure:
                    continue
            session.transactions = 0
            self.stats["reused"] += 1
            return session
        return None

    def _release(self, session: _Session) -> None:
        """Keep a healthy session for the next message, or QUIT it."""
        pool = self._idle.setdefault(session.key, [])
        if not self.reuse or not session.client.is_connected or len(pool) >= self.max_idle:
            self._discard(session)
            return
        pool.append(session)
        session.idle_timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, session)

    def _expire(self, session: _Session) -> None:
        pool = self._idle.get(session.key, [])
        if session in pool:
            pool.remove(session)
            self._discard(session)

    def _discard(self, session: _Session) -> None:
        if not session.client.is_connected:
            session.client.close()
            return
        task = asyncio.get_running_loop().create_task(self._quit(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, session: _Session) -> None:
        try:
            await asyncio.wait_for(session.client.quit(timeout=5.0), 6.0)
        except (*_WIRE_ERRORS, TimeoutError):
            pass
        finally:
            session.client.close()


def _peer_certificate(client: aiosmtplib.SMTP) -> bytes | None:
    """The DER leaf certificate of a session's peer (also after an unverified handshake)."""
    ssl_object = client.transport.get_extra_info("ssl_object") if client.transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None


def _log_result(queue_id: str | None, result: RecipientResult, delay: float) -> None:
    """One Postfix-style line per recipient per attempt; peer text made safe (SEC-6).

    A refusal the host sent reads "host X said: ..." and our own reasons read as themselves,
    as in Postfix's logs (DSN-6).
    """
    word = {Disposition.DELIVERED: "sent", Disposition.DEFERRED: "deferred", Disposition.BOUNCED: "bounced"}
    relay = safe_text(result.remote_mta or "none", 200)
    reply = safe_text(result.reply)
    if result.remote_reply and result.remote_mta and result.disposition is not Disposition.DELIVERED:
        reply = f"host {relay} said: {reply}"
    log.info(
        "%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)",
        queue_id or "-", safe_text(result.recipient, 300), relay, delay, result.status, word[result.disposition], reply,
    )


__all__ = ["Courier", "canonical_data", "dot_stuff", "enhanced_status", "path_problem", "xtext"]
