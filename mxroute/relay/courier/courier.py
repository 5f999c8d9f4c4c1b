"""The courier: carry one message to one destination over SMTP, following a routing plan.

RFC 5321 §3–4 (the client session), §5.1 (try the plan's addresses in order),
RFC 3207 (opportunistic STARTTLS), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
RFC 6531 (SMTPUTF8), RFC 3461 (DSN parameters), RFC 2034 / 3463 (enhanced codes).

As in chasquid, the queue and the courier never meet: the courier knows nothing
of retries, disk or bounces. It is handed a ``Plan`` and returns one
``RecipientResult`` per recipient — delivered, bounced (a permanent answer) or
deferred (try again later). Decisions cite checklist IDs (MX-*, SESS-*, TLS-*, SEC-*).

This module walks the plan and logs one line per recipient; its parts have their own
modules: ``session`` (connect, EHLO, STARTTLS), ``transaction`` (lock-step and pipelined),
``replies`` (what a reply means), ``pool`` (SESS-17), ``hosts`` (RTY-4, per-host events),
``attempt`` (what one delivery has learnt) and ``upstream`` (a routed next hop's implicit TLS
and AUTH, issue 16).

Traffic shaping (issue 18): a delivery given the destination's ``Shape`` takes a message token
of its key when it has a ``message_rate``, opens a connection only with one of its key's
``connection_limit`` slots (and a token when it has a ``connection_rate``), held until the
connection ends, and closes a connection that has carried ``max_messages_per_connection``.
The counts are the ``limiter``'s (``relay.limiter``: this process's, or a shared one).
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Awaitable

from mxroute.relay.courier import hosts
from mxroute.relay.courier.attempt import Attempt
from mxroute.relay.courier.hosts import Endpoint, Hosts
from mxroute.relay.courier.pool import Pool
from mxroute.relay.courier.replies import path_problem
from mxroute.relay.courier.session import Connected, Dialer, HostFailure, Retry, Session, Stale
from mxroute.relay.courier.sites import Sites
from mxroute.relay.courier.transaction import Transactions
from mxroute.relay.courier.upstream import CONFIG_STATUS, SecretProblem, Upstream, authenticate
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult, Times
from mxroute.relay.limiter import Limiter, LocalLimiter
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.routing.shaping import Shape
from mxroute.settings import Settings
from mxroute.text import safe_text
from mxroute.tls import host as hosttls
from mxroute.tls import policy as tlspolicy
from mxroute.tls.contexts import Contexts, satisfied
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.mtasts.store import MtaSts
from mxroute.tls.policy import TlsPolicy

log = logging.getLogger(__name__)  # one line per recipient per attempt, Postfix-style

_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")


def canonical_data(message: bytes) -> bytes:
    """CRLF line endings only, ending in CRLF (RFC 5321 §2.3.8, §4.1.1.4; SESS-10/11).

    A bare CR or LF becomes CRLF, so no terminator variant (``<LF>.<LF>``, ...)
    can reach the next hop (SEC-2).
    """
    crlf = message.count(b"\r\n")  # what intake stored is already canonical: check by counting
    canonical = message.count(b"\r") == crlf == message.count(b"\n")
    data = message if canonical else _LINE_ENDINGS.sub(b"\r\n", message)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _headers(canonical: bytes) -> bytes:
    end = canonical.find(b"\r\n\r\n")
    return canonical if end < 0 else canonical[:end]


class Courier:
    """Deliver messages over SMTP following routing plans (see the module docstring).

    Its parts: ``dialer`` opens sessions (``session``), ``transactions`` runs the mail
    transactions on them (``transaction``), ``pool`` keeps a few idle connections per
    destination address for the next message (RSET between transactions, SESS-17; ``reuse``,
    ``idle_timeout``, ``max_idle_per_destination``), ``hosts`` remembers the hosts that did not
    answer (RTY-4). ``tls_context`` is used for opportunistic STARTTLS; by default an
    unverified one (RFC 7435: no policy, no verification, TLS-1). A courier belongs to the
    event loop that runs its ``deliver()`` calls; ``close()`` it in that loop. ``stats``
    counts connections, greeted sessions, reused ones, TLS sessions, cleartext fallbacks
    after a failed STARTTLS (never silent: each is also logged), and certificates that
    matched or failed a host's TLSA records (TLS-7).
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
        limiter: Limiter | None = None,
    ) -> None:
        self.limiter: Limiter = limiter if limiter is not None else LocalLimiter()
        self.mta_sts = mta_sts  # TLS-5/6: consulted per destination when settings.mta_sts is on
        self.starttls = starttls
        self.stats: dict[str, int] = {
            "connections": 0,
            "sessions": 0,
            "reused": 0,
            "tls": 0,
            "tls_fallbacks": 0,
            "dane": 0,
            "dane_failures": 0,  # TLS-7: certificates that matched / did not match TLSA records
            # hosts not contacted: MTA-STS enforce (TLS-6) or a failed TLSA lookup (TLS-7)
            "policy_skips": 0,
        }
        self.hosts = Hosts()
        self.dialer = Dialer(settings, self.stats, Contexts(tls_context))
        self.transactions = Transactions(settings)
        self.pool = Pool(
            settings,
            self.stats,
            reuse=reuse,
            idle_timeout=idle_timeout,
            max_idle_per_destination=max_idle_per_destination,
            limiter=self.limiter,
        )
        self._settings = settings
        # issue 18 §2: what each destination site allows and teaches (throttles, suspensions)
        self.sites = Sites(self.hosts.sites, self.stats, settings, self.hosts.clock)

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """New settings (a reload): every part reads them from its next step on."""
        self._settings = self.dialer.settings = self.transactions.settings = self.pool.settings = (
            settings
        )
        self.sites.configure(settings)

    # --- the one public operation -----------------------------------------------------------

    async def deliver(
        self,
        plan: Plan,
        envelope: Envelope,
        recipients: list[Recipient],
        message: bytes,
        *,
        tls: TlsPolicy = TlsPolicy(),
        queue_id: str | None = None,
        times: Times | None = None,
        shape: Shape | None = None,
    ) -> list[RecipientResult]:
        """Deliver ``message`` to ``recipients`` (all of ``plan.domain``); one result for each.

        ``tls``: the destination's TLS level, as ``routing.route()`` looked it up with the plan.
        ``times``: the message's arrival and this attempt's start, for the logged delays
        (without them ``delay`` is this call's own duration). ``shape``: the destination's
        traffic shaping (issue 18); None: no limits here.
        """
        started = time.monotonic()
        body = canonical_data(message)
        addresses_ascii = envelope.sender.isascii() and all(r.address.isascii() for r in recipients)
        attempt = Attempt(
            envelope=envelope,
            body=body,
            eight_bit=not body.isascii(),
            utf8=not addresses_ascii or (envelope.smtputf8 and not _headers(body).isascii()),
            tls=tls,
            dane=plan.dane,
            shape=shape,
        )
        valid = _valid(attempt, envelope, recipients)
        if plan.verdict is Verdict.TEMPORARY:  # MX-6: DNS said "later"
            reply = f"451 {plan.dsn_status} {safe_text(plan.reason)}"
            for rcpt in valid:
                attempt.finish(
                    rcpt, Disposition.DEFERRED, plan.dsn_status, reply, None, remote=False
                )
        elif plan.verdict is Verdict.PERMANENT:  # MX-5/9/10/11: DNS said "never"
            code = 556 if plan.dsn_status == "5.1.10" else 550
            reply = f"{code} {plan.dsn_status} {safe_text(plan.reason)}"
            for rcpt in valid:
                attempt.finish(
                    rcpt, Disposition.BOUNCED, plan.dsn_status, reply, None, remote=False
                )
        elif valid and _upstream(plan, attempt, valid):  # else deferred: no secret (4.3.5)
            if (
                self.mta_sts is not None
                and mtasts.skip_reason(
                    self.settings.mta_sts, plan.domain, attempt.tls, deliverable=plan.deliverable
                )
                is None
            ):
                attempt.sts = await self.mta_sts.lookup(plan.domain)  # MTA-STS (TLS-5/6)
            if shape is not None and shape.limits.message_rate:  # issue 18: a message token
                await self.limiter.take(shape.key, shape.limits.message_rate, shape.message_burst)
            await self.sites.walk(plan, attempt, valid, lambda p: self._walk(p, attempt, valid))
        out = [attempt.results[r.address] for r in recipients]
        delays = _delays(attempt, times, time.monotonic() - started)
        for result in {r.recipient: r for r in out}.values():
            _log_result(queue_id, result, delays, attempt.met)
        return out

    def forget_unreachable(self) -> None:
        """Try every host again at the next delivery, and fetch MTA-STS policies whose last fetch
        failed (``mxroute queue flush``)."""
        self.hosts.forget()
        if self.mta_sts is not None:
            self.mta_sts.forget_failures()

    async def close(self) -> None:
        """Close every idle connection (QUIT, bounded) and wait for closings in progress."""
        await self.pool.close()

    # --- walking the plan -------------------------------------------------------------------

    async def _walk(self, plan: Plan, attempt: Attempt, recipients: list[Recipient]) -> None:
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
                hosts.session_limit(
                    plan.domain, limit, len(plan.targets) - plan.targets.index(target)
                )
                break
            session, greeted = await self._open(target, attempt, pending)
            if greeted:
                sessions += 1
            if session is None:
                continue
            try:
                try:
                    pending = await self._send(session, attempt, pending)
                except Stale:  # a pooled connection the server had closed: a new one (SESS-17)
                    self.pool.uncount()
                    self.pool.discard(session)
                    fresh, _ = await self._open(target, attempt, pending, pool=False)
                    if fresh is None:
                        continue
                    session = fresh
                    pending = await self._send(session, attempt, pending)
            except HostFailure as exc:
                attempt.soft(pending, exc.status, exc.reply, target, remote=exc.remote)
                pending = [r for r in pending if r.address not in attempt.results]
                self.pool.discard(session)
                continue
            if _spent(session, attempt.shape):  # issue 18: max_messages_per_connection
                self.pool.discard(session)
            else:
                self.pool.release(session)
        for rcpt in pending:
            attempt.results[rcpt.address] = attempt.deferred(rcpt)

    async def _send(
        self, session: Session, attempt: Attempt, pending: list[Recipient],
    ) -> list[Recipient]:
        """The transaction on ``session``, timed (delays d) and its host's TLS noted."""
        attempt.met[str(session.target)] = session.tls_summary()
        begun = time.monotonic()
        try:
            return await self.transactions.run(session, attempt, pending)
        finally:
            attempt.transfer += time.monotonic() - begun

    async def _open(
        self,
        target: Target,
        attempt: Attempt,
        pending: list[Recipient],
        *,
        pool: bool = True,
    ) -> tuple[Session | None, bool]:
        """A ready session with ``target`` (pooled or new), timed (delays c).

        Returns (session or None, whether a greeting was received).
        """
        begun = time.monotonic()
        try:
            session, greeted = await self._ready(target, attempt, pending, pool=pool)
        finally:
            attempt.setup += time.monotonic() - begun
        if greeted:
            attempt.met.setdefault(str(target), "none")  # contacted: relay= names it
        return session, greeted

    async def _ready(
        self,
        target: Target,
        attempt: Attempt,
        pending: list[Recipient],
        *,
        pool: bool,
    ) -> tuple[Session | None, bool]:
        """A ready session with ``target`` (pooled or new): greeting, EHLO/HELO, STARTTLS."""
        upstream = attempt.upstream
        key = Endpoint(target.address, target.port, self._bind_address(target),
                       upstream.identity if upstream else None)
        name = upstream.tls_name(target) if upstream else target.exchange
        # the MX host's own TLS policy: DANE where it governs the host (TLS-7), else MTA-STS (TLS-6)
        policy, refusal, rule = hosttls.for_host(
            attempt.tls, attempt.dane, attempt.sts, target.exchange, str(target)
        )
        if refusal is not None:
            self.stats["policy_skips"] += 1
            hosts.policy_skip(target, refusal, rule)
            # TLS-6/7: never contacted
            attempt.soft(pending, tlspolicy.STATUS, refusal, target, remote=False)
            return None, False
        audit = None  # MTA-STS testing: the lookup whose "enforce" verdict is only logged (TLS-6)
        if rule == "TLS-6":
            note = mtasts.testing_note(attempt.sts, target.exchange)
            if note is not None:
                hosts.testing(target, note)
            audit = mtasts.audited(attempt.sts, target.exchange)
        lease = attempt.shape.key if attempt.shape is not None else None
        pooled = await self.pool.checkout(key, lease) if pool else None
        if pooled is not None:
            if satisfied(
                policy,
                tls=pooled.tls,
                verified_name=pooled.verified_name,
                exchange=name,
                dane_name=pooled.dane_name,
            ):
                attempt.walk.session(target.family)
                return pooled, True
            self.pool.uncount()  # TLS-3: not good enough for this policy; back to the pool
            self.pool.release(pooled)
        async with self.hosts.contact(key) as known:  # RTY-4
            if known is not None:
                attempt.walk.no_session(target.family, (target, known.status, known.reply))
                attempt.soft(
                    pending,
                    known.status,
                    f"{known.reply} (host skipped until its retry time, RTY-4)",
                    target,
                    remote=False,
                )
                return None, False
            try:
                await self._slot(attempt.shape)
            except HostFailure as exc:  # issue 18: every connection slot stayed in use
                attempt.soft(pending, exc.status, exc.reply, target, remote=False)
                return None, False
            session, greeted, problem = await self._leased(
                lease, self._dial(target, key, policy, audit, upstream))
            if session is not None:
                self.hosts.answered(key)
                attempt.walk.session(target.family)
                return session, greeted
            failure = (
                problem
                if isinstance(problem, HostFailure)
                else HostFailure("4.4.1", "451 4.4.1 no session", remote=False)
            )
            attempt.soft(pending, failure.status, failure.reply, target, remote=failure.remote)
            if failure.status != tlspolicy.STATUS:  # TLS-3: a policy's failure is not the host's
                attempt.walk.no_session(target.family, (target, failure.status, failure.reply))
                self.hosts.failed(
                    key, failure.status, failure.reply, self.settings.retry_min_seconds,
                    name=str(target),
                )
            return None, greeted

    async def _dial(
        self,
        target: Target,
        key: Endpoint,
        policy: TlsPolicy,
        audit: mtasts.Lookup | None,
        upstream: Upstream | None = None,
    ) -> Connected:
        """A new session under ``policy``, and the TLS retries a failed handshake calls for;
        at a routed next hop, implicit TLS and AUTH as its rule says (issue 16).

        ``starttls=False`` turns the opportunistic default off; a required policy still applies.
        MTA-STS testing, the certificate failed: TLS as without a policy (TLS-6). Opportunistic,
        the handshake failed: the same host in plain text (TLS-1) — where AUTH then refuses it.
        """
        use_tls = policy.level != "none" and (self.starttls or policy.required)
        implicit = upstream is not None and upstream.implicit_tls
        tls_host = (upstream.tls_name(target) or None) if upstream is not None else None
        session, greeted, problem = await self.dialer.connect(
            target, key, use_tls=use_tls, policy=policy, audit=audit, implicit_tls=implicit,
            tls_host=tls_host,
        )
        if problem is Retry.UNVERIFIED:
            session, again, problem = await self.dialer.connect(
                target, key, use_tls=True, policy=policy
            )
            greeted = greeted or again
        if problem is Retry.PLAIN:
            session, again, problem = await self.dialer.connect(
                target, key, use_tls=False, tls_host=tls_host
            )
            greeted = greeted or again
        if session is not None and upstream is not None:
            try:
                await authenticate(session, upstream, self.settings.greeting_timeout)
            except HostFailure as exc:
                self.pool.discard(session)  # QUIT, in the background
                return Connected(None, greeted, exc)
        return Connected(session, greeted, problem)

    async def _slot(self, shape: Shape | None) -> None:
        """A connection slot of ``shape``'s key (and a connection token with a
        ``connection_rate``); first without waiting, else after closing the idle connections
        holding the key's slots, waiting at most ``connect_timeout`` (then HostFailure 4.4.5)."""
        if shape is None:
            return
        limit = shape.connection_limit
        if not await self.limiter.acquire(shape.key, limit, timeout=0):
            self.pool.close_idle(shape.key)
            if not await self.limiter.acquire(shape.key, limit,
                                              timeout=self.settings.connect_timeout):
                raise HostFailure("4.4.5", f"451 4.4.5 all {limit} connections of {shape.key} "
                                  "stayed in use (traffic shaping)", remote=False)
        if shape.limits.connection_rate:
            try:
                await self.limiter.take(f"{shape.key}#connections",
                                        shape.limits.connection_rate / 60.0, 1)
            except BaseException:
                self.limiter.release(shape.key)
                raise

    async def _leased(self, lease: str | None, dialing: Awaitable[Connected]) -> Connected:
        """``dialing``'s outcome; its session holds the slot ``_slot`` took for ``lease``, which
        goes back at once when no session came (or the dial was cancelled)."""
        connected: Connected | None = None
        try:
            connected = await dialing
        finally:
            if lease is not None:
                if connected is not None and connected.session is not None:
                    connected.session.lease = lease
                else:
                    self.limiter.release(lease)
        return connected

    def _bind_address(self, target: Target) -> str | None:
        """The egress address of the target's family, if configured (smtp_bind_address[6])."""
        for ip in self.settings.egress_ips:
            if (":" in ip) == (target.family == 6):
                return ip
        return None


def _spent(session: Session, shape: Shape | None) -> bool:
    """``session`` has carried its shaping rule's ``max_messages_per_connection``."""
    most = shape.limits.max_messages_per_connection if shape is not None else None
    return most is not None and session.messages >= most


def _upstream(plan: Plan, attempt: Attempt, recipients: list[Recipient]) -> bool:
    """The routed next hop's demands on ``attempt`` (issue 16); False, the recipients
    deferred (4.3.5, naming the file), when its AUTH secret cannot be read. (With AUTH, TLS
    is required: ``routing.rules.Chosen.tls_level``, which explain shows too.)"""
    try:
        attempt.upstream = Upstream.of_plan(plan)
    except SecretProblem as exc:
        assert plan.route is not None
        reply = f"451 {CONFIG_STATUS} routes rule {plan.route.number}: {exc}"
        log.warning("%s: %s: deferred", plan.domain, reply)
        for rcpt in recipients:
            attempt.finish(rcpt, Disposition.DEFERRED, CONFIG_STATUS, reply, None,
                           remote=False)
        return False
    return True


def _valid(attempt: Attempt, envelope: Envelope, recipients: list[Recipient]) -> list[Recipient]:
    """The recipients that may go into a RCPT command, once each; the others bounce (SEC-5)."""
    valid: list[Recipient] = []
    seen: set[str] = set()
    sender_problem = path_problem(envelope.sender, null_ok=True)
    for rcpt in recipients:
        if rcpt.address in seen:
            continue
        seen.add(rcpt.address)
        problem = path_problem(rcpt.address)
        if problem:
            attempt.finish(
                rcpt,
                Disposition.BOUNCED,
                "5.1.3",
                f"553 5.1.3 bad recipient address: {problem}",
                None,
                remote=False,
            )
        elif sender_problem:
            attempt.finish(
                rcpt,
                Disposition.BOUNCED,
                "5.1.7",
                f"553 5.1.7 bad sender address: {sender_problem}",
                None,
                remote=False,
            )
        else:
            valid.append(rcpt)
    return valid


def _seconds(value: float) -> str:
    """Postfix's way with a part of ``delays``: 0.25, 1.2, 0."""
    return f"{max(value, 0.0):.2f}".rstrip("0").rstrip(".") or "0"


def _delays(attempt: Attempt, times: Times | None, elapsed: float) -> str:
    """``delay=D, delays=a/b/c/d`` (issue 15 D, as Postfix): D since the client's MAIL FROM;
    before the queue, in the queue, connection set-up (DNS, connect, greeting, EHLO, TLS),
    transmission. Without ``times``: D is ``elapsed`` and a, b are 0."""
    if times is None:
        total, parts = elapsed, [0.0, 0.0, attempt.setup]
    else:
        total = time.time() - times.arrival + times.intake
        parts = [times.intake, times.started - times.arrival, times.routing + attempt.setup]
    delays = "/".join(_seconds(part) for part in [*parts, attempt.transfer])
    return f"delay={max(total, 0.0):.2f}, delays={delays}"


def _log_result(
    queue_id: str | None, result: RecipientResult, delays: str, met: dict[str, str],
) -> None:
    """One Postfix-style line per recipient per attempt; peer text made safe (SEC-6).

    A refusal the host sent reads "host X said: ..." and our own reasons read as themselves,
    as in Postfix's logs (DSN-6). ``relay=none`` and ``tls=none`` when no host was contacted
    (issue 15 D; the reason names the host that was tried).
    """
    word = {
        Disposition.DELIVERED: "sent",
        Disposition.DEFERRED: "deferred",
        Disposition.BOUNCED: "bounced",
    }
    contacted = result.remote_mta is not None and result.remote_mta in met
    relay = safe_text(result.remote_mta or "none", 200) if contacted else "none"
    tls = met.get(result.remote_mta or "", "none")
    reply = safe_text(result.reply)
    if (
        result.remote_reply
        and result.remote_mta
        and result.disposition is not Disposition.DELIVERED
    ):
        reply = f"host {relay} said: {reply}"
    log.info(
        "%s: to=<%s>, relay=%s, %s, tls=%s, dsn=%s, status=%s (%s)",
        queue_id or "-",
        safe_text(result.recipient, 300),
        relay,
        delays,
        tls,
        result.status,
        word[result.disposition],
        reply,
    )


__all__ = ["Courier", "canonical_data"]
