"""The ``shared_state`` URL (issue 19): where a fleet of ``serve`` nodes keeps what they share.
PURE: parsing, checking and redacting text; the connection is ``mxroute.relay.fleet``.

``redis://[user@]host[:port][/db]`` or ``rediss://`` (TLS). The password never goes in the URL
(it would show in ``check-config``, logs and ``ps``): it is read from
``shared_state_password_file``. ``redact`` blanks any password a text may still carry anyway,
for every place a URL is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379
SCHEMES = ("redis", "rediss")
_USERINFO = re.compile(r"(?P<scheme>\w+://)(?P<user>[^:@/\s]*):(?P<secret>[^@/\s]*)@")


@dataclass(frozen=True)
class SharedStateUrl:
    """A parsed ``shared_state``: no secret in it."""

    tls: bool
    host: str
    port: int
    db: int
    username: str | None

    def shown(self) -> str:
        """The URL as logs and ``check-config`` show it (it never holds a password)."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{user}{host}:{self.port}/{self.db}"


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it blanked."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def parse_shared_state(text: str) -> SharedStateUrl:
    """``text`` as a ``shared_state`` URL; ``ValueError`` (which shows it redacted) if it is
    not one."""
    shown = redact(text)
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{shown!r}: shared_state is redis://host:port/db or rediss://"
                         "host:port/db (TLS)")
    if parts.password is not None:
        raise ValueError(f"{shown!r}: the password does not go in the URL; put it in the file "
                         "named by shared_state_password_file")
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    if port == 0:
        raise ValueError(f"{shown!r}: port 0")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: no ?query or #fragment (the password goes in "
                         "shared_state_password_file, TLS is rediss://)")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{shown!r}: the path is a database number (/0, /1, ...)")
    return SharedStateUrl(tls=parts.scheme == "rediss", host=parts.hostname,
                          port=DEFAULT_PORT if port is None else port,
                          db=int(path) if path else 0,
                          username=unquote(parts.username) if parts.username else None)


__all__ = ["DEFAULT_PORT", "SharedStateUrl", "parse_shared_state", "redact"]
