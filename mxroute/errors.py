"""Typed errors and the sysexits codes the commands return.

Each error knows whether it is permanent and which SMTP reply it maps to; the
reply string is formed here and nowhere else.
"""

from __future__ import annotations

# sysexits.h, as mail tools use them.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78


class MxrouteError(Exception):
    """Base of every error mxroute raises on purpose."""

    code: int = 451
    status: str = "4.0.0"
    exit_code: int = EX_SOFTWARE

    def __init__(self, message: str, *, code: int | None = None, status: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def smtp_reply(self) -> str:
        """The one place an error becomes an SMTP reply line."""
        text = " ".join(self.message.split())  # no CR/LF can escape into the reply
        return f"{self.code} {self.status} {text}"


class AddressError(MxrouteError):
    """A malformed mail address (RFC 5321 §4.1.2)."""

    code = 501
    status = "5.1.3"
    exit_code = EX_USAGE


class ConfigError(MxrouteError):
    """A setting that is missing, malformed or unsafe."""

    exit_code = EX_CONFIG


class SpoolError(MxrouteError):
    """The spool could not store or read a message (never answered with 250)."""

    code = 451
    status = "4.3.0"
    exit_code = EX_CANTCREAT
