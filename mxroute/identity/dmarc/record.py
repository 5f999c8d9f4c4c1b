"""The DMARC policy record (RFC 7489 §6.3, §6.4): parse one TXT record. PURE.

``v=DMARC1`` must be the first tag; unknown tags are ignored; a known tag with a bad value is
discarded in favour of its default (§6.3). A record without a valid ``p=`` (or with a bad
``sp=``) is used as ``p=none`` when its ``rua=`` holds a valid URI, and is no DMARC record
otherwise (§6.6.3 step 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POLICIES = ("none", "quarantine", "reject")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_VERSION = re.compile(r"\s*[vV]\s*=\s*DMARC1\s*(;|$)")  # DMARC1 is case-sensitive (§6.4 ABNF)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s!,]+(![0-9]+[kmgt]?)?", re.IGNORECASE)
_FO = frozenset("01ds")


class RecordError(ValueError):
    """A TXT record that is not a usable DMARC record: receivers apply no DMARC for it."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed policy record with the defaults of §6.3 filled in."""

    text: str
    policy: str  # p=
    subdomain_policy: str | None  # sp= as published (None: p= applies to subdomains too)
    adkim: str = "r"  # "r" relaxed or "s" strict
    aspf: str = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400
    notes: tuple[str, ...] = ()  # what was discarded or assumed, in plain words

    def effective_policy(self, subdomain: bool) -> str:
        """``sp=`` for a subdomain under an organizational domain's record, else ``p=``."""
        if subdomain and self.subdomain_policy is not None:
            return self.subdomain_policy
        return self.policy


def is_dmarc(text: str) -> bool:
    """Does this TXT record start with ``v=DMARC1`` (§6.6.3 step 2)?"""
    return _VERSION.match(text) is not None


def split_tags(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``text`` as (lower-case tag, value) pairs, and the items that are no ``tag=value``
    (ignored, as §6.3 says of syntax errors)."""
    pairs: list[tuple[str, str]] = []
    skipped: list[str] = []
    for item in text.split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _TAG.fullmatch(name):
            skipped.append(f"{item.strip()[:40]!r} is not tag=value: ignored")
            continue
        pairs.append((name.lower(), value.strip()))
    return pairs, skipped


def _uris(value: str) -> tuple[tuple[str, ...], bool]:
    """The comma-separated ``dmarc-uri`` list, and whether every entry was valid."""
    found = [part.strip() for part in value.split(",") if part.strip()]
    valid = tuple(part for part in found if _URI.fullmatch(part))
    return valid, len(valid) == len(found) and bool(found)


def parse_record(text: str) -> DmarcRecord:
    """Parse one DMARC TXT record; RecordError when receivers would apply no DMARC for it."""
    if not is_dmarc(text):
        raise RecordError("does not start with v=DMARC1")
    pairs, notes = split_tags(text)
    tags: dict[str, str] = {}
    for name, value in pairs[1:]:
        if name in tags or name == "v":  # RFC 6376 §3.2, which §6.3 follows
            raise RecordError(f"tag {name}= appears twice")
        tags[name] = value
    rua, rua_ok = _uris(tags.get("rua", ""))
    if "rua" in tags and not rua_ok:
        notes.append(f"rua={tags['rua'][:60]} holds an invalid URI")
    ruf, ruf_ok = _uris(tags.get("ruf", ""))
    if "ruf" in tags and not ruf_ok:
        notes.append(f"ruf={tags['ruf'][:60]} holds an invalid URI")
    policy = tags.get("p", "").lower()
    sub = tags["sp"].lower() if "sp" in tags else None
    bad = _policy_problem(tags, policy, sub)
    if bad is not None:
        if not rua:
            raise RecordError(f"{bad}, and no valid rua= (RFC 7489 §6.6.3)")
        notes.append(f"{bad}: treated as p=none, as rua= is valid (RFC 7489 §6.6.3)")
        policy, sub = "none", None
    return DmarcRecord(
        text=text, policy=policy, subdomain_policy=sub,
        adkim=_choice(tags, "adkim", ("r", "s"), "r", notes),
        aspf=_choice(tags, "aspf", ("r", "s"), "r", notes),
        pct=_number(tags, "pct", 100, 0, 100, notes),
        rua=rua, ruf=ruf, fo=_list(tags, "fo", _FO, ("0",), notes),
        rf=_list(tags, "rf", frozenset({"afrf"}), ("afrf",), notes),
        ri=_number(tags, "ri", 86400, 0, 2**32 - 1, notes),
        notes=tuple(notes),
    )


def _policy_problem(tags: dict[str, str], policy: str, sub: str | None) -> str | None:
    """What is wrong with ``p=`` or ``sp=`` (§6.6.3 step 5), or None."""
    allowed = "|".join(POLICIES)
    if "p" not in tags:
        return "no p= tag"
    if policy not in POLICIES:
        return f"p={tags['p'][:20]} is not {allowed}"
    if sub is not None and sub not in POLICIES:
        return f"sp={tags['sp'][:20]} is not {allowed}"
    return None


def _choice(tags: dict[str, str], name: str, allowed: tuple[str, ...], default: str,
            notes: list[str]) -> str:
    value = tags.get(name, default).lower()
    if value in allowed:
        return value
    notes.append(f"{name}={tags[name][:20]} is not {'|'.join(allowed)}: {default} assumed")
    return default


def _number(tags: dict[str, str], name: str, default: int, low: int, high: int,
            notes: list[str]) -> int:
    text = tags.get(name)
    if text is None:
        return default
    if text.isascii() and text.isdigit() and low <= int(text) <= high:
        return int(text)
    notes.append(f"{name}={text[:20]} is not a number from {low} to {high}: {default} assumed")
    return default


def _list(tags: dict[str, str], name: str, allowed: frozenset[str], default: tuple[str, ...],
          notes: list[str]) -> tuple[str, ...]:
    text = tags.get(name)
    if text is None:
        return default
    items = tuple(item.strip().lower() for item in text.split(":"))
    if items and all(item in allowed for item in items):
        return items
    notes.append(f"{name}={text[:20]} holds an unknown value: {':'.join(default)} assumed")
    return default
