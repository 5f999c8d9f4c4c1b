"""PURE: the intake's verdict on one recipient address at RCPT, for ``serve`` and ``explain``.

``accept_recipient`` is what the intake's RCPT applies to the address itself (after SEC-3's
relay check and the ESMTP parameters): the path's syntax (``path_address``: RFC 5321 §4.1.2, a
numeric last label, DSN-13), no null recipient, address literals only with
``allow_address_literals`` (MX-13), a UTF-8 address only after ``MAIL ... SMTPUTF8`` (RFC 6531).
It raises ``Reply``; ``Verdict`` is the same answer as data, with the setting that would change
it, which is how ``explain`` reports it (issue 16 §2). ``%`` and ``!`` in a local part are not
routing (SEC-3): such an address goes to its domain like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mxroute.address import Address
from mxroute.relay.intake.params import Reply, path_address

RCPT_OK = "250 2.1.5 Ok"
MAIL_OK = "250 2.1.0 Ok"
LITERAL_REFUSED = "550 5.1.2 Address literals are not accepted here"
LITERAL_SETTING = "allow_address_literals = true"


def accept_recipient(path: str, *, allow_address_literals: bool, smtp_utf8: bool) -> Address:
    """The address of RCPT's ``<path>`` if the intake takes it; else ``Reply`` (with
    ``setting``: what would make it take it, when a setting would)."""
    address = path_address(path)
    if address is None:
        raise Reply("501 5.1.3 Null recipient not allowed")
    if address.literal is not None and not allow_address_literals:
        raise Reply(LITERAL_REFUSED, setting=LITERAL_SETTING)
    if address.utf8 and not smtp_utf8:
        raise Reply("553 5.6.7 Non-ASCII address needs SMTPUTF8")
    return address


@dataclass(frozen=True, slots=True)
class Verdict:
    """An intake reply as data: ``reply`` (``"550 5.1.2 Address literals ..."``) and the setting
    that would change it (``"allow_address_literals = true"``), if one would."""

    reply: str
    setting: str | None = None
    note: str | None = None  # what the intake logs when it goes on anyway (a sender check)

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")

    @property
    def code(self) -> int:
        return int(self.reply[:3])

    @property
    def status(self) -> str | None:
        """The enhanced status code (RFC 3463), or None."""
        word = self.reply[4:].split(" ", 1)[0]
        parts = word.split(".")
        return word if len(parts) == 3 and all(p.isdigit() for p in parts) else None

    @property
    def text(self) -> str:
        rest = self.reply[4:]
        status = self.status
        return rest[len(status) + 1:] if status else rest

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reply": self.reply, "code": self.code,
                "status": self.status, "text": self.text, "setting": self.setting,
                "note": self.note}


def rcpt_verdict(address: Address, *, allow_address_literals: bool) -> Verdict:
    """What RCPT TO:<address> gets from the intake, for a client allowed to relay (SEC-3) that
    declared SMTPUTF8 when the address needs it."""
    try:
        accept_recipient(f"<{address}>", allow_address_literals=allow_address_literals,
                         smtp_utf8=True)
    except Reply as refusal:
        return Verdict(refusal.text, refusal.setting)
    return Verdict(RCPT_OK)


__all__ = ["LITERAL_REFUSED", "MAIL_OK", "RCPT_OK", "Verdict", "accept_recipient",
           "rcpt_verdict"]
