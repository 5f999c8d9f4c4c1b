"""SMTP intake (aiosmtpd): validate, spool, reply.

``RelaySMTP`` is aiosmtpd's protocol with what 1.4.6 lacks: MAIL/RCPT parameters
parsed case-preserving with the DSN extension (RFC 3461 §4), enhanced status
codes on every reply (RFC 2034), PIPELINING/DSN advertised, a client cap, a DATA
timeout, AUTH refused inside a transaction. ``Intake`` is the handler: relay
policy at RCPT, content checks after DATA, then the durable spool, and only
then ``250`` (RFC 5321 §6.1, DUR-1).

What aiosmtpd 1.4.6 already does for SEC-1: DATA lines are read with
``readuntil(b"\\r\\n")``, so only ``<CRLF>.<CRLF>`` ends a message; a bare LF or
CR stays inside a line. ``Intake`` rejects any bare CR and normalises (or
rejects, per ``bare_newline``) every bare LF, as Postfix 3.9's
``smtpd_forbid_bare_newline``.

Credentials file (``auth_credentials_file``): one ``user:scrypt$N$r$p$salt$hash``
per line (salt and hash base64), ``#`` comments; make a line with
``python -c 'from mxroute.relay.intake.server import hash_password as h; print("user:" + h("secret"))'``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import email.utils
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mxroute.address import Address, parse_path
from mxroute.dns.resolver import Resolver
from mxroute.errors import AddressError, SpoolError
from mxroute.relay.envelope import Recipient
from mxroute.relay.intake.sendercheck import SenderCheck
from mxroute.relay.spool.format import MessageMeta, RecipientState, new_queue_id
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)

BARE_CR = re.compile(rb"\r(?!\n)")
BARE_LF = re.compile(rb"(?<!\r)\n")
MAX_LINE = 998  # RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF
RECEIVED = re.compile(rb"^Received[ \t]*:", re.IGNORECASE | re.MULTILINE)
XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*\Z")  # RFC 3461 §4: xchar / "+" 2HEXCHAR
ENHANCED = re.compile(r"\d\.\d{1,3}\.\d{1,3}( |\Z)")
MAX_AUTH_FAILURES = 3  # SEC-8: then the connection is closed
HARD_ERROR_LIMIT = 20  # SEC-10: 5xx replies without a message accepted, then 421 and close (Postfix smtpd_hard_error_limit)
PENDING_AUTH = AuthResult(success=False, handled=False, message="454 4.7.0 Temporary authentication failure")

# RFC 2034 §3: enhanced codes on every reply; these are the defaults for aiosmtpd's own replies.
DEFAULT_ENHANCED = {
    "2": "2.0.0", "4": "4.0.0", "5": "5.5.0", "421": "4.3.2", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0",
    "535": "5.7.8", "538": "5.7.11", "550": "5.1.1", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}


class Reply(Exception):
    """A finished SMTP reply raised from parsing/policy code."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# --- parsing (pure) ---------------------------------------------------------------------

def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext; Reply 501 if malformed (DSN-8)."""
    if not XTEXT.match(value):
        raise Reply("501 5.5.4 Malformed xtext in DSN parameter")
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def split_path(arg: str) -> tuple[str, list[str]]:
    """``<path> params...`` → (path with brackets, parameter words); Reply 501 on bad syntax."""
    arg = arg.strip()
    if not arg.startswith("<"):
        raise Reply("501 5.5.4 Syntax: address must be enclosed in <>")
    quoted = escaped = False
    for index, ch in enumerate(arg):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return arg[: index + 1], arg[index + 1 :].split()
    raise Reply("501 5.5.4 Syntax: unterminated <address>")


def parse_params(words: list[str], allowed: set[str]) -> dict[str, str]:
    """ESMTP parameters: keyword case-insensitive, value kept as given (RFC 5321 §4.1.2)."""
    params: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        key = key.upper()
        if not re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", key) or (eq and not value):
            raise Reply("501 5.5.4 Syntax error in parameters")
        if key not in allowed:
            raise Reply(f"555 5.5.4 Unsupported parameter {safe_text(key, 40)}")
        if key in params:
            raise Reply(f"501 5.5.4 Duplicate parameter {key}")
        params[key] = value
    return params


def parse_notify(value: str) -> tuple[str, ...]:
    """NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1)."""
    items = tuple(item.upper() for item in value.split(","))
    if items == ("NEVER",):
        return items
    if not items or any(i not in ("SUCCESS", "FAILURE", "DELAY") for i in items) or len(set(items)) != len(items):
        raise Reply("501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
    return items


def parse_orcpt(value: str) -> str:
    """ORCPT=addr-type;xtext (RFC 3461 §4.2), kept decoded as ``type;address``."""
    kind, sep, rest = value.partition(";")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", kind) or not rest:
        raise Reply("501 5.5.4 ORCPT must be addr-type;xtext")
    decoded = xtext_decode(rest)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in decoded):
        raise Reply("501 5.5.4 Control character in ORCPT")
    return f"{kind.lower()};{decoded}"


def check_content(content: bytes, bare_newline: str, max_received: int) -> tuple[bytes, str | None]:
    """SEC-1, SESS-12 and SESS-18 on unstuffed DATA: (canonical content, or the rejection reply)."""
    crlf = content.count(b"\r\n")  # fast path: every CR and every LF belongs to a CRLF
    if content.count(b"\r") != crlf and BARE_CR.search(content):
        return content, "550 5.5.2 Message contains a bare <CR> (RFC 5321 section 2.3.8)"
    if content.count(b"\n") != crlf:
        if bare_newline == "reject":
            return content, "550 5.5.2 Message contains a bare <LF> (RFC 5321 section 2.3.8)"
        content = BARE_LF.sub(b"\r\n", content)
    if len(content) > MAX_LINE and max(map(len, content.split(b"\r\n"))) > MAX_LINE:
        return content, "500 5.5.2 Message line longer than 998 octets (RFC 5321 section 4.5.3.1.6)"
    end = content.find(b"\r\n\r\n")
    header = content if end < 0 else content[: end + 2]
    if content.startswith(b"\r\n"):
        header = b""
    if len(RECEIVED.findall(header)) > max_received:
        return content, "554 5.4.6 Too many Received: headers: mail loop (RFC 5321 section 6.3)"
    return content, None


def received_header(*, helo: str, ip: str, by: str, proto: str, queue_id: str, rcpt: str | None, now: float) -> bytes:
    """The one trace field we add, at the top (RFC 5321 §4.4, RFC 3848; SESS-19)."""
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [f"Received: from {safe_text(helo, 255).replace(' ', '_') or 'unknown'} ([{literal}])",
             f"\tby {by} with {proto} id {queue_id}"]
    date = _date(now)
    if rcpt is not None:
        lines.append(f"\tfor <{safe_text(rcpt, 256)}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


_DATE: list[Any] = [None, ""]  # (second, RFC 5322 date of that second): one formatdate() per second


def _date(now: float) -> str:
    second = int(now)
    if _DATE[0] != second:
        _DATE[:] = [second, email.utils.formatdate(second, localtime=True)]
    return str(_DATE[1])


# --- AUTH credentials (SEC-8) -----------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A credentials-file hash: ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: bytes) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def load_credentials(path: Path) -> dict[str, str]:
    """Read ``user:hash`` lines; ConfigError-worthy problems raise ValueError with the line number."""
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.rpartition(":")
        if not sep or not user or not stored.startswith("scrypt$"):
            raise ValueError(f"{path}:{number}: expected user:scrypt$N$r$p$salt$hash")
        users[user] = stored
    return users


# --- the protocol -------------------------------------------------------------------------

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


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with DSN parameters, enhanced codes, a client cap and bounded DATA."""

    line_length_limit = 1 << 20  # lines are checked after DATA (bare-LF lines may share one CRLF line)

    def __init__(self, intake: Intake, **kwargs: Any) -> None:
        super().__init__(intake, **kwargs)
        # Per session, not aiosmtpd's class-wide dict: RFC 3461 §4 adds 110 octets to MAIL
        # (RET, ENVID) and 500 to RCPT (NOTIFY, ORCPT); RFC 4954 §5 adds 500 to MAIL (AUTH=).
        # aiosmtpd's EHLO adds SIZE's 26 and SMTPUTF8's 10 itself.
        self.command_size_limits = collections.defaultdict(
            lambda: self.command_size_limit, {"MAIL": 512 + 110 + 500, "RCPT": 512 + 500}
        )
        self.intake = intake
        self.auth_pending: LoginPassword | None = None
        self._in_ehlo = False
        self._refused = False
        self.client_ip = ""
        self.auth_failures = 0
        self.errors = 0  # 5xx replies since the last accepted message (SEC-10)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def env(self) -> RelayEnvelope:
        assert isinstance(self.envelope, RelayEnvelope)
        return self.envelope

    # -- connections --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            peer = transport.get_extra_info("peername")
            refusal = self.intake.admit(self, str(peer[0]) if isinstance(peer, tuple) and peer else "")
            if refusal is not None:
                self._refused = True
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.intake.release(self)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        """SEC-10: an idle or dripping client is told why before the close (as Postfix: 421 4.4.2)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())  # type: ignore[attr-defined]
            except (OSError, RuntimeError):
                pass
        super()._timeout_cb()  # type: ignore[no-untyped-call, unused-ignore]  # aiosmtpd leaves it unannotated

    # -- replies --
    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._in_ehlo:
            status = _enhance(status)
        await super().push(status)
        if isinstance(status, str) and status[:1] == "5":
            self.errors += 1
            transport = self.transport
            if self.errors == HARD_ERROR_LIMIT and transport is not None and not transport.is_closing():
                await super().push("421 4.7.0 Too many errors, closing the connection")
                transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_AUTH(self, arg: str) -> None:
        if self.envelope is not None and self.env().has_mail:
            await self.push("503 5.5.1 AUTH not permitted during a mail transaction")  # RFC 4954 §4
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
        return await self.intake.check_credentials(self, data)

    async def smtp_DATA(self, arg: str) -> None:
        if self.envelope is not None and self.env().recipients:
            self._reset_timeout(self.intake.settings.data_timeout)  # DATA phase bound (SEC-10)
        await super().smtp_DATA(arg)

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


def _enhance(status: str) -> str:
    """Prefix an enhanced status code where aiosmtpd's own reply lacks one (RFC 2034 §3)."""
    code, sep, text = status[:3], status[3:4], status[4:]
    if not code.isdigit() or code in ("220", "334", "354") or ENHANCED.match(text):
        return status
    enhanced = DEFAULT_ENHANCED.get(code) or DEFAULT_ENHANCED[code[0]]
    return f"{code}{sep or ' '}{enhanced} {text}".rstrip()


# --- the handler ---------------------------------------------------------------------------

class Intake:
    """Policy for one relay: who may relay, what is accepted, where it is stored."""

    def __init__(
        self, settings: Settings, spool: Spool, on_queued: Callable[[MessageMeta], None],
        *, resolver: Resolver, clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_queued = on_queued
        self.clock = clock
        self.sender_check = SenderCheck(resolver)  # SPF-13, per null_mx_sender
        self.networks = settings.networks()
        self.users = load_credentials(settings.auth_credentials_file) if settings.auth_credentials_file else {}
        self.sessions: set[RelaySMTP] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()  # open sessions per client address
        self.storing = 0
        self.closing = False
        self._free_checked = (0.0, True)
        self._relay_nets: object = None  # the networks _relay_seen was computed for
        self._relay_seen: dict[str, bool] = {}  # client address -> may relay
        self.stats = {"accepted": 0, "rejected": 0}
        self._tls: ssl.SSLContext | None = None

    # -- factory --
    def tls_context(self, settings: Settings | None = None) -> ssl.SSLContext | None:
        settings = settings or self.settings
        if not settings.tls_cert_file or not settings.tls_key_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
        return context

    def reconfigure(self, settings: Settings, resolver: Resolver | None = None) -> None:
        """Apply reloaded settings (SIGHUP) to new sessions and to the next command of open ones.

        The certificate and credentials files are read first: if one is bad this raises
        (OSError, ValueError, ssl.SSLError) and nothing changes. An open session keeps the
        size limit, timeouts and TLS context it started with. ``resolver``: a new one when
        the DNS settings changed.
        """
        users = load_credentials(settings.auth_credentials_file) if settings.auth_credentials_file else {}
        context = self.tls_context(settings)
        self.settings, self.networks, self.users, self._tls = settings, settings.networks(), users, context
        if resolver is not None:
            self.sender_check = SenderCheck(resolver)

    def factory(self) -> Callable[[], RelaySMTP]:
        """Sessions made with the settings current when each client connects (see reconfigure())."""
        self._tls = self.tls_context()

        def make() -> RelaySMTP:
            settings = self.settings
            return RelaySMTP(
                self, data_size_limit=settings.max_message_size, enable_SMTPUTF8=True, hostname=settings.helo_name,
                ident=settings.banner, tls_context=self._tls, timeout=settings.command_timeout,
                auth_require_tls=True, authenticator=self.authenticate, command_call_limit=None,
                auth_exclude_mechanism=[] if self.users else ["PLAIN", "LOGIN"],
            )

        return make

    def admit(self, session: RelaySMTP, ip: str = "") -> str | None:
        """None if ``session`` may start, else the 421 to send (SEC-10: global and per-address limits).

        Clients in relay_networks are exempt from the per-address limit, as Postfix's
        ``smtpd_client_event_limit_exceptions = $mynetworks``.
        """
        if self.closing or len(self.sessions) >= self.settings.max_clients:
            return "421 4.7.0 Too many connections, try again later"
        if ip and self.per_ip[ip] >= self.settings.max_clients_per_ip and not self._trusted(ip):
            return "421 4.7.0 Too many connections from your address, try again later"
        self.sessions.add(session)
        if ip:
            self.per_ip[ip] += 1
            session.client_ip = ip
        return None

    def release(self, session: RelaySMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            ip = session.client_ip
            if ip and self.per_ip[ip] > 1:
                self.per_ip[ip] -= 1
            elif ip:
                self.per_ip.pop(ip, None)

    def _trusted(self, text: str) -> bool:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    # -- hooks --
    async def handle_EHLO(self, server: RelaySMTP, session: Session, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        if not self.users:
            lines = [line for line in lines if not line.startswith("AUTH")]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES", "DSN"]
        head = [responses[0]] + [f"250-{line}" for line in lines[:-1]]
        return head + [f"250 {lines[-1]}"]

    async def handle_VRFY(self, server: RelaySMTP, session: Session, envelope: Any, address: str) -> str:
        return "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"  # SEC-13

    def authenticate(self, server: SMTP, session: Session, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        """aiosmtpd's synchronous authenticator: only defers the check (RelaySMTP finishes it off the loop)."""
        if isinstance(server, RelaySMTP) and isinstance(auth_data, LoginPassword):
            server.auth_pending = auth_data
            return PENDING_AUTH
        return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")

    async def check_credentials(self, server: RelaySMTP, auth_data: LoginPassword) -> AuthResult:
        """AUTH PLAIN/LOGIN against the credentials file (only after TLS: auth_require_tls).

        scrypt runs in a worker thread: a slow hash never stalls other sessions.
        """
        user = auth_data.login.decode("utf-8", "replace")
        stored = self.users.get(user)
        ok = stored is not None and await asyncio.get_running_loop().run_in_executor(
            None, verify_password, stored, auth_data.password)
        peer = _peer_ip(server.session) if server.session else "unknown"
        if ok:
            log.info("auth ok: user=%s client=%s", safe_text(user, 64), peer)
            return AuthResult(success=True, auth_data=auth_data)
        log.info("auth failed: user=%s client=%s", safe_text(user, 64), peer)
        server.auth_failures += 1
        if server.auth_failures >= MAX_AUTH_FAILURES and server.transport is not None:  # SEC-8: rate limit
            server.loop.call_later(0.5, server.transport.close)
        return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")

    # -- MAIL --
    async def mail(self, server: RelaySMTP, path: str, words: list[str]) -> str:
        params = parse_params(words, {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"} if server.session and server.session.extended_smtp else set())
        env = server.env()
        if "SIZE" in params:  # RFC 1870 §6
            if not params["SIZE"].isdigit():
                raise Reply("501 5.5.4 SIZE must be a number")
            if int(params["SIZE"]) > self.settings.max_message_size:
                raise Reply("552 5.3.4 Message size exceeds fixed maximum message size")
        body = params.get("BODY", "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            raise Reply("501 5.5.4 BODY must be 7BIT or 8BITMIME")
        if params.get("SMTPUTF8"):
            raise Reply("501 5.5.4 SMTPUTF8 takes no value")
        ret = params.get("RET")
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            raise Reply("501 5.5.4 RET must be FULL or HDRS")
        envid = xtext_decode(params["ENVID"]) if "ENVID" in params else None
        if envid is not None and (len(envid) > 100 or any(ord(c) < 32 or ord(c) > 126 for c in envid)):
            raise Reply("501 5.5.4 ENVID too long or not printable ASCII")  # RFC 3461 §4.4
        sender = _parse(path)
        if sender is not None and sender.utf8 and "SMTPUTF8" not in params:
            raise Reply("553 5.6.7 Non-ASCII address needs SMTPUTF8")
        if not self._enough_space():
            raise Reply("452 4.3.1 Insufficient system storage")  # DUR-4, as Postfix queue_minfree
        if sender is not None:  # SPF-13/DSN-13: the null reverse-path is never checked
            client = _peer_ip(server.session) if server.session else "unknown"
            refusal = await self.sender_check.refusal(sender, self.settings.null_mx_sender, client)
            if refusal is not None:
                self.stats["rejected"] += 1
                return refusal
        env.has_mail, env.sender, env.mail_from = True, sender, str(sender) if sender else ""
        env.body, env.ret, env.envid = body, ret.upper() if ret else None, envid
        env.smtp_utf8 = "SMTPUTF8" in params
        return "250 2.1.0 Ok"

    def _enough_space(self) -> bool:
        checked_at, ok = self._free_checked
        now = time.monotonic()
        if now - checked_at > 1.0:
            try:
                st = os.statvfs(self.spool.root)
                ok = st.f_bavail * st.f_frsize >= 1.5 * self.settings.max_message_size
            except OSError:
                ok = False
            self._free_checked = (now, ok)
        return ok

    # -- RCPT --
    def relay_allowed(self, session: Session) -> bool:
        """SEC-3: a client in relay_networks, or authenticated (SEC-8)."""
        if session.authenticated:
            return True
        peer = _peer_ip(session)
        if self._relay_nets is not self.networks:  # first use, or networks reloaded (SIGHUP)
            self._relay_nets, self._relay_seen = self.networks, {}
        allowed = self._relay_seen.get(peer)
        if allowed is None:  # once per client address, not per RCPT
            allowed = self._trusted(peer)
            if len(self._relay_seen) < 4096:
                self._relay_seen[peer] = allowed
        return allowed

    def rcpt(self, server: RelaySMTP, path: str, words: list[str]) -> str:
        assert server.session is not None
        env = server.env()
        if not self.relay_allowed(server.session):  # RFC 5321 §3.6.2; SEC-3
            log.info("reject: RCPT from %s: relay access denied: to=%s", _peer_ip(server.session), safe_text(path, 256))
            self.stats["rejected"] += 1
            return "554 5.7.1 Relay access denied"
        params = parse_params(words, {"NOTIFY", "ORCPT"} if server.session.extended_smtp else set())
        address = _parse(path)
        if address is None:
            raise Reply("501 5.1.3 Null recipient not allowed")
        if address.literal is not None and not self.settings.allow_address_literals:
            raise Reply("550 5.1.2 Address literals are not accepted here")
        if address.utf8 and not env.smtp_utf8:
            raise Reply("553 5.6.7 Non-ASCII address needs SMTPUTF8")
        notify = parse_notify(params["NOTIFY"]) if "NOTIFY" in params else ()
        orcpt = parse_orcpt(params["ORCPT"]) if "ORCPT" in params else None
        if len(env.recipients) >= self.settings.max_recipients:  # SEC-9
            return "452 4.5.3 Too many recipients"
        text = str(address)
        if all(r.address != text for r in env.recipients):  # a duplicate is accepted once
            env.recipients.append(Recipient(text, notify, orcpt))
            env.rcpt_tos.append(text)
        return "250 2.1.5 Ok"

    # -- DATA --
    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: RelayEnvelope) -> str:
        started = self.clock()
        content, problem = check_content(envelope.original_content or b"", self.settings.bare_newline,
                                         self.settings.max_received_headers)
        ip = _peer_ip(session)
        if problem is not None:
            self.stats["rejected"] += 1
            log.info("reject: DATA from %s: %s", ip, problem)
            return problem
        queue_id = new_queue_id(self.clock)
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if session.extended_smtp:
            proto += ("S" if session.ssl else "") + ("A" if session.authenticated else "")
        rcpts = envelope.recipients
        trace = received_header(
            helo=session.host_name or "", ip=ip, by=self.settings.helo_name, proto=proto, queue_id=queue_id,
            rcpt=rcpts[0].address if len(rcpts) == 1 else None, now=started,
        )
        message = trace + content
        meta = MessageMeta(
            queue_id=queue_id, sender=envelope.mail_from or "", arrival=started,
            recipients=[RecipientState(r.address, r.notify, r.orcpt) for r in rcpts],
            ret=envelope.ret, envid=envelope.envid, body=envelope.body, smtputf8=envelope.smtp_utf8,
            client=f"{safe_text(session.host_name or '', 100)} [{ip}]", size=len(message),
        )
        self.storing += 1
        try:
            await self.spool.store(meta, message)
        except SpoolError as exc:  # DUR-4: never 250 without the fsync
            log.error("%s: cannot store message from %s: %s", queue_id, ip, exc.message)
            return exc.smtp_reply()
        finally:
            self.storing -= 1
        self.stats["accepted"] += 1
        log.info("%s: from=<%s>, size=%d, nrcpt=%d, client=%s[%s], status=accepted", queue_id,
                 safe_text(meta.sender, LISTING), meta.size, len(rcpts),
                 safe_text(session.host_name or "unknown", 100).replace(" ", "_"), ip)
        self.on_queued(meta)
        server.errors = 0  # a client that delivers mail is not an error loop (SEC-10)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def shutdown(self, grace: float) -> None:
        """DUR-8: refuse new sessions; let in-flight stores finish; 421 to everyone else."""
        self.closing = True
        deadline = time.monotonic() + grace
        while self.storing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            transport = session.transport
            if transport is not None and not transport.is_closing():
                try:
                    transport.write(b"421 4.3.2 Service shutting down\r\n")  # type: ignore[attr-defined]
                except (OSError, RuntimeError):
                    pass
                transport.close()


def _parse(path: str) -> Address | None:
    if any("\udc80" <= ch <= "\udcff" for ch in path):
        raise Reply("501 5.6.7 Address is not valid UTF-8")
    try:
        return parse_path(path)
    except AddressError as exc:
        raise Reply(exc.smtp_reply()) from None


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"
