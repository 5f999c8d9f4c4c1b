"""TLSA records (RFC 6698 §2.1): one record, whether it can authenticate an SMTP server here
(RFC 7672 §3.1), and whether a certificate matches it.

A leaf: ``tls.policy`` (a host policy carries its usable records) and ``tls.dane`` (which
decides what a host needs) both build on it. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
DANE_TA, DANE_EE = 2, 3
_DIGEST_SIZES = {1: 32, 2: 64}  # matching type -> digest length (SHA-256, SHA-512)


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record (RFC 6698 §2.1)."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_rdata(cls, rr: Any) -> Tlsa:
        return cls(int(rr.usage), int(rr.selector), int(rr.mtype), bytes(rr.cert))

    @property
    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def usage_name(self) -> str:
        """``DANE-EE`` and the like; the number for an unknown usage."""
        return USAGES.get(self.usage, str(self.usage))

    @property
    def problem(self) -> str | None:
        """Why this record cannot authenticate an SMTP server here, or None (usable)."""
        if self.usage in (0, 1):
            return f"{USAGES[self.usage]}({self.usage}) is not used for SMTP (RFC 7672 §3.1.3)"
        if self.usage not in (DANE_TA, DANE_EE):
            return f"unknown certificate usage {self.usage}"
        if self.selector not in (0, 1):
            return f"unknown selector {self.selector}"
        if self.mtype not in (0, 1, 2):
            return f"unknown matching type {self.mtype}"
        size = _DIGEST_SIZES.get(self.mtype)
        if size is not None and len(self.data) != size:
            return f"a matching type {self.mtype} digest has {size} bytes, not {len(self.data)}"
        if self.usage == DANE_TA:
            if (self.selector, self.mtype) != (0, 0):
                return ("DANE-TA other than 2 0 0 needs the peer's certificate chain, which "
                        "Python 3.11's ssl does not show")
            try:
                spki(self.data)
            except ValueError as exc:
                return f"not a DER certificate: {exc}"
        return None

    def matches(self, der: bytes) -> bool:
        """Does the leaf certificate ``der`` match this record (RFC 6698 §2.1.2-2.1.4)?"""
        try:
            selected = der if self.selector == 0 else spki(der)
        except ValueError:
            return False
        if self.mtype == 0:
            return selected == self.data
        digest = hashlib.sha256 if self.mtype == 1 else hashlib.sha512
        return digest(selected).digest() == self.data

    def to_json(self) -> dict[str, Any]:
        return {"record": self.text, "usage": self.usage_name,
                "usable": self.problem is None, "problem": self.problem}


def spki(der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER X.509 certificate (RFC 5280 §4.1); ValueError if
    malformed."""
    tag, start, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("a certificate is one DER SEQUENCE")
    tag, pos, tbs_end = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    if pos < tbs_end and der[pos] == 0xA0:  # [0] EXPLICIT version
        pos = _tlv(der, pos)[2]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        pos = _tlv(der, pos)[2]
    tag, _, key_end = _tlv(der, pos)
    if tag != 0x30 or key_end > tbs_end:
        raise ValueError("no subjectPublicKeyInfo")
    return der[pos:key_end]


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``pos`` (definite lengths only)."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[pos], data[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + 2 + count > len(data):
            raise ValueError("bad length")
        start, length = pos + 2 + count, int.from_bytes(data[pos + 2:pos + 2 + count], "big")
    if start + length > len(data):
        raise ValueError("truncated")
    return tag, start, start + length


__all__ = ["DANE_EE", "DANE_TA", "USAGES", "Tlsa", "spki"]
