"""DKIM signing at intake, before the ``250`` (issue 14 §1): what is signed, and what is refused.

Only mail the intake accepted for relay reaches DATA (relay_networks or AUTH, checked at RCPT);
a key with ``senders`` signs only for the client networks and AUTH users it names. The keys are
chosen by the From: header's domain (``DkimSigner.keys_for``); a key whose ``d=``/``s=`` already
signed the message is skipped. No From:, several, or an unparseable header: not signed, and
logged (with ``dkim_required``: ``550 5.7.1``). A signature that cannot be made: ``451 4.3.0``,
logged and counted, never unsigned mail. Bodies over ``LARGE`` are signed off the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from aiosmtpd.smtp import Session

from mxroute.errors import ConfigError
from mxroute.identity.dkim import canon
from mxroute.identity.dkim.keys import KeyProblem
from mxroute.identity.dkim.sign import DkimSigner, SigningError, SigningKey, SigningStats
from mxroute.relay.intake.protocol import peer_ip
from mxroute.settings import Settings
from mxroute.text import safe_text

log = logging.getLogger(__name__)

LARGE = 256 * 1024  # octets of message above which signing runs in a worker thread
# Large messages are signed one at a time (issue 22): canonicalization makes copies of the body
# (the bytes parsed, the body, its relaxed form), so memory beyond the in-flight budget stays
# within a few times max_message_size, whatever the number of clients.
LARGE_AT_ONCE = 1


@dataclass(frozen=True, slots=True)
class _Client:
    ip: str
    user: str | None  # the AUTH login, if any


class IntakeSigning:
    """The intake's signer and its policy; ``sign`` is the one call the DATA handler makes."""

    def __init__(self, settings: Settings, signer: DkimSigner) -> None:
        self.signer = signer
        self.required = settings.dkim_required
        self._large = asyncio.Semaphore(LARGE_AT_ONCE)

    @classmethod
    def load(cls, settings: Settings, stats: SigningStats | None = None) -> IntakeSigning:
        """Read and check the keys; ConfigError (one line naming the key) when one is unusable.

        Warnings (RSA under 2048 bits, a key others may read) are logged, one line each.
        """
        try:
            signer, warnings = DkimSigner.load(settings, stats=stats)
        except KeyProblem as exc:
            raise ConfigError(exc.message) from None
        for warning in warnings:
            log.warning("%s", warning)
        return cls(settings, signer)

    @property
    def stats(self) -> SigningStats:
        return self.signer.stats

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """The keys in use (the metrics check their published records)."""
        return self.signer.keys

    def reloaded(self, settings: Settings) -> IntakeSigning:
        """The keys read again (SIGHUP): ConfigError and nothing changes when one is unusable."""
        return self.load(settings, self.signer.stats)

    async def sign(self, session: Session, content: bytes | bytearray,
                   queue_id: str) -> tuple[bytes, str | None]:
        """The DKIM-Signature fields to put on top of ``content`` (``b""``: not signed), or the
        refusal to send instead of ``250``. Never a copy of ``content`` (issue 22)."""
        if not self.signer.keys:
            return b"", None
        login = getattr(session.auth_data, "login", None) if session.authenticated else None
        client = _Client(peer_ip(session), login.decode("utf-8", "replace")
                         if isinstance(login, bytes) else None)
        if len(content) > LARGE:
            loop = asyncio.get_running_loop()
            async with self._large:
                return await loop.run_in_executor(None, self._sign, client, content, queue_id)
        return self._sign(client, content, queue_id)

    def _sign(self, client: _Client, content: bytes | bytearray,
              queue_id: str) -> tuple[bytes, str | None]:
        try:
            parsed = canon.split_message(bytes(content) if isinstance(content, bytearray)
                                         else content)
            author = canon.author_domain(parsed)
        except (canon.ParseError, canon.AuthorError) as exc:
            return self._unsigned(queue_id, str(exc))
        keys = self.signer.keys_for(author)
        if not keys:
            return b"", None
        allowed = [key for key in keys if _may_use(key, client)]
        if not allowed:
            return self._unsigned(queue_id,
                                  f"client {client.ip}{_user(client)} may not send for {author}",
                                  f"not allowed to send mail signed for {author}")
        present = canon.existing_signatures(parsed)
        fresh = [key for key in allowed if (key.d(author), key.config.selector) not in present]
        if not fresh:
            log.info("%s: not signed again: it carries a signature of the same d= and s=",
                     queue_id)
            return b"", None
        try:
            fields = self.signer.sign_parsed(parsed, fresh, author)
        except SigningError as exc:
            log.error("%s: DKIM signing failed, deferred (451): %s", queue_id, exc)
            return b"", "451 4.3.0 Temporary signing failure, try again later"
        except Exception:  # a message that trips the signer is deferred, never sent unsigned
            self.signer.stats.failed()
            log.exception("%s: DKIM signing failed, deferred (451)", queue_id)
            return b"", "451 4.3.0 Temporary signing failure, try again later"
        log.info("%s: DKIM signed: %s", queue_id, ", ".join(
            f"d={key.d(author)} s={key.config.selector}" for key in fresh))
        return fields, None

    def _unsigned(self, queue_id: str, why: str,
                  refusal: str | None = None) -> tuple[bytes, str | None]:
        why = safe_text(why, 200)
        if self.required:
            log.info("%s: refused (dkim_required): cannot be signed: %s", queue_id, why)
            return b"", f"550 5.7.1 Message cannot be DKIM-signed: {refusal or why}"
        log.info("%s: not signed: %s", queue_id, why)
        return b"", None


def _may_use(key: SigningKey, client: _Client) -> bool:
    """``senders`` unset: every client that may relay; else its networks and AUTH users."""
    if key.config.senders is None:
        return True
    if client.user is not None and client.user in key.config.sender_users():
        return True
    try:
        ip = ipaddress.ip_address(client.ip)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in key.config.sender_networks())


def _user(client: _Client) -> str:
    return f" (user {safe_text(client.user, 64)})" if client.user is not None else ""


__all__ = ["LARGE", "IntakeSigning"]
