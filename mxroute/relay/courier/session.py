"""One SMTP client session: connect, greeting, EHLO/HELO, STARTTLS (RFC 5321 §3–4, RFC 3207).

``Dialer.connect`` opens a ``Session`` with one address of the plan, or says why not
(``HostFailure``: move on to the next address, MX-17) or which TLS retry is due (``Retry``).
The TLS decisions (which SSL context, what a policy level demands) are ``tls.contexts``'s;
per-host events are logged by ``hosts``.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import NamedTuple

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from mxroute.relay.courier import hosts
from mxroute.relay.courier.hosts import Endpoint
from mxroute.relay.courier.pipelining import PipeliningProtocol, adopt
from mxroute.relay.courier.replies import enhanced_status, reply_text
from mxroute.routing.plan import Target
from mxroute.settings import Settings
from mxroute.text import safe_text
from mxroute.tls import dane
from mxroute.tls import policy as tlspolicy
from mxroute.tls.contexts import Contexts, TlsOutcome, peer_of, unmeetable, verdict
from mxroute.tls.mtasts import policy as mtasts
from mxroute.tls.policy import TlsPolicy

# aiosmtplib's own transport errors, plus the OS ones (a reset, an SSL failure).
WIRE_ERRORS = (aiosmtplib.SMTPException, OSError, EOFError)


class Stale(Exception):
    """A pooled connection that no longer answers (its RSET failed): nothing was sent on it."""


class HostFailure(Exception):
    """The session with this address is over (421, drop, timeout): move on (MX-17, SESS-4).

    ``remote``: ``reply`` is the host's own reply (a 421, a refused greeting), not our reason
    (DSN-6).
    """

    def __init__(self, status: str, reply: str, *, remote: bool) -> None:
        super().__init__(reply)
        self.status = status
        self.reply = reply
        self.remote = remote


class Retry(enum.Enum):
    """The TLS retry due with the same host after a failed handshake."""

    PLAIN = "tls"  # opportunistic TLS failed: the same host in plain text (TLS-1)
    UNVERIFIED = "tls-unverified"  # MTA-STS testing: the certificate failed; TLS unverified (TLS-6)


@dataclass
class Session:
    """A connected client session and what it learnt of the server."""

    client: aiosmtplib.SMTP
    target: Target
    key: Endpoint
    esmtp: bool = False
    extensions: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    verified_name: str | None = None  # the MX name the certificate was verified for (TLS-3 verify)
    dane_name: str | None = None  # the MX name whose TLSA records the certificate matched (TLS-7)
    transactions: int = 0
    messages: int = 0  # transactions over the connection's life (max_messages_per_connection)
    lease: str | None = None  # the shaping key whose connection slot it holds (issue 18)
    idle_timer: asyncio.TimerHandle | None = None
    rset_due: bool = False  # taken from the pool: RSET first, pipelined with the next transaction
    # the name TLS verifies when it is not the MX name: a routed next hop's IP address (issue 16)
    tls_host: str | None = None

    @property
    def name(self) -> str:
        """The name the certificate is checked for: the MX name (or the next hop's address)."""
        return self.tls_host or self.target.exchange

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

    def tls_summary(self) -> str:
        """``protocol/cipher/verification`` of this session (``none`` in plain text): the
        delivery line's ``tls=`` (issue 15 D). Verification: ``dane`` (the certificate matched
        TLSA records), ``verified`` (the MX name), else ``unverified``."""
        if not self.tls:
            return "none"
        peer = peer_of(self.client.transport)
        check = "dane" if self.dane_name else "verified" if self.verified_name else "unverified"
        return f"{peer.protocol or '?'}/{peer.cipher or '?'}/{check}"

    def tls_outcome(self, dane_problem: str | None = None) -> TlsOutcome:
        """What STARTTLS gave on this session, for ``tls.contexts.verdict``."""
        return TlsOutcome(
            tls=self.tls,
            verified_name=self.verified_name,
            dane_name=self.dane_name,
            dane_problem=dane_problem,
        )

    def lost(self, what: str, exc: BaseException) -> HostFailure:
        """A drop or a timeout while waiting for the reply to ``what``: the session is over
        (SESS-4)."""
        self.client.close()
        why = safe_text(str(exc) or type(exc).__name__)
        return HostFailure(
            "4.4.2",
            f"451 4.4.2 lost connection with {self.target} in reply to {what}: {why}",
            remote=False,
        )

    def unless_closing(self, resp: SMTPResponse) -> SMTPResponse:
        """``resp``, unless it is a 421: the server is closing, so is the session (RFC 5321 §3.8,
        MX-17)."""
        if resp.code == 421:
            self.client.close()
            raise HostFailure(
                enhanced_status(resp.code, resp.message, self.enhanced),
                reply_text(resp.code, resp.message),
                remote=True,
            )
        return resp

    async def command(self, *args: bytes, timeout: float, what: str | None = None) -> SMTPResponse:
        """One command and its reply; a 421, a drop or a timeout ends the session (SESS-4,
        MX-17). ``what`` names the command in errors (an AUTH line's words are credentials)."""
        try:
            resp = await self.client.execute_command(*args, timeout=timeout)
        except (*WIRE_ERRORS, TimeoutError, ValueError) as exc:
            raise self.lost(what or args[0].decode("ascii", "replace"), exc) from None
        return self.unless_closing(resp)

    async def reply(self, what: str, timeout: float) -> SMTPResponse:
        """The next reply of a pipelined group; a 421, a drop or a timeout ends the session
        (SESS-4)."""
        try:
            resp = await self.client.protocol.read_response(timeout=timeout)  # type: ignore[union-attr]
        except (*WIRE_ERRORS, TimeoutError, AttributeError) as exc:
            raise self.lost(what, exc) from None
        return self.unless_closing(resp)

    async def rset(self, timeout: float) -> None:
        resp = await self.command(b"RSET", timeout=timeout)
        if resp.code != 250:
            self.client.close()
            raise HostFailure(
                "4.4.2",
                f"451 4.4.2 {self.target} refused RSET: {reply_text(resp.code, resp.message)}",
                remote=False,
            )

    async def quit(self) -> None:
        """QUIT, bounded; the connection is closed in any case."""
        try:
            await asyncio.wait_for(self.client.quit(timeout=5.0), 6.0)
        except (*WIRE_ERRORS, TimeoutError):
            pass
        finally:
            self.client.close()

    @property
    def pipelined(self) -> PipeliningProtocol | None:
        """The protocol keeping pipelined replies, while the connection lasts; else None."""
        protocol = self.client.protocol
        if isinstance(protocol, PipeliningProtocol) and protocol.is_connected:
            return protocol
        return None


class Connected(NamedTuple):
    """What ``Dialer.connect`` gave: a ready session, or None and why (``problem``)."""

    session: Session | None
    greeted: bool  # a greeting was received (counts against mx_session_limit)
    problem: HostFailure | Retry | None


class Dialer:
    """Opens sessions: connect, greeting, EHLO (HELO fallback), STARTTLS when offered.

    ``settings`` may be replaced (a reload); ``stats`` is the courier's counters.
    """

    def __init__(self, settings: Settings, stats: dict[str, int], contexts: Contexts) -> None:
        self.settings = settings
        self.stats = stats
        self.contexts = contexts

    async def connect(
        self,
        target: Target,
        key: Endpoint,
        *,
        use_tls: bool,
        policy: TlsPolicy = TlsPolicy(),
        audit: mtasts.Lookup | None = None,
        implicit_tls: bool = False,
        tls_host: str | None = None,
    ) -> Connected:
        """Connect, read the greeting, EHLO (HELO fallback), STARTTLS when offered.

        A ``problem`` is a ``HostFailure``, or the ``Retry`` due after a failed handshake:
        ``PLAIN``, or ``UNVERIFIED`` when an ``audit`` (MTA-STS testing, TLS-6) found the
        certificate invalid. Under a required ``policy`` (TLS-3) a host without STARTTLS is a
        failure, never plain text. ``implicit_tls``: TLS from the first byte (``smtps://``,
        RFC 8314 §3.3), then EHLO; a failed handshake is a failure, never plain text.
        ``tls_host``: the name to verify instead of the MX name (a next hop's IP address).
        """
        name = tls_host or target.exchange
        context = None
        if implicit_tls:
            refusal = unmeetable(policy, str(target), name)
            if refusal is not None:
                return Connected(None, False, HostFailure(tlspolicy.STATUS, refusal, remote=False))
            context = self.contexts.for_host(policy, name, self.settings.tls_ca_file)
        client = await self._greeting(target, key, context, name, policy)
        if not isinstance(client, aiosmtplib.SMTP):
            return client
        session = Session(client, target, key, tls_host=tls_host)
        try:
            if implicit_tls:
                await self._secured(session, policy, False)  # what TLS proved, then EHLO
            else:
                problem = await self._plain_start(session, use_tls, policy, audit)
                if problem is not None:
                    return Connected(None, True, problem)
        except HostFailure as exc:
            client.close()
            return Connected(None, True, exc)
        self.stats["sessions"] += 1
        if session.pipelining:
            adopt(client.protocol)
        return Connected(session, True, None)

    async def _plain_start(
        self, session: Session, use_tls: bool, policy: TlsPolicy, audit: mtasts.Lookup | None
    ) -> HostFailure | Retry | None:
        """EHLO, then STARTTLS when offered (and ``use_tls``): None, the ``Retry`` due after a
        failed handshake, or the failure of a required policy without STARTTLS."""
        target = session.target
        await self.hello(session)
        if use_tls and session.has("starttls"):
            return await self.starttls(session, policy, audit)
        if audit is not None and not session.has("starttls"):  # TLS-6 testing: logged, delivered
            hosts.testing(
                target, mtasts.testing_refusal(audit, target.exchange, "STARTTLS not offered")
            )
            return None
        # no STARTTLS: a required policy refuses the host (TLS-3, RFC 3207 §6)
        ok, reply = verdict(policy, str(target), session.name, TlsOutcome(offered=False))
        if not ok:
            hosts.moving_on(target, reply, "TLS-3")
            await session.quit()
            return HostFailure(tlspolicy.STATUS, reply, remote=False)
        return None

    async def _greeting(
        self,
        target: Target,
        key: Endpoint,
        tls: ssl.SSLContext | None = None,
        name: str = "",
        policy: TlsPolicy = TlsPolicy(),
    ) -> aiosmtplib.SMTP | Connected:
        """A connected client that was greeted with 220 (RFC 5321 §4.5.3.2.1), or why not.

        ``tls``: the TLS handshake comes first (implicit TLS), checking ``name``."""
        s = self.settings
        sock = socket.socket(
            socket.AF_INET6 if target.family == 6 else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setblocking(False)
        try:
            if key.source:  # smtp_bind_address: leave from the egress address explain checks
                sock.bind((key.source, 0))
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (target.address, target.port)),
                s.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            sock.close()
            why = (
                "timed out"
                if isinstance(exc, TimeoutError)
                else (os.strerror(exc.errno) if exc.errno else str(exc))
            )
            hosts.connect_failed(target, why)
            return Connected(
                None,
                False,
                HostFailure(
                    "4.4.1", f"451 4.4.1 connect to {target}: {safe_text(why)}", remote=False
                ),
            )
        self.stats["connections"] += 1
        client = aiosmtplib.SMTP(
            sock=sock,
            local_hostname=s.helo_name,
            timeout=s.greeting_timeout,
            start_tls=False,
            use_tls=tls is not None,
            tls_context=tls,
            hostname=(name or target.address) if tls is not None else None,
        )
        try:
            await client.connect(timeout=s.greeting_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            # a 4xx/5xx greeting: skip the host (Postfix smtp_skip_5xx_greeting)
            client.close()
            reply = reply_text(exc.code, exc.message)
            hosts.greeted_with(target, reply)
            return Connected(
                None,
                True,
                HostFailure(enhanced_status(exc.code, exc.message, False), reply, remote=True),
            )
        except WIRE_ERRORS as exc:
            client.close()
            sock.close()
            if tls is not None and isinstance(exc.__cause__, ssl.SSLError):
                return Connected(None, False, _implicit_failed(target, name, policy,
                                                               exc.__cause__))
            return Connected(
                None,
                False,
                HostFailure(
                    "4.4.2",
                    f"451 4.4.2 no greeting from {target}: {safe_text(str(exc))}",
                    remote=False,
                ),
            )
        return client

    async def hello(self, session: Session) -> None:
        """EHLO, and HELO when EHLO gets a 5xx (RFC 5321 §4.1.1.1; SESS-1). 4xx/421: next host."""
        client, helo = session.client, self.settings.helo_name.encode("ascii")
        timeout = self.settings.greeting_timeout
        resp = await session.command(b"EHLO", helo, timeout=timeout)
        if resp.code == 250:
            client.last_ehlo_response = resp
            session.esmtp, session.extensions = True, dict(client.esmtp_extensions)
            return
        if resp.code >= 500:
            helo_resp = await session.command(b"HELO", helo, timeout=timeout)
            if helo_resp.code == 250:
                client.last_helo_response = helo_resp
                session.esmtp, session.extensions = False, {}  # HELO: no extension parameters
                return
            resp = helo_resp
        raise HostFailure(
            enhanced_status(resp.code, resp.message, False),
            reply_text(resp.code, resp.message),
            remote=True,
        )

    async def starttls(
        self,
        session: Session,
        policy: TlsPolicy = TlsPolicy(),
        audit: mtasts.Lookup | None = None,
    ) -> Retry | None:
        """STARTTLS (RFC 3207; TLS-1/2/3). None, or the ``Retry`` due.

        Opportunistic (``may``): a non-220 reply leaves the session in plain text (logged,
        counted). Required (``encrypt``/``verify``, TLS-3): a refusal, a failed handshake or a
        failed verification raises ``HostFailure`` (4.7.5): next host. After a handshake
        everything learnt before is discarded and EHLO is sent again (RFC 3207 §4.2).
        aiosmtplib reads exactly one reply to STARTTLS and drops whatever followed it before
        the handshake (TLS-2).
        """
        target = session.target
        refusal = unmeetable(policy, str(target), session.name)
        if refusal is not None:
            raise HostFailure(tlspolicy.STATUS, refusal, remote=False)
        plain = session.client.transport  # kept to abort it if the handshake fails half-way
        context = self.contexts.for_host(
            policy, session.name, self.settings.tls_ca_file, audited=audit is not None
        )
        try:
            await session.client.starttls(
                tls_context=context,
                server_hostname=session.name or None,
                timeout=self.settings.greeting_timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            reply = reply_text(exc.code, exc.message)
            if exc.code == 421:
                raise HostFailure("4.7.0", reply, remote=True) from None
            self._judge(session, policy, TlsOutcome(refused=reply))
            if audit is not None:
                hosts.testing(
                    target,
                    mtasts.testing_refusal(audit, target.exchange, f"STARTTLS refused: {reply}"),
                )
            self.stats["tls_fallbacks"] += 1
            hosts.plain_text(target, f"STARTTLS refused ({reply})", "continuing")
            return None
        except (*WIRE_ERRORS, ssl.SSLError) as exc:
            session.client.close()
            if plain is not None:
                # asyncio leaves it "closing" with the socket open after a failed start_tls.
                # The ignore: aiosmtplib types it BaseTransport though it is a Transport (it
                # casts it so itself), and no isinstance() as uvloop's transports are no
                # asyncio.Transport subclasses
                plain.abort()  # type: ignore[attr-defined, unused-ignore]
                await asyncio.sleep(0)
            return self._handshake_failed(session, policy, audit, exc)
        await self._secured(session, policy, audit is not None)
        return None

    def _handshake_failed(
        self,
        session: Session,
        policy: TlsPolicy,
        audit: mtasts.Lookup | None,
        exc: BaseException,
    ) -> Retry:
        """After a failed handshake: a required policy refuses the host; else the retry due."""
        target = session.target
        verification = isinstance(exc, ssl.SSLCertVerificationError)
        why = safe_text(getattr(exc, "verify_message", None) or str(exc) or type(exc).__name__)
        self._judge(
            session,
            policy,
            TlsOutcome(error=why, verification=verification, audited=audit is not None),
        )
        if audit is not None:
            what = "certificate verification failed" if verification else "TLS failed"
            hosts.testing(
                target,
                mtasts.testing_refusal(
                    audit, target.exchange, f"{what} for {target.exchange}: {why}"
                ),
            )
            if verification:
                return Retry.UNVERIFIED
        self.stats["tls_fallbacks"] += 1
        hosts.plain_text(
            target,
            f"TLS handshake failed ({safe_text(str(exc) or type(exc).__name__)})",
            "retrying the same host",
        )
        return Retry.PLAIN

    async def _secured(self, session: Session, policy: TlsPolicy, audited: bool) -> None:
        """TLS is up: what the certificate proved (TLS-3 verify, TLS-7 DANE), then EHLO (again,
        after STARTTLS; the first, with implicit TLS)."""
        name = session.name.lower()
        session.tls = True
        problem = None
        if policy.tlsa:
            # TLS-7: the certificate must match one of the host's TLSA records (RFC 7672 §3.1)
            problem = dane.peer_problem(policy.tlsa, peer_of(session.client.transport).der)
            self.stats["dane_failures" if problem else "dane"] += 1
            session.dane_name = None if problem else name
        if self.contexts.verifies(policy, session.name, audited=audited):
            session.verified_name = name
        self._judge(
            session, policy, session.tls_outcome(problem), rule="TLS-7" if policy.tlsa else "TLS-3"
        )
        self.stats["tls"] += 1
        await self.hello(session)

    @staticmethod
    def _judge(session: Session, policy: TlsPolicy, seen: TlsOutcome, rule: str = "TLS-3") -> None:
        """Raise ``HostFailure`` (4.7.5) when ``seen`` does not meet ``policy``: next address."""
        ok, reply = verdict(policy, str(session.target), session.name, seen)
        if not ok:
            hosts.moving_on(session.target, reply, rule)
            raise HostFailure(tlspolicy.STATUS, reply, remote=False)


def _implicit_failed(
    target: Target, name: str, policy: TlsPolicy, exc: ssl.SSLError
) -> HostFailure:
    """An implicit-TLS handshake failed (``smtps://``): never plain text on that port, so a
    failure whatever the level (4.7.5 when the level's own, else 4.7.0)."""
    why = safe_text(getattr(exc, "verify_message", None) or str(exc) or type(exc).__name__)
    seen = TlsOutcome(error=why, verification=isinstance(exc, ssl.SSLCertVerificationError))
    ok, reply = verdict(policy, str(target), name, seen)
    status = tlspolicy.STATUS
    if ok:
        status = "4.7.0"
        reply = f"451 4.7.0 TLS handshake with {target} failed: {why} (implicit TLS)"
    hosts.moving_on(target, reply, "RFC 8314")
    return HostFailure(status, reply, remote=False)


__all__ = ["WIRE_ERRORS", "Connected", "Dialer", "HostFailure", "Retry", "Session", "Stale"]
