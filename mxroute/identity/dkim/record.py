"""The DKIM key record (RFC 6376 §3.6.1): build, split for DNS, parse a published one. PURE."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

MAX_STRING = 255  # octets in one DNS character-string (RFC 1035 §3.3)
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def dns_name(selector: str, domain: str) -> str:
    """Where the key is published: ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 §3.6.2.1)."""
    return f"{selector}._domainkey.{domain}"


def build_txt(algorithm: str, public_b64: str) -> str:
    """The record's text: ``v=DKIM1; k=rsa; p=...`` (``k=ed25519`` for Ed25519, RFC 8463)."""
    return f"v=DKIM1; k={algorithm}; p={public_b64}"


def split_txt(text: str, size: int = MAX_STRING) -> list[str]:
    """``text`` as DNS strings of at most ``size`` octets each (ASCII: one octet a character)."""
    data = text.encode("ascii")
    return [data[i:i + size].decode("ascii") for i in range(0, len(data), size)] or [""]


def zone_line(selector: str, domain: str, text: str) -> str:
    """The zone-file line: ``SELECTOR._domainkey.DOMAIN. IN TXT ( "..." "..." )``."""
    strings = " ".join(f'"{part}"' for part in split_txt(text))
    return f"{dns_name(selector, domain)}. IN TXT ( {strings} )"


class RecordError(ValueError):
    """A published record that is not a DKIM key record (status ``invalid``)."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A parsed key record: the tags that matter for checking it."""

    key_type: str  # k=, default "rsa"
    public: bytes  # p= decoded; empty = revoked (§3.6.1)
    testing: bool  # t=y
    hashes: tuple[str, ...]  # h=, empty = any
    services: tuple[str, ...]  # s=, default ("*",)
    tags: dict[str, str]

    @property
    def revoked(self) -> bool:
        return not self.public


def parse_record(text: str) -> KeyRecord:
    """Parse a published key record (tag=value list, RFC 6376 §3.2, §3.6.1); RecordError if not."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _TAG.fullmatch(name):
            raise RecordError(f"not a tag=value list near {item.strip()[:40]!r}")
        if name in tags:
            raise RecordError(f"tag {name}= appears twice")
        tags[name] = re.sub(r"\s+", "", value) if name == "p" else value.strip()
    if "v" in tags and tags["v"] != "DKIM1":
        raise RecordError(f"v={tags['v'][:20]} is not DKIM1")
    if "p" not in tags:
        raise RecordError("no p= tag")
    try:
        public = base64.b64decode(tags["p"], validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("p= is not base64") from None
    flags = [flag.strip() for flag in tags.get("t", "").split(":")]
    return KeyRecord(
        key_type=tags.get("k", "rsa").lower(),
        public=public,
        testing="y" in flags,
        hashes=tuple(h.strip() for h in tags["h"].split(":")) if "h" in tags else (),
        services=tuple(s.strip() for s in tags.get("s", "*").split(":")),
        tags=tags,
    )
