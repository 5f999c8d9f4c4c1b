"""``RelaySMTP``: aiosmtpd's SMTP protocol with what 1.4.6 lacks.

MAIL/RCPT parameters parsed case-preserving with the DSN extension (RFC 3461 §4),
enhanced status codes on every reply (RFC 2034), PIPELINING/DSN advertised (by the
handler's EHLO hook), a multi-line reply written in one piece, a client cap, a DATA
timeout, AUTH refused inside a transaction and checked off the event loop (aiosmtpd's
authenticator is synchronous: ``defer_auth`` keeps the login for the handler's
credentials to check). The policy itself (what is
accepted, where it is stored) is the handler's: ``handler.Intake``.

SEC-1: the DATA body is read up to ``<CRLF>.<CRLF>`` (in bulk, ``wire.LeanSMTP.body_piece``;
line by line with ``readuntil(b"\\r\\n")`` as aiosmtpd where bulk cannot be used), so only
``<CRLF>.<CRLF>`` ends a message; a bare LF or CR stays inside a line. ``Intake`` rejects any
bare CR and normalises (or rejects, per ``bare_newline``) every bare LF, as Postfix 3.9's
``smtpd_forbid_bare_newline``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, TLSSetupException
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mxroute.address import Address
from mxroute.relay.envelope import Recipient
from mxroute.relay.intake import clientname
from mxroute.relay.intake.caps import AUTH_TOO_MANY, SessionCaps
from mxroute.relay.intake.params import Reply, split_path
from mxroute.relay.intake.wire import LeanSMTP, unstuff
from mxroute.text import safe_text

if TYPE_CHECKING:
    from mxroute.relay.intake.handler import Intake

log = logging.getLogger(__name__)

ENHANCED = re.compile(r"\d\.\d{1,3}\.\d{1,3}( |\Z)")
# SEC-10: 5xx replies without a message accepted, then 421 and close
# (Postfix smtpd_hard_error_limit)
HARD_ERROR_LIMIT = 20
# issue 22: a DATA the in-flight budget cannot hold; temporary, the client retries
BUDGET_FULL = "452 4.3.1 Insufficient system resources: too much mail in flight, try again later"
RESERVE_STEP = 64 << 10  # budget taken a block at a time as DATA arrives beyond SIZE=
PENDING_AUTH = AuthResult(success=False, handled=False,
                          message="454 4.7.0 Temporary authentication failure")

# RFC 2034 §3: enhanced codes on every reply; these are the defaults for aiosmtpd's own replies.
DEFAULT_ENHANCED = {
    "2": "2.0.0", "4": "4.0.0", "5": "5.5.0", "421": "4.3.2", "450": "4.2.0", "451": "4.3.0",
    "452": "4.3.1", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.1.1", "552": "5.3.4", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4",
}


def enhance(status: str) -> str:
    """Prefix an enhanced status code where aiosmtpd's own reply lacks one (RFC 2034 §3)."""
    code, sep, text = status[:3], status[3:4], status[4:]
    if text[1:2] == "." and ENHANCED.match(text) or not code.isdigit() or code in NO_ENHANCED:
        return status
    enhanced = DEFAULT_ENHANCED.get(code) or DEFAULT_ENHANCED[code[0]]
    return f"{code}{sep or ' '}{enhanced} {text}".rstrip()


NO_ENHANCED = frozenset({"220", "334", "354"})


def peer_ip(session: Session) -> str:
    """The client's address as text, or ``unknown``."""
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


def defer_auth(
    server: SMTP, session: Session, envelope: Any, mechanism: str, auth_data: Any,
) -> AuthResult:
    """aiosmtpd's synchronous authenticator: only defers the check
    (RelaySMTP finishes it off the loop)."""
    if isinstance(server, RelaySMTP) and isinstance(auth_data, LoginPassword):
        server.auth_pending = auth_data
        return PENDING_AUTH
    return AuthResult(success=False, handled=False,
                      message="535 5.7.8 Authentication credentials invalid")


class RelaySession(Session):
    """aiosmtpd's session without its legacy ``login_data``, whose every use (aiosmtpd sets it
    at each successful AUTH) logged a deprecation WARNING (issue 17)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class RelayEnvelope(SMTPEnvelope):
    """aiosmtpd's envelope plus what we parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.has_mail = False
        self.sender: Address | None = None
        self.recipients: list[Recipient] = []
        self.ret: str | None = None
        self.envid: str | None = None
        self.body: str | None = None
        self.size = 0  # MAIL FROM's SIZE= (RFC 1870), 0 when not given
        self.data: bytearray | None = None  # DATA received, un-stuffed (the one copy, issue 22)
        self.mail_at = 0.0  # when MAIL FROM was accepted (the handler's clock)


class RelaySMTP(LeanSMTP):
    """aiosmtpd's SMTP with DSN parameters, enhanced codes, a client cap and bounded DATA."""

    # lines are checked after DATA (bare-LF lines may share one CRLF line)
    line_length_limit = 1 << 20

    def __init__(self, intake: Intake, *, implicit_tls: bool = False, **kwargs: Any) -> None:
        super().__init__(intake, **kwargs)
        self.implicit_tls = implicit_tls  # an smtps:// listener: TLS before the greeting
        # Per session, not aiosmtpd's class-wide dict: RFC 3461 §4 adds 110 octets to MAIL
        # (RET, ENVID) and 500 to RCPT (NOTIFY, ORCPT); RFC 4954 §5 adds 500 to MAIL (AUTH=).
        # aiosmtpd's EHLO adds SIZE's 26 and SMTPUTF8's 10 itself.
        self.command_size_limits = collections.defaultdict(
            lambda: self.command_size_limit, {"MAIL": 512 + 110 + 500, "RCPT": 512 + 500}
        )
        self.intake = intake
        self.auth_pending: LoginPassword | None = None
        self._in_ehlo = False
        self._continued: list[bytes] = []  # the lines of a multi-line reply so far
        self._refused = False
        self.client_ip = ""
        self.rdns: asyncio.Task[str] | None = None  # the client's verified name (issue 15 C5)
        self.auth_failures = 0
        self.errors = 0  # 5xx replies since the last accepted message (SEC-10)
        settings = intake.settings
        self.caps = SessionCaps(time.monotonic(), settings.max_session_seconds,
                                settings.junk_command_limit)  # issue 21
        self._held = 0  # in-flight budget bytes this session's DATA holds (issue 22)

    async def run_command(self, command: str, method: Any, arg: str | None) -> None:
        """``method`` behind the session caps (issue 21: SEC-10's session duration and
        commands without a transaction): past one, ``421 4.7.0`` and the close."""
        refusal = self.caps.refusal(command, time.monotonic())
        if refusal is None:
            await method(arg)
            return
        log.info("session closed: client=%s: %s", self.client_ip or "unknown", refusal[10:])
        await self.push(refusal)
        if self.transport is not None:
            self.transport.close()

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def _create_session(self) -> Session:
        return RelaySession(self.loop)

    def env(self) -> RelayEnvelope:
        assert isinstance(self.envelope, RelayEnvelope)
        return self.envelope

    # -- connections --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            refusal = self.intake.admit(self, ip)
            if refusal is not None:
                self._refused = True
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self.rdns = clientname.start(self.intake.resolver, ip)
        super().connection_made(transport)
        if self.implicit_tls and self.session is not None and self.session.ssl is None:
            # what aiosmtpd records after STARTTLS: Received: says ESMTPS, EOF is TLS's
            self.session.ssl = {name: transport.get_extra_info(name)
                                for name in ("sslcontext", "cipher", "peercert", "ssl_object")}

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.intake.release(self)
        if self.rdns is not None:
            self.rdns.cancel()
        super().connection_lost(error)

    async def handle_exception(self, error: Exception) -> str:
        """A failed STARTTLS handshake (a scanner probing old protocols, a client that trusts
        no certificate) is one INFO line, not aiosmtpd's ERROR traceback (issue 17); aiosmtpd
        then closes the connection."""
        if isinstance(error, TLSSetupException):
            cause = error.__cause__
            reason = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
            log.info("TLS handshake failed: client=%s: %s", self.client_ip or "unknown",
                     safe_text(str(reason), 200))
            return "454 4.7.0 TLS not available due to temporary reason"
        return await super().handle_exception(error)

    # -- replies --
    async def push(self, status: Any) -> None:
        """Reply with enhanced codes; a multi-line reply's ``NNN-`` lines wait for its last
        line, so the whole reply goes out in ONE write (one segment, as Postfix): a client
        that reads once after EHLO gets every line (issue 13)."""
        if isinstance(status, str) and not self._in_ehlo:
            status = enhance(status)
        line = (status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
                if isinstance(status, str) else bytes(status))
        if line.rpartition(b"\n")[2][3:4] == b"-":  # its (last) line is a continuation
            self._continued.append(line)
            return
        if self._continued:
            line, self._continued = b"\r\n".join([*self._continued, line]), []
        await self.write_reply(line)  # one write (with the replies a pipelined batch held)
        if line[:1] == b"5":
            self.errors += 1
            transport = self.transport
            if (self.errors == HARD_ERROR_LIMIT and transport is not None
                    and not transport.is_closing()):
                await self.write_reply(b"421 4.7.0 Too many errors, closing the connection")
                transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_AUTH(self, arg: str) -> None:
        if self.envelope is not None and self.env().has_mail:
            # RFC 4954 §4
            await self.push("503 5.5.1 AUTH not permitted during a mail transaction")
            return
        ip = peer_ip(self.session) if self.session else "unknown"  # as Credentials.check
        if self.intake.auth_failures.blocked(ip, time.monotonic()):  # SEC-8, issue 21
            log.info("auth refused: client=%s: too many failed attempts", ip)
            await self.push(AUTH_TOO_MANY)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))

    async def _finish_auth(self, result: AuthResult) -> AuthResult:
        data, self.auth_pending = self.auth_pending, None
        if result is not PENDING_AUTH or data is None:
            return result
        return await self.intake.credentials.check(self, data)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, receiving into ONE buffer counted against the in-flight budget
        (issue 22). Lines are read as aiosmtpd does (``readuntil(b"\\r\\n")``: only
        ``<CRLF>.<CRLF>`` ends the data, SEC-1) and un-stuffed as they come; a message the
        budget cannot hold is read to its end and refused with ``452 4.3.1`` (a client may
        retry), one over ``max_message_size`` with ``552``, a line over the stream limit with
        ``500``, as aiosmtpd. The budget is given back once the handler has spooled the
        message (or refused it), however the session ends."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        env = self.env()
        if not env.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        budget = self.intake.budget
        held = self.footprint(env.size) if env.size else 0
        if not budget.take(held):  # the declared SIZE= no longer fits
            await self.push(BUDGET_FULL)
            return
        try:
            await self._receive(env, held)
        finally:
            budget.give(self._held)
            self._held = 0

    def footprint(self, size: int) -> int:
        """Bytes a DATA of ``size`` holds in memory: its buffer, and (once that large) the
        stream reader's, which reads up to twice the line limit ahead before it pauses; 0: that
        reader buffer alone (all a refused DATA still holds while it is read to its end)."""
        ahead = 2 * self.line_length_limit
        return size + min(size, ahead) if size else ahead

    def _keep(self, size: int) -> None:
        """Give back what this DATA holds beyond ``size`` bytes."""
        if self._held > size:
            self.intake.budget.give(self._held - size)
            self._held = size

    async def _receive(self, env: RelayEnvelope, declared: int) -> None:
        self._held = declared
        self._reset_timeout(self.intake.settings.data_timeout)  # DATA phase bound (SEC-10)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        budget, limit = self.intake.budget, self.data_size_limit
        data = bytearray()
        received, problem, continued, end = 0, "", False, False
        self._bulk = True
        while self.transport is not None and not end:
            try:
                line, end = await self.body_piece(continued)  # a line, or the rest in bulk
            except asyncio.CancelledError:
                log.info("Connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:  # longer than the stream limit
                problem = problem or "500 Line too long (see RFC5321 4.5.3.1.6)"
                data = bytearray()
                await self._reader.read(exc.consumed)
                continued = True  # the rest of this line is no end of data
                continue
            continued = False
            received += len(line)
            if problem or not line:
                continue
            if limit and received > limit:
                problem, data = "552 Error: Too much mail data", bytearray()
                self._keep(self.footprint(0))
                continue
            need = self.footprint(received)
            if need > self._held:  # more room, a block at a time (SIZE= reserved it all)
                step = max(need - self._held, RESERVE_STEP)
                if not budget.take(step):
                    problem, data = BUDGET_FULL, bytearray()
                    log.info("refused: DATA from %s: in-flight budget full (%d of %d bytes)",
                             self.client_ip or "unknown", budget.used, budget.limit)
                    self._keep(self.footprint(0))
                    continue
                self._held += step
            data += unstuff(line)
        if problem:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(problem)
            return
        env.data, data = data, bytearray()  # the envelope holds the one copy
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    # -- envelope commands (RFC 5321 §4.1.1.2-3, RFC 3461 §4, RFC 1870, RFC 6152, RFC 6531) --
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        if self.env().has_mail:
            await self.push("503 5.5.1 Nested MAIL command")
            return
        rest = self._strip_command_keyword("FROM:", arg or "")
        try:
            if rest is None:
                raise Reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            reply = await self.intake.mail(self, *split_path(rest))
        except Reply as exc:
            reply = exc.text
        await self.push(reply)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        if not self.env().has_mail:
            await self.push("503 5.5.1 Need MAIL command")
            return
        rest = self._strip_command_keyword("TO:", arg or "")
        try:
            if rest is None:
                raise Reply("501 5.5.4 Syntax: RCPT TO:<address>")
            reply = self.intake.rcpt(self, *split_path(rest))
        except Reply as exc:
            reply = exc.text
        await self.push(reply)

