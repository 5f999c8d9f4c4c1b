"""SMTP AUTH (SEC-8): the credentials file, its scrypt hashes, and checking a login.

Credentials file (``auth_credentials_file``): one ``user:scrypt$N$r$p$salt$hash``
per line (salt and hash base64), ``#`` comments; make a line with::

  python -c 'from mxroute.relay.intake.auth import hash_password as h; print("user:" + h("secret"))'

AUTH PLAIN/LOGIN are offered only after STARTTLS (``auth_require_tls``) or on an
``smtps://`` listener (implicit TLS), and only when the file names a user; after
``MAX_AUTH_FAILURES`` failed attempts the connection is closed. Per client address (issue 21,
as Postfix's ``smtpd_client_auth_rate_limit``): each failure is answered after
``AUTH_FAILURE_DELAY``, and an address with ``max_auth_failures_per_ip`` failures within
``auth_failure_window`` gets ``421 4.7.0`` at its next AUTH, unchecked (``caps.AuthFailures``).
Log lines name the user and address, never the password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

from aiosmtpd.smtp import AuthResult, LoginPassword

from mxroute.relay.intake.protocol import RelaySMTP, peer_ip
from mxroute.text import safe_text

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_AUTH_FAILURES = 3  # SEC-8: then the connection is closed
AUTH_FAILURE_DELAY = 1.0  # seconds before a failure's 535 (as Postfix's smtpd_error_sleep_time)
INVALID = "535 5.7.8 Authentication credentials invalid"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A credentials-file hash: ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: bytes) -> bool:
    """Does ``password`` match the ``scrypt$...`` hash ``stored``? (constant-time compare)"""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def load_credentials(path: Path) -> dict[str, str]:
    """Read ``user:hash`` lines; ConfigError-worthy problems raise ValueError with the line
    number."""
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


class Credentials:
    """The users of the credentials file, and a login checked against them."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    @classmethod
    def from_file(cls, path: Path | None) -> Credentials:
        """The file's users; none (AUTH not offered) without a file. Raises as load_credentials."""
        return cls(load_credentials(path) if path else {})

    @property
    def enabled(self) -> bool:
        """AUTH is offered only when some user may log in."""
        return bool(self.users)

    async def check(self, server: RelaySMTP, auth_data: LoginPassword) -> AuthResult:
        """AUTH PLAIN/LOGIN against the credentials file (only after TLS: auth_require_tls).

        scrypt runs in a worker thread: a slow hash never stalls other sessions.
        """
        user = auth_data.login.decode("utf-8", "replace")
        stored = self.users.get(user)
        ok = stored is not None and await asyncio.get_running_loop().run_in_executor(
            None, verify_password, stored, auth_data.password)
        peer = peer_ip(server.session) if server.session else "unknown"
        table = server.intake.auth_failures
        if ok:
            before = table.succeeded(peer, time.monotonic())
            log.info("auth ok: user=%s client=%s%s", safe_text(user, 64), peer,
                     f" after {before} failed attempts" if before else "")
            return AuthResult(success=True, auth_data=auth_data)
        failures = table.failed(peer, time.monotonic())
        log.info("auth failed: user=%s client=%s failures=%d/%d", safe_text(user, 64), peer,
                 failures, table.limit)
        server.auth_failures += 1
        await asyncio.sleep(AUTH_FAILURE_DELAY)  # SEC-8: guessing slowed
        if server.auth_failures >= MAX_AUTH_FAILURES and server.transport is not None:
            server.loop.call_later(0.5, server.transport.close)  # SEC-8: rate limit
        return AuthResult(success=False, handled=False, message=INVALID)
