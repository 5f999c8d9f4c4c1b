"""Scriptable SMTP sinks on loopback, for tests that deliver mail (checklist §0 SINK / RAW).

API (every sink is a context manager, runs its own event loop in a daemon thread,
and stops itself — listener closed, connections dropped — on exit)::

    with Sink("127.0.1.1", replies={"RCPT": {"b@x.test": "550 5.1.1 no such user"}}) as sink:
        ...deliver to sink.host:sink.port...
        sink.wait(lambda s: len(s.messages) == 1)      # bounded wait (default 5 s)
        sink.messages[0].data                           # DATA as received (un-stuffed, CRLF)
        sink.connections[0].helo, .ehlo, .tls, .peer, .commands, .transactions

``Sink(host="127.0.1.1", port=0, *, replies=None, delays=None, esmtp=True,
eightbitmime=True, smtputf8=True, pipelining=True, enhancedstatuscodes=True,
dsn=True, starttls=False, size_limit=52428800, max_recipients=None,
hostname="sink.test")`` — an aiosmtpd server. ``port=0`` picks an ephemeral port.

* ``replies`` maps a stage to a scripted reply. Stages: ``GREETING``, ``EHLO``,
  ``HELO``, ``STARTTLS``, ``MAIL``, ``RCPT``, ``DATA`` (the reply to the DATA
  command itself, instead of 354), ``.`` (the reply after end of data), ``RSET``,
  ``QUIT``. A value is a reply line (``"421 4.3.2 bye"``; multi-line with ``\\n``);
  a list (the n-th use of the stage on this sink gets item n; ``None`` or past
  the end = normal behaviour); or, for MAIL/RCPT, a dict keyed by address
  (lower-case; ``"*"`` = any other). Two special replies: ``"DROP"`` closes the
  connection without replying, ``"HANG"`` never replies. Any 421 reply (and a
  non-2xx greeting) is followed by closing the connection, as real servers do.
* ``delays`` maps a stage to seconds to wait before replying.
* ``esmtp=False``: EHLO gets 502 (HELO only, like ``smtp-sink -e``); the other
  flags drop single extensions from the EHLO reply (like ``-8``, ``-p``, ``-E``,
  ``-N``). ``size_limit`` is advertised in SIZE and enforced (None: no SIZE).
  ``max_recipients``: RCPTs past that many in one transaction get ``452 4.5.3``.
* ``starttls=True`` offers STARTTLS with a throw-away self-signed certificate made
  with the ``cryptography`` package; use ``tls_available()`` to skip when it is
  not installed.
* ``implicit_tls=True``: TLS from the first byte (RFC 8314 "smtps", port 465), with
  ``tls_context`` (set before ``start()``); no STARTTLS is offered then.
* ``auth={"user": "password"}``: an upstream that requires AUTH (RFC 4954): AUTH is
  offered once TLS is up (STARTTLS or implicit), MAIL without it gets ``530 5.7.0``;
  ``auth_mechanisms`` (default PLAIN and LOGIN; CRAM-MD5 too) are those offered; ``AUTH`` in
  ``replies`` scripts the reply to the AUTH command. Each attempt is recorded in
  ``Connection.auth`` as ``(mechanism, login, accepted)``; no secret is recorded.

``RawSink(host, port=0, *, extensions=(...), end="strict", starttls_reply=None)`` —
a hand-written SMTP server that records the exact bytes on the wire
(``raw``, bytes) and each DATA payload as it was on the wire, still dot-stuffed and
without the terminating ``<CRLF>.<CRLF>`` (``messages``); ``commands``, ``connections``. ``end``
is ``"strict"`` (only ``<CRLF>.<CRLF>`` ends data) or ``"vulnerable"`` (also
``<LF>.<CRLF>`` / ``<LF>.<LF>``, as pre-3.9 Postfix did: a smuggling victim, SEC-2).
``starttls_reply`` makes it answer STARTTLS with that raw text (e.g. an injected
``"220 go\\r\\n250-FAKE\\r\\n"``, TLS-2) and then talk garbage.

``ClosedPort(host)`` — a bound, non-listening TCP port: connecting to it is refused.
"""

from __future__ import annotations

import abc
import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DEFAULT_SIZE = 52428800
_DSN_MAIL = re.compile(r"\s+(?:RET|ENVID)=\S+", re.IGNORECASE)
_DSN_RCPT = re.compile(r"\s+(?:NOTIFY|ORCPT)=\S+", re.IGNORECASE)


@dataclass
class Transaction:
    """One MAIL..DATA exchange as the sink saw it."""

    mail_from: str = ""
    mail_args: str = ""  # the MAIL command argument exactly as sent ("FROM:<a@b> SIZE=10")
    rcpt_to: list[str] = field(default_factory=list)  # accepted recipients
    rcpt_args: list[str] = field(default_factory=list)  # every RCPT argument as sent
    data: bytes | None = None  # DATA as received (dot-stuffing removed), None if no data
    reply: str = ""  # the reply given after "."
    at: float = 0.0  # time.monotonic() when the data was answered (rates as upper bounds)
    wall: float = 0.0  # time.time() just before that answer (issue 21: against strace's clock)


@dataclass
class Connection:
    """One TCP connection to a sink."""

    peer: tuple[str, int]
    local: tuple[str, int]
    helo: str | None = None  # the EHLO or HELO argument (the last one)
    ehlo: bool = False  # True if EHLO was accepted
    tls: bool = False
    commands: list[str] = field(default_factory=list)  # command lines in order (verb + argument)
    auth: list[tuple[str, str, bool]] = field(default_factory=list)  # (mechanism, login, accepted)
    transactions: list[Transaction] = field(default_factory=list)
    closed: bool = False
    opened: float = field(default_factory=time.monotonic)  # rates as upper bounds (issue 18)


# --- TLS material -------------------------------------------------------------------------

_tls_dir: Path | None = None
_tls_lock = threading.Lock()


def tls_available() -> bool:
    """True when a self-signed certificate can be generated (``cryptography`` is installed)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def tls_files() -> tuple[Path, Path]:
    """A self-signed RSA certificate for ``sink.test`` (generated once per process)."""
    global _tls_dir
    with _tls_lock:
        if _tls_dir is None:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.x509.oid import NameOID

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.test")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("sink.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    False)
                .sign(key, hashes.SHA256())
            )
            directory = Path(tempfile.mkdtemp(prefix="mxroute-sink-tls-"))
            (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (directory / "key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption()))
            _tls_dir = directory
        return _tls_dir / "cert.pem", _tls_dir / "key.pem"


def server_tls_context() -> ssl.SSLContext:
    cert, key = tls_files()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


# --- the threaded loop both sinks use ------------------------------------------------------

class _Threaded(abc.ABC):
    """An asyncio server in a daemon thread; subclasses give ``_protocol()``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._lock = threading.RLock()
        self._error: BaseException | None = None

    def _server_ssl(self) -> ssl.SSLContext | None:
        """The TLS context for TLS from the first byte (implicit TLS), or None."""
        return None

    @abc.abstractmethod
    def _protocol(self) -> asyncio.BaseProtocol:
        """A protocol instance for one accepted connection (Sink: aiosmtpd; RawSink: the byte
        recorder)."""

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(
                    self._loop.create_server(self._protocol, host=self.host, port=self.port,
                                             reuse_address=True, ssl=self._server_ssl()))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 -- e.g. the address is in use: reported by start()
                self._error = exc
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"sink-{self.host}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._error is not None:
            raise RuntimeError(f"sink on {self.host}:{self.port} did not start: {self._error!r}")

    def stop(self) -> None:
        if self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for transport in list(self._transports):
                transport.abort() if hasattr(transport, "abort") else transport.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` seconds pass; return its last
        value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return True
            time.sleep(0.01)
        with self._lock:
            return predicate(self)


# --- the aiosmtpd sink ---------------------------------------------------------------------

class Sink(_Threaded):
    """A scriptable aiosmtpd server (see the module docstring)."""

    def __init__(
        self,
        host: str = "127.0.1.1",
        port: int = 0,
        *,
        replies: dict[str, Any] | None = None,
        delays: dict[str, float] | None = None,
        esmtp: bool = True,
        eightbitmime: bool = True,
        smtputf8: bool = True,
        pipelining: bool = True,
        enhancedstatuscodes: bool = True,
        dsn: bool = True,
        starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        size_limit: int | None = DEFAULT_SIZE,
        max_recipients: int | None = None,
        hostname: str = "sink.test",
    ) -> None:
        super().__init__(host, port)
        self.replies = dict(replies or {})
        self.delays = dict(delays or {})
        self.esmtp = esmtp
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        self.enhancedstatuscodes = enhancedstatuscodes
        self.dsn = dsn
        self.size_limit = size_limit
        self.max_recipients = max_recipients
        self.hostname = hostname
        self.tls_context = server_tls_context() if starttls or implicit_tls else None
        self.implicit_tls = implicit_tls
        self.auth = dict(auth) if auth is not None else None
        self.auth_mechanisms = auth_mechanisms
        self._connections: list[Connection] = []
        self._uses: dict[str, int] = {}
        self._queued = 0
        self._open = 0  # connections open now (issue 18: a QUIT answered ends one)
        self._peak = 0  # the most ever open at once

    @property
    def open_now(self) -> int:
        """Connections open now."""
        with self._lock:
            return self._open

    def reset_peak(self) -> None:
        """Count ``peak`` afresh from the connections open now (a test's next phase)."""
        with self._lock:
            self._peak = self._open

    @property
    def peak(self) -> int:
        """The most connections that were open at once (issue 18: connection limits)."""
        with self._lock:
            return self._peak

    # recorded state (copies, safe to read from the test thread)
    @property
    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    @property
    def messages(self) -> list[Transaction]:
        """Transactions whose data was accepted (2xx after ".")."""
        with self._lock:
            return [t for c in self._connections for t in c.transactions
                    if t.data is not None and t.reply[:1] == "2"]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _protocol(self) -> asyncio.BaseProtocol:
        return _SinkSMTP(self)

    def _server_ssl(self) -> ssl.SSLContext | None:
        return self.tls_context if self.implicit_tls else None

    def _authenticate(self, server: _SinkSMTP, mechanism: str, data: Any) -> AuthResult:
        """aiosmtpd's authenticator: the login and password against ``auth``, recorded."""
        login = data.login.decode() if isinstance(data, LoginPassword) else ""
        password = data.password.decode() if isinstance(data, LoginPassword) else None
        accepted = self.auth is not None and password is not None \
            and self.auth.get(login) == password
        if server.record is not None:
            with self._lock:
                server.record.auth.append((mechanism, login, accepted))
        return AuthResult(success=accepted, handled=False)

    def scripted(self, stage: str, key: str | None = None) -> str | None:
        """The scripted reply for this use of ``stage`` (None: behave normally)."""
        value = self.replies.get(stage)
        with self._lock:
            use = self._uses.get(stage, 0)
            self._uses[stage] = use + 1
        if isinstance(value, list):
            value = value[use] if use < len(value) else None
        if isinstance(value, dict):
            lowered = (key or "").lower()
            value = value.get(lowered, value.get("*"))
        return value

    def ok(self, code: str, enhanced: str, text: str) -> str:
        return f"{code} {enhanced} {text}" if self.enhancedstatuscodes else f"{code} {text}"


class _SinkSMTP(SMTP):
    def __init__(self, sink: Sink) -> None:
        authenticate = (
            (lambda server, session, envelope, mechanism, data:
             sink._authenticate(server, mechanism, data)) if sink.auth is not None else None
        )
        with warnings.catch_warnings():  # implicit TLS: AUTH "without TLS" is over TLS
            warnings.simplefilter("ignore")
            super().__init__(
                _Handler(sink), hostname=sink.hostname, data_size_limit=sink.size_limit or None,
                enable_SMTPUTF8=sink.smtputf8, decode_data=False,
                tls_context=None if sink.implicit_tls else sink.tls_context,
                require_starttls=False, loop=sink._loop, timeout=30,
                authenticator=authenticate, auth_required=sink.auth is not None,
                auth_require_tls=not sink.implicit_tls,
                auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN", "CRAM-MD5")
                                        if m not in sink.auth_mechanisms],
            )
        self.sink = sink
        self.record: Connection | None = None
        self._greeted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self._original_transport is not None
        super().connection_made(transport)
        if starttls:
            assert self.record is not None
            self.record.tls = True
            return
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.record = Connection(peer=(peer[0], peer[1]), local=(local[0], local[1]),
                                 tls=transport.get_extra_info("sslcontext") is not None)
        with self.sink._lock:
            self.sink._connections.append(self.record)
            self.sink._transports.append(transport)
            self.sink._open += 1
            self.sink._peak = max(self.sink._peak, self.sink._open)

    def connection_lost(self, error: Exception | None) -> None:
        self._ended()
        super().connection_lost(error)

    def _ended(self) -> None:
        """The connection is over (closed, or QUIT answered): no longer counted as open."""
        if self.record is not None and not self.record.closed:
            self.record.closed = True
            with self.sink._lock:
                self.sink._open -= 1

    def _close_soon(self) -> None:
        transport = self.transport
        if transport is not None:
            self.loop.call_soon(transport.close)

    async def _script(self, stage: str, key: str | None = None) -> str | None:
        """Apply the delay and the scripted reply of a stage; return the reply to push, if any."""
        delay = self.sink.delays.get(stage)
        if delay:
            await asyncio.sleep(delay)
        reply = self.sink.scripted(stage, key)
        if reply == "HANG":
            await asyncio.Event().wait()  # until the sink stops or the client gives up
        if reply == "DROP":
            assert self.transport is not None
            self.transport.close()
            return "DROP"
        return reply

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if not self._greeted:  # the first push of a connection is the greeting
            self._greeted = True
            scripted = await self._script("GREETING")
            if scripted == "DROP":
                return
            if scripted is not None:
                await self._push_lines(scripted)
                if not scripted.startswith("2"):
                    self._close_soon()
                return
            text = f"220 {self.sink.hostname} ESMTP sink"
        await self._push_lines(text)
        if text.startswith("421"):
            self._close_soon()

    async def _push_lines(self, text: str) -> None:
        lines = text.split("\n")
        if len(lines) > 1:
            code = lines[0][:3]
            lines = [f"{code}-{line[4:]}" if i < len(lines) - 1 else f"{code} {line[4:]}"
                     for i, line in enumerate(lines)]
        for line in lines:
            await super().push(line)

    def _note(self, verb: str, arg: str | None) -> None:
        if self.record is not None:
            self.record.commands.append(f"{verb} {arg}".rstrip() if arg else verb)

    async def _scripted_or(self, stage: str, key: str | None = None) -> bool:
        """Push the scripted reply of ``stage`` if there is one; True when handled."""
        reply = await self._script(stage, key)
        if reply is None:
            return False
        if reply != "DROP":
            await self.push(reply)
        return True

    async def smtp_EHLO(self, hostname: str) -> None:
        self._note("EHLO", hostname)
        if await self._scripted_or("EHLO"):
            return
        if not self.sink.esmtp:
            await self.push("502 5.5.2 Error: command not recognized")
            return
        assert self.record is not None
        self.record.helo, self.record.ehlo = hostname, True
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        self._note("HELO", hostname)
        if await self._scripted_or("HELO"):
            return
        assert self.record is not None
        self.record.helo, self.record.ehlo = hostname, False
        await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self._note("STARTTLS", arg)
        if await self._scripted_or("STARTTLS"):
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        self._note("AUTH", (arg or "").split(" ")[0])  # the mechanism: never a credential
        if await self._scripted_or("AUTH"):
            return
        await super().smtp_AUTH(arg)

    async def auth_CRAM__MD5(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-MD5 (RFC 2195), which aiosmtpd lacks: offered when in ``auth_mechanisms``."""
        challenge = f"<{time.monotonic_ns()}@{self.sink.hostname}>".encode()
        response = await self.challenge_auth(challenge)
        if not isinstance(response, bytes):
            return AuthResult(success=False, handled=True)
        login, _, digest = response.decode(errors="replace").rpartition(" ")
        secret = (self.sink.auth or {}).get(login)
        accepted = secret is not None and hmac.compare_digest(
            hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest(), digest)
        if self.record is not None:
            with self.sink._lock:
                self.record.auth.append(("CRAM-MD5", login, accepted))
        return AuthResult(success=accepted, handled=False)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._note("MAIL", arg)
        address = _path(arg or "")
        if await self._scripted_or("MAIL", address):
            return
        assert self.record is not None
        self._transaction = Transaction(mail_from=address, mail_args=arg or "")
        stripped = _DSN_MAIL.sub("", arg or "") if self.sink.dsn else arg
        await super().smtp_MAIL(stripped)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._note("RCPT", arg)
        address = _path(arg or "")
        transaction = getattr(self, "_transaction", None)
        if transaction is not None:
            transaction.rcpt_args.append(arg or "")
        if await self._scripted_or("RCPT", address):
            return
        limit = self.sink.max_recipients
        if limit is not None and self.envelope is not None and len(self.envelope.rcpt_tos) >= limit:
            await self.push(self.sink.ok("452", "4.5.3", "Error: too many recipients"))
            return
        stripped = _DSN_RCPT.sub("", arg or "") if self.sink.dsn else arg
        await super().smtp_RCPT(stripped)

    async def smtp_DATA(self, arg: str) -> None:
        self._note("DATA", arg)
        if self.envelope is not None and self.envelope.rcpt_tos and await self._scripted_or("DATA"):
            return
        await super().smtp_DATA(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self._note("RSET", arg)
        self._transaction = None
        if await self._scripted_or("RSET"):
            return
        await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self._note("QUIT", arg)
        if await self._scripted_or("QUIT"):
            return
        self._ended()  # the client closes once answered: it may open another at once
        await super().smtp_QUIT(arg)

    async def smtp_NOOP(self, arg: str) -> None:
        self._note("NOOP", arg)
        await super().smtp_NOOP(arg)


def _path(arg: str) -> str:
    """The address inside ``FROM:<...>`` / ``TO:<...>`` (lower-case), "" for <>."""
    match = re.search(r"<([^>]*)>", arg)
    return (match.group(1) if match else arg.partition(":")[2].split(" ")[0]).lower()


class _Handler:
    """aiosmtpd hooks: EHLO extensions, recording, and the scripted reply after "."."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: _SinkSMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        sink = self.sink
        session.host_name = hostname  # the 5-argument hook must set it itself
        lines = [r[4:] for r in responses]
        drop = set()
        if not sink.eightbitmime:
            drop.add("8BITMIME")
        lines = [line for line in lines if line.split(" ")[0] not in drop and line != "HELP"
                 and (sink.auth is not None or not line.startswith("AUTH"))]
        if sink.pipelining:
            lines.append("PIPELINING")
        if sink.enhancedstatuscodes:
            lines.append("ENHANCEDSTATUSCODES")
        if sink.dsn:
            lines.append("DSN")
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_MAIL(self, server: _SinkSMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        assert server.record is not None
        server.record.transactions.append(server._transaction)
        return self.sink.ok("250", "2.1.0", "Ok")

    async def handle_RCPT(self, server: _SinkSMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        server._transaction.rcpt_to.append(address)
        return self.sink.ok("250", "2.1.5", "Ok")

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        transaction: Transaction = server._transaction
        reply = await server._script(".")
        if reply == "DROP":
            return "421 4.4.2 dropped"  # not seen: the connection is closed
        if reply is None:
            with self.sink._lock:
                self.sink._queued += 1
                number = self.sink._queued
            reply = self.sink.ok("250", "2.0.0", f"Ok: queued as S{number}")
        transaction.reply = reply.split("\n")[-1]
        transaction.at, transaction.wall = time.monotonic(), time.time()
        content = envelope.original_content
        transaction.data = content if isinstance(content, bytes) else (content or b"")
        server._transaction = None
        return reply

    async def handle_RSET(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        return self.sink.ok("250", "2.0.0", "Ok")


# --- the raw sink --------------------------------------------------------------------------

class RawSink(_Threaded):
    """A minimal SMTP server recording the bytes on the wire (see the module docstring)."""

    def __init__(
        self,
        host: str = "127.0.1.1",
        port: int = 0,
        *,
        extensions: tuple[str, ...] = ("8BITMIME", "PIPELINING", "SIZE 52428800"),
        end: str = "strict",
        starttls_reply: str | None = None,
    ) -> None:
        super().__init__(host, port)
        self.extensions = extensions
        self.end = end
        self.starttls_reply = starttls_reply
        self._raw = bytearray()
        self._messages: list[bytes] = []
        self._commands: list[str] = []
        self._connections = 0

    @property
    def raw(self) -> bytes:
        with self._lock:
            return bytes(self._raw)

    @property
    def messages(self) -> list[bytes]:
        with self._lock:
            return list(self._messages)

    @property
    def commands(self) -> list[str]:
        with self._lock:
            return list(self._commands)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def _protocol(self) -> asyncio.BaseProtocol:
        return _RawProtocol(self)


class _RawProtocol(asyncio.Protocol):
    def __init__(self, sink: RawSink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.in_data = False
        self.transport: asyncio.Transport | None = None
        self.garbage = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with self.sink._lock:
            self.sink._connections += 1
            self.sink._transports.append(transport)
        transport.write(b"220 raw.test ESMTP raw sink\r\n")

    def data_received(self, data: bytes) -> None:
        with self.sink._lock:
            self.sink._raw.extend(data)
        if self.garbage:  # after an injected STARTTLS reply: whatever comes is not SMTP
            assert self.transport is not None
            self.transport.write(b"500 5.5.1 what?\r\n")
            self.transport.close()
            return
        self.buffer.extend(data)
        self._process()

    def _end_of_data(self) -> tuple[int, int] | None:
        """Where the data ends (start, after) under this sink's end-of-data rule."""
        buf = bytes(self.buffer)
        candidates = [(m.start(), m.end()) for m in re.finditer(rb"\r\n\.\r\n", b"\r\n" + buf)]
        if self.sink.end == "vulnerable":
            candidates += [(m.start(), m.end()) for m in re.finditer(rb"\n\.\r?\n", b"\r\n" + buf)]
        if not candidates:
            return None
        start, end = min(candidates)
        return max(start - 2, 0), end - 2

    def _process(self) -> None:
        assert self.transport is not None
        while True:
            if self.in_data:
                found = self._end_of_data()
                if found is None:
                    return
                start, after = found
                body = bytes(self.buffer[:start])
                del self.buffer[:after]
                with self.sink._lock:
                    self.sink._messages.append(body)
                self.in_data = False
                self.transport.write(b"250 2.0.0 Ok: queued\r\n")
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            line = bytes(self.buffer[:line_end]).decode("utf-8", "replace")
            del self.buffer[:line_end + 2]
            with self.sink._lock:
                self.sink._commands.append(line)
            verb = line.split(" ")[0].upper()
            if verb == "EHLO":
                lines = ["raw.test", *self.sink.extensions]
                if self.sink.starttls_reply is not None:
                    lines.append("STARTTLS")
                text = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
                self.transport.write(text.encode())
            elif verb == "STARTTLS" and self.sink.starttls_reply is not None:
                self.transport.write(self.sink.starttls_reply.encode())
                self.garbage = True
                return
            elif verb == "DATA":
                self.in_data = True
                self.transport.write(b"354 go ahead\r\n")
            elif verb == "QUIT":
                self.transport.write(b"221 2.0.0 bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 2.0.0 Ok\r\n")


# --- a closed port -------------------------------------------------------------------------

class ClosedPort:
    """A TCP port bound on ``host`` but not listening: connections are refused (RST)."""

    def __init__(self, host: str = "127.0.1.1") -> None:
        self.host = host
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                     socket.SOCK_STREAM)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
