"""The connection to ``shared_state`` (issue 19): a redis-py asyncio client with short timeouts,
one retry at once (a pooled connection the server closed), no more (the callers fall back to
local limits instead of waiting), the password
read from ``shared_state_password_file``, TLS for ``rediss://`` (verified with ``tls_ca_file``
or the system store). The URL is only ever shown redacted (``SharedStateUrl.shown``).
"""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mxroute.relay.courier.upstream import SecretProblem, read_secret
from mxroute.settings import Settings
from mxroute.sharedstate import SharedStateUrl, parse_shared_state

CONNECT_TIMEOUT = 1.0  # seconds to reach Redis: beyond it the node counts alone
COMMAND_TIMEOUT = 1.0  # seconds for one command (a script is a few microseconds on the server)


class SharedStateError(Exception):
    """``shared_state`` cannot be used as configured (the text never holds a secret)."""


def password(path: Path | None) -> str | None:
    """The password in ``path`` (None: no file, no password)."""
    if path is None:
        return None
    try:
        return read_secret(path)
    except SecretProblem as exc:
        raise SharedStateError(str(exc).replace("password_file", "shared_state_password_file",
                                                1)) from None


def client(url: SharedStateUrl, *, password_file: Path | None = None,
           ca_file: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> aioredis.Redis:
    """A client for ``url`` (it connects on first use; ``SharedStateError`` when the password
    file cannot be read)."""
    secret = password(password_file)
    options: dict[str, object] = {}
    if url.tls:
        options = {"ssl": True, "ssl_cert_reqs": "required",
                   "ssl_ca_certs": None if ca_file is None else str(ca_file)}
    return aioredis.Redis(host=url.host, port=url.port, db=url.db, username=url.username,
                          password=secret, socket_connect_timeout=CONNECT_TIMEOUT,
                          socket_timeout=timeout, retry=Retry(NoBackoff(), 1),
                          health_check_interval=0,
                          client_name="mxroute", **options)  # type: ignore[arg-type]


def from_settings(settings: Settings) -> aioredis.Redis | None:
    """The client for ``settings.shared_state``; None when it is unset (one node)."""
    if not settings.shared_state:
        return None
    return client(parse_shared_state(settings.shared_state),
                  password_file=settings.shared_state_password_file,
                  ca_file=settings.tls_ca_file)


def shown(settings: Settings) -> str | None:
    """``shared_state`` as it may be shown (logs, ``check-config``), or None when unset."""
    if not settings.shared_state:
        return None
    return parse_shared_state(settings.shared_state).shown()


__all__ = ["COMMAND_TIMEOUT", "CONNECT_TIMEOUT", "SharedStateError", "client", "from_settings",
           "password", "shown"]
