"""``dkim check``: is each configured key published, and is it this private key? (opendkim-testkey)

The status of one key: ``ok`` | ``missing`` (NXDOMAIN/NODATA) | ``mismatch`` | ``revoked``
(``p=`` empty) | ``invalid`` (no key record) | ``temporary-failure`` (DNS trouble).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxroute.dns.answer import Outcome
from mxroute.dns.resolver import Lookups
from mxroute.identity.dkim.keys import DkimPrivateKey, KeyProblem, load_key
from mxroute.identity.dkim.record import RecordError, dns_name, parse_record

PROBLEMS = ("missing", "mismatch", "revoked", "invalid")


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What ``dkim check`` found for one configured key."""

    domain: str
    selector: str
    dns_name: str
    status: str
    algorithm: str | None
    bits: int | None
    testing: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "selector": self.selector, "dns_name": self.dns_name,
                "status": self.status, "algorithm": self.algorithm, "bits": self.bits,
                "testing": self.testing}


def record_text(rrs: tuple[Any, ...]) -> list[str]:
    """Each TXT record's strings concatenated (RFC 6376 §3.6.2.2), as text."""
    return [b"".join(rr.strings).decode("utf-8", "replace") for rr in rrs]


async def check_key(
    resolver: Lookups, domain: str, selector: str, key: DkimPrivateKey | KeyProblem
) -> KeyCheck:
    """Look up ``SELECTOR._domainkey.DOMAIN`` TXT and compare it with ``key``."""
    name = dns_name(selector, domain)
    loaded = key if isinstance(key, DkimPrivateKey) else None
    algorithm = loaded.algorithm if loaded else None
    bits = loaded.bits if loaded else None

    def result(status: str, detail: str, testing: bool = False) -> KeyCheck:
        return KeyCheck(domain, selector, name, status, algorithm, bits, testing, detail)

    answer = await resolver.lookup(name, "TXT")
    if answer.outcome.temporary:
        return result("temporary-failure", f"{answer.outcome.value} {answer.detail}".strip())
    if answer.outcome in (Outcome.NXDOMAIN, Outcome.NODATA):
        return result("missing", f"{answer.outcome.value}: publish the key at {name}")
    texts = [text for text in record_text(answer.rrs) if text.strip()]
    keys = [text for text in texts if "p=" in text]
    if len(keys) != 1:
        return result("invalid", "no key record" if not keys else f"{len(keys)} key records")
    try:
        published = parse_record(keys[0])
    except RecordError as exc:
        return result("invalid", str(exc))
    if published.revoked:
        return result("revoked", "p= is empty", published.testing)
    if published.key_type not in ("rsa", "ed25519"):
        return result("invalid", f"unknown k={published.key_type}", published.testing)
    if loaded is None:
        return result("mismatch", f"the private key cannot be used: {key}", published.testing)
    if published.key_type != loaded.algorithm or published.public != loaded.public_der():
        return result("mismatch", "the published key is not this private key", published.testing)
    return result("ok", "", published.testing)


def load_or_problem(path: Path, allowed_group: int | None = None) -> DkimPrivateKey | KeyProblem:
    """The key, or the one-line problem that keeps it from being used."""
    try:
        return load_key(path, allowed_group=allowed_group)
    except KeyProblem as exc:
        return exc
