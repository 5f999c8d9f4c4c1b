"""``Intake``: the intake's policy for aiosmtpd: validate, spool, then reply.

Relay policy at RCPT (SEC-3: relay_networks or AUTH), content checks after DATA, then
the durable spool, and only then ``250`` (RFC 5321 §6.1, DUR-1). Also the session
limits (SEC-10), the TLS context and credentials (reloaded on SIGHUP), and the
shutdown (DUR-8). The SMTP protocol it serves is ``protocol.RelaySMTP``.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import Session

from mxroute.dns.resolver import Resolver
from mxroute.errors import SpoolError
from mxroute.hostdefaults import delivery_share
from mxroute.relay.budget import Budget
from mxroute.relay.envelope import Recipient
from mxroute.relay.intake import clientname
from mxroute.relay.intake.auth import Credentials
from mxroute.relay.intake.caps import AuthFailures
from mxroute.relay.intake.params import (
    Reply,
    check_content,
    parse_notify,
    parse_orcpt,
    parse_params,
    path_address,
    received_header,
    xtext_decode,
)
from mxroute.relay.intake.protocol import (
    BUDGET_FULL,
    RelayEnvelope,
    RelaySMTP,
    defer_auth,
    peer_ip,
)
from mxroute.relay.intake.recipient import MAIL_OK, RCPT_OK, accept_recipient
from mxroute.relay.intake.sendercheck import SenderCheck
from mxroute.relay.intake.signing import IntakeSigning
from mxroute.relay.spool.format import MessageMeta, RecipientState, new_queue_id
from mxroute.relay.spool.store import Spool
from mxroute.settings import Settings
from mxroute.text import LISTING, safe_text

log = logging.getLogger(__name__)


def intake_share(settings: Settings) -> int:
    """The intake's part of ``max_inflight_bytes`` (the delivery side has ``delivery_share``)."""
    budget = settings.inflight_budget()
    return budget - delivery_share(budget, settings.max_message_size)


def header_of(content: bytes | bytearray) -> bytes:
    """The header section of a message (up to and with its blank line), as a copy."""
    end = content.find(b"\r\n\r\n")
    return bytes(content if end < 0 else content[: end + 4])


class Intake:
    """Policy for one relay: who may relay, what is accepted, where it is stored."""

    def __init__(
        self, settings: Settings, spool: Spool, on_queued: Callable[[MessageMeta], None],
        *, resolver: Resolver, clock: Callable[[], float] = time.time,
        budget: Budget | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_queued = on_queued
        # the self-check's hook for each queued message: (envelope sender, From: domain)
        self.on_author: Callable[[str, bytes], None] = lambda sender, message: None
        self.clock = clock
        self.resolver = resolver  # the sender check's and the client names' (issue 15 C5)
        self.sender_check = SenderCheck(resolver)  # SPF-13, per null_mx_sender
        self.networks = settings.networks()
        self.credentials = Credentials.from_file(settings.auth_credentials_file)
        self.auth_failures = AuthFailures(settings.max_auth_failures_per_ip,
                                          settings.auth_failure_window)  # SEC-8, issue 21
        self.dkim = IntakeSigning.load(settings)  # DKIM keys read and checked (ConfigError)
        self.sessions: set[RelaySMTP] = set()
        # open sessions per client address
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.storing = 0
        self.closing = False
        self._free_checked = (0.0, True)
        self._relay_nets: object = None  # the networks _relay_seen was computed for
        self._relay_seen: dict[str, bool] = {}  # client address -> may relay
        self.stats = {"accepted": 0, "rejected": 0, "storage_refusals": 0}
        # issue 22: the bytes of DATA being received (and of messages kept for their first
        # attempt, delivery_processes = 0): the intake's part of max_inflight_bytes
        self.budget = budget if budget is not None else Budget(intake_share(settings))
        spool.budget = self.budget
        self._tls: ssl.SSLContext | None = None

    # -- factory --
    def tls_context(self, settings: Settings | None = None) -> ssl.SSLContext | None:
        """The server context for ``settings``' certificate (None without one): TLS
        ``tls_min_version`` (1.2 or 1.3) and up, Python's default suites (forward-secret, no
        NULL, EXPORT, RC4, 3DES or anonymous).
        A handshake on an implicit-TLS listener switches to the context current at that moment
        (``_current_tls``), so a reload's new certificate reaches port 465 too."""
        settings = settings or self.settings
        if not settings.tls_cert_file or not settings.tls_key_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion[settings.tls_min_version.replace(".", "_")]
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
        context.sni_callback = self._current_tls
        return context

    def _current_tls(self, sslobj: ssl.SSLObject, name: str | None,
                     context: ssl.SSLContext) -> None:
        """The ClientHello callback: the handshake goes on with the current context."""
        if self._tls is not None and context is not self._tls:
            sslobj.context = self._tls

    def reconfigure(self, settings: Settings, resolver: Resolver | None = None) -> None:
        """Apply reloaded settings (SIGHUP) to new sessions and to the next command of open ones.

        The DKIM keys, certificate and credentials files are read first: if one is bad this
        raises (ConfigError, OSError, ValueError, ssl.SSLError) and nothing changes. An open
        session keeps the size limit, timeouts and TLS context it started with. ``resolver``: a
        new one when the DNS settings changed.
        """
        dkim = self.dkim.reloaded(settings)
        credentials = Credentials.from_file(settings.auth_credentials_file)
        context = self.tls_context(settings)
        self.settings, self.networks, self.dkim = settings, settings.networks(), dkim
        self.credentials, self._tls = credentials, context
        self.auth_failures.configure(settings.max_auth_failures_per_ip,
                                     settings.auth_failure_window)
        if resolver is not None:
            self.resolver, self.sender_check = resolver, SenderCheck(resolver)

    def factory(self, implicit_tls: bool = False) -> Callable[[], RelaySMTP]:
        """Sessions made with the settings current when each client connects (see reconfigure()).

        ``implicit_tls``: for a listener whose transport is TLS from the first byte (smtps://,
        RFC 8314 §3.3): no STARTTLS offered, AUTH offered at once."""
        if self._tls is None:
            self._tls = self.tls_context()

        def make() -> RelaySMTP:
            settings = self.settings
            return RelaySMTP(
                self, data_size_limit=settings.max_message_size, enable_SMTPUTF8=True,
                hostname=settings.helo_name, ident=settings.banner,
                tls_context=None if implicit_tls else self._tls, implicit_tls=implicit_tls,
                timeout=settings.command_timeout, auth_require_tls=not implicit_tls,
                authenticator=defer_auth, command_call_limit=None,
                auth_exclude_mechanism=[] if self.credentials.enabled else ["PLAIN", "LOGIN"],
            )

        return make

    def listener_tls(self) -> ssl.SSLContext:
        """The context an implicit-TLS listener is created with (the settings demand a
        certificate for one)."""
        if self._tls is None:
            self._tls = self.tls_context()
        if self._tls is None:
            raise ValueError("an smtps:// listener needs tls_cert_file and tls_key_file")
        return self._tls

    def admit(self, session: RelaySMTP, ip: str = "") -> str | None:
        """None if ``session`` may start, else the 421 to send
        (SEC-10: global and per-address limits).

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
    async def handle_EHLO(
        self, server: RelaySMTP, session: Session, envelope: Any, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        if not self.credentials.enabled:
            lines = [line for line in lines if not line.startswith("AUTH")]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES", "DSN"]
        head = [responses[0]] + [f"250-{line}" for line in lines[:-1]]
        return head + [f"250 {lines[-1]}"]

    async def handle_VRFY(
        self, server: RelaySMTP, session: Session, envelope: Any, address: str,
    ) -> str:
        # SEC-13
        return "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"

    # -- MAIL --
    async def mail(self, server: RelaySMTP, path: str, words: list[str]) -> str:
        extended = server.session is not None and server.session.extended_smtp
        allowed = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"} if extended else set()
        params = parse_params(words, allowed)
        env = server.env()
        if "SIZE" in params:  # RFC 1870 §6
            if not params["SIZE"].isdigit():
                raise Reply("501 5.5.4 SIZE must be a number")
            if int(params["SIZE"]) > self.settings.max_message_size:
                raise Reply("552 5.3.4 Message size exceeds fixed maximum message size")
            if not self.budget.fits(server.footprint(int(params["SIZE"]))):  # issue 22: early
                self.budget.refused += 1
                raise Reply(BUDGET_FULL)
        body = params.get("BODY", "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            raise Reply("501 5.5.4 BODY must be 7BIT or 8BITMIME")
        if params.get("SMTPUTF8"):
            raise Reply("501 5.5.4 SMTPUTF8 takes no value")
        ret = params.get("RET")
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            raise Reply("501 5.5.4 RET must be FULL or HDRS")
        envid = xtext_decode(params["ENVID"]) if "ENVID" in params else None
        if envid is not None and (len(envid) > 100
                                  or any(ord(c) < 32 or ord(c) > 126 for c in envid)):
            raise Reply("501 5.5.4 ENVID too long or not printable ASCII")  # RFC 3461 §4.4
        sender = path_address(path)
        if sender is not None and sender.utf8 and "SMTPUTF8" not in params:
            raise Reply("553 5.6.7 Non-ASCII address needs SMTPUTF8")
        if not self._enough_space():
            self.stats["storage_refusals"] += 1  # issue 20: the metrics' disk-space refusals
            raise Reply("452 4.3.1 Insufficient system storage")  # DUR-4, as Postfix queue_minfree
        if sender is not None:  # SPF-13/DSN-13: the null reverse-path is never checked
            client = peer_ip(server.session) if server.session else "unknown"
            refusal = await self.sender_check.refusal(sender, self.settings.null_mx_sender, client)
            if refusal is not None:
                self.stats["rejected"] += 1
                return refusal
        env.has_mail, env.sender, env.mail_from = True, sender, str(sender) if sender else ""
        env.mail_at = self.clock()  # delays a: from here to arrival (issue 15 D)
        env.body, env.ret, env.envid = body, ret.upper() if ret else None, envid
        env.smtp_utf8 = "SMTPUTF8" in params
        env.size = int(params.get("SIZE", "0"))
        return MAIL_OK

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
        peer = peer_ip(session)
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
            log.info("reject: RCPT from %s: relay access denied: to=%s",
                     peer_ip(server.session), safe_text(path, 256))
            self.stats["rejected"] += 1
            return "554 5.7.1 Relay access denied"
        params = parse_params(words, {"NOTIFY", "ORCPT"} if server.session.extended_smtp else set())
        # the address checks, explain's RCPT verdict too (issue 16)
        literals = self.settings.allow_address_literals
        address = accept_recipient(path, allow_address_literals=literals, smtp_utf8=env.smtp_utf8)
        notify = parse_notify(params["NOTIFY"]) if "NOTIFY" in params else ()
        orcpt = parse_orcpt(params["ORCPT"]) if "ORCPT" in params else None
        if len(env.recipients) >= self.settings.max_recipients:  # SEC-9
            return "452 4.5.3 Too many recipients"
        text = str(address)
        if all(r.address != text for r in env.recipients):  # a duplicate is accepted once
            env.recipients.append(Recipient(text, notify, orcpt))
            env.rcpt_tos.append(text)
        return RCPT_OK

    # -- DATA --
    async def handle_DATA(
        self, server: RelaySMTP, session: Session, envelope: RelayEnvelope,
    ) -> str:
        started = self.clock()
        content, problem = check_content(envelope.data or b"",
                                         self.settings.bare_newline,
                                         self.settings.max_received_headers)
        envelope.data = None  # the one copy is ``content`` now
        ip = peer_ip(session)
        if problem is not None:
            self.stats["rejected"] += 1
            log.info("reject: DATA from %s: %s", ip, problem)
            return problem
        queue_id = new_queue_id(self.clock)
        fields, refusal = await self.dkim.sign(session, content, queue_id)  # issue 14 §1
        if refusal is not None:
            self.stats["rejected"] += 1
            return refusal
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if envelope.smtp_utf8:  # RFC 6531 §3.7.3: UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA
            proto = "UTF8SMTP"
        if session.extended_smtp:
            proto += ("S" if session.ssl else "") + ("A" if session.authenticated else "")
        rcpts, rdns = envelope.recipients, clientname.name_now(server.rdns)  # issue 15 C5
        helo = safe_text(session.host_name or "", 100).replace(" ", "_") or "unknown"
        trace = received_header(
            helo=session.host_name or "", rdns=rdns, ip=ip, by=self.settings.helo_name, proto=proto,
            queue_id=queue_id, rcpt=rcpts[0].address if len(rcpts) == 1 else None, now=started,
        )
        message = (trace + fields, content)  # written one after the other: never joined (issue 22)
        meta = MessageMeta(
            queue_id=queue_id, sender=envelope.mail_from or "", arrival=started,
            recipients=[RecipientState(r.address, r.notify, r.orcpt) for r in rcpts],
            ret=envelope.ret, envid=envelope.envid, body=envelope.body, smtputf8=envelope.smtp_utf8,
            client=f"{helo} ({rdns} [{ip}])", size=len(message[0]) + len(content),
            intake=max(0.0, started - envelope.mail_at) if envelope.mail_at else 0.0,
        )
        self.storing += 1
        try:
            await self.spool.store(meta, message)
        except SpoolError as exc:  # DUR-4: never 250 without the fsync
            log.error("%s: cannot store message from %s: %s", queue_id, ip, exc.message)
            if exc.status == "4.3.1":
                self.stats["storage_refusals"] += 1
            return exc.smtp_reply()
        finally:
            self.storing -= 1
        self.stats["accepted"] += 1
        log.info("%s: from=<%s>, size=%d, nrcpt=%d, client=%s[%s], helo=<%s>, status=accepted",
                 queue_id, safe_text(meta.sender, LISTING), meta.size, len(rcpts), rdns, ip, helo)
        self.on_queued(meta)
        self.on_author(meta.sender, header_of(content))  # DMARC self-check (issue 14)
        server.errors = 0  # a client that delivers mail is not an error loop (SEC-10)
        server.caps.transaction_done()  # nor a junk-command loop (issue 21)
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
                    session.flush_replies()  # what a pipelined batch held goes out first
                    transport.write(b"421 4.3.2 Service shutting down\r\n")  # type: ignore[attr-defined]
                except (OSError, RuntimeError):
                    pass
                transport.close()
