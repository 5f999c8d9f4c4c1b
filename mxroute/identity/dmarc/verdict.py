"""The deliverability verdict for one From: domain (RFC 7489 §3.1, §4.2, §6.6). PURE.

Facts in (what discovery found, SPF ``check_host`` per egress IP, the ``dkim check`` status of
each key that signs the domain), judgement out:

- ``spf_aligned``: SPF passes for EVERY egress IP, and the envelope sender's domain aligns
  with the From domain (``aspf=r``: the same organizational domain; ``aspf=s``: equal).
- ``dkim_aligned``: the relay signs with a key whose published record matches it
  (``dkim check`` status ``ok``, not ``t=y``) and whose ``d=`` aligns (``adkim``).
- ``verdict``: ``none`` when no DMARC record applies; ``temporary-failure`` on DNS trouble
  that keeps it from being told; ``pass`` when either aligns; ``fail`` otherwise.
- ``bulk_sender_ready``: the big receivers' bulk-sender rules hold: SPF passes AND a key
  verifies, a DMARC record is published (any ``p=``, ``none`` included) and DMARC passes.
- ``fixes``: everything that keeps any of these from holding, in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mxroute.identity.dmarc.orgdomain import aligned
from mxroute.identity.dmarc.record import DmarcRecord

FOUND, NONE, TEMPORARY = "found", "none", "temporary-failure"
PASS, FAIL = "pass", "fail"


@dataclass(frozen=True, slots=True)
class Discovery:
    """What policy discovery (§6.6.3) found for one From domain."""

    domain: str  # the From: domain (lower-case A-labels)
    org_domain: str
    outcome: str  # FOUND | NONE | TEMPORARY
    record: DmarcRecord | None = None
    name: str | None = None  # where the record was (``_dmarc.X``)
    text: str | None = None  # the record's text, usable or not
    reason: str = ""  # why NONE or TEMPORARY, in plain words

    @property
    def from_org(self) -> bool:
        """The record is the organizational domain's, applied to a subdomain (``sp=``)."""
        return self.name == f"_dmarc.{self.org_domain}" and self.domain != self.org_domain

    @property
    def policy(self) -> str | None:
        """The effective policy: ``sp=`` when :attr:`from_org`, else ``p=``."""
        return self.record.effective_policy(self.from_org) if self.record else None


@dataclass(frozen=True, slots=True)
class SpfCheck:
    """SPF ``check_host`` for one egress IP and the envelope sender's domain."""

    ip: str
    result: str  # pass | fail | softfail | neutral | none | permerror | temperror
    fix: str | None = None  # how to make it pass (identity.findings), None on pass


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """One key that signs the From domain, as ``dkim check`` found it published."""

    domain: str  # its d=
    selector: str
    dns_name: str
    status: str  # ok | missing | mismatch | revoked | invalid | temporary-failure
    algorithm: str | None = None
    testing: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the verdict judges."""

    discovery: Discovery
    envelope_domain: str  # the SPF identity: MAIL FROM's domain (the HELO name for <>)
    spf: tuple[SpfCheck, ...]  # one per egress IP; empty when egress_ips is not set
    keys: tuple[KeyStatus, ...]  # the keys that sign the From domain (none: unsigned)


@dataclass(frozen=True, slots=True)
class DmarcVerdict:
    """The judgement; ``to_json`` is explain's ``dmarc`` object."""

    domain: str
    record: str | None
    policy: str | None
    org_domain: str
    spf_aligned: bool
    dkim_aligned: bool
    verdict: str  # pass | fail | none | temporary-failure
    reason: str
    bulk_sender_ready: bool
    fixes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "record": self.record, "policy": self.policy,
                "org_domain": self.org_domain, "spf_aligned": self.spf_aligned,
                "dkim_aligned": self.dkim_aligned, "verdict": self.verdict,
                "reason": self.reason, "bulk_sender_ready": self.bulk_sender_ready,
                "fixes": list(self.fixes)}


def judge(facts: Facts) -> DmarcVerdict:
    """The verdict for ``facts`` (see the module docstring)."""
    found = facts.discovery
    record = found.record
    spf_ok, spf_lined_up, spf_why = _spf(facts, record)
    spf_aligned = spf_ok and spf_lined_up
    dkim_ok, dkim_aligned, dkim_why = _dkim(facts, record)
    if found.outcome == TEMPORARY:
        verdict, reason = TEMPORARY, found.reason
    elif found.outcome == NONE or record is None:
        verdict, reason = NONE, f"{found.reason}: receivers apply no DMARC policy"
    elif spf_aligned or dkim_aligned:
        verdict = PASS
        reason = " and ".join(why for ok, why in ((dkim_aligned, dkim_why),
                                                  (spf_aligned, spf_why)) if ok)
    else:
        temporary = any(c.result == "temperror" for c in facts.spf) or any(
            k.status == "temporary-failure" for k in facts.keys)
        verdict = TEMPORARY if temporary else FAIL
        reason = f"neither aligns: {dkim_why}; {spf_why}"
        if verdict == FAIL:
            reason += f"; receivers apply p={found.policy}"
            if record.pct < 100:
                reason += f" to {record.pct}% of it (pct={record.pct})"
    ready = verdict == PASS and spf_ok and dkim_ok
    fixes = _record_fixes(found) + _dkim_fixes(facts, record, dkim_aligned) + _spf_fixes(
        facts, record, spf_lined_up)
    return DmarcVerdict(
        domain=found.domain, record=found.text, policy=found.policy,
        org_domain=found.org_domain, spf_aligned=spf_aligned, dkim_aligned=dkim_aligned,
        verdict=verdict, reason=reason, bulk_sender_ready=ready,
        fixes=tuple(dict.fromkeys(fixes)),
    )


def _spf(facts: Facts, record: DmarcRecord | None) -> tuple[bool, bool, str]:
    """(SPF passes for every egress IP, the envelope domain aligns, why) (§3.1.2)."""
    domain, author = facts.envelope_domain, facts.discovery.domain
    mode = record.aspf if record else "r"
    lined_up = aligned(domain, author, mode == "s")
    if not facts.spf:
        return False, lined_up, "SPF not judged (no egress_ips)"
    failing = [c for c in facts.spf if c.result != PASS]
    if failing:
        said = ", ".join(f"{c.result} for {c.ip}" for c in failing)
        return False, lined_up, f"SPF of {domain} gives {said}"
    if not lined_up:
        return True, False, (f"SPF passes for {domain}, which does not align with {author} "
                             f"(aspf={mode})")
    ips = ", ".join(c.ip for c in facts.spf)
    return True, True, f"SPF aligned: {domain} passes for {ips} (aspf={mode})"


def _dkim(facts: Facts, record: DmarcRecord | None) -> tuple[bool, bool, str]:
    """(a signing key verifies, ... and its d= aligns, why)."""
    author = facts.discovery.domain
    mode = record.adkim if record else "r"
    if not facts.keys:
        return False, False, f"DKIM: the relay signs nothing for {author}"
    good = [k for k in facts.keys if k.status == "ok" and not k.testing]
    if not good:
        said = ", ".join(f"{k.dns_name} {k.status}" + (" (t=y)" if k.testing else "")
                         for k in facts.keys)
        return False, False, f"DKIM: no key verifies ({said})"
    for key in good:
        if aligned(key.domain, author, mode == "s"):
            return True, True, (f"DKIM aligned: {key.dns_name} signs as d={key.domain} "
                                f"(adkim={mode})")
    return True, False, (f"DKIM signs as d={good[0].domain}, which does not align with "
                         f"{author} (adkim={mode})")


def _record_fixes(found: Discovery) -> list[str]:
    if found.outcome == FOUND:
        return []
    if found.outcome == TEMPORARY:
        return [f"check that the name servers for {found.name} answer, then retry"]
    if found.text is not None:  # unusable
        return [f"fix the DMARC record at {found.name}: {found.reason.rsplit(': ', 1)[-1]}"]
    if found.name is not None:  # several
        return [f"keep a single DMARC record at {found.name}"]
    return [f'publish TXT "v=DMARC1; p=none" at _dmarc.{found.org_domain}']


def _dkim_fixes(facts: Facts, record: DmarcRecord | None, dkim_aligned: bool) -> list[str]:
    author = facts.discovery.domain
    strict = record is not None and record.adkim == "s"
    own = author if strict else facts.discovery.org_domain
    if not facts.keys:
        return [(f"sign for {own}: mxroute dkim keygen {own} SELECTOR, publish the record it "
                 "prints, add the key to dkim_keys")]
    fixes = [_key_fix(key) for key in facts.keys if key.status != "ok" or key.testing]
    if not dkim_aligned and any(k.status == "ok" and not k.testing for k in facts.keys):
        fixes.append((f"add a key for {author} to dkim_keys (adkim=s: d= must be {author} "
                      "itself)") if strict else f"add a key for {own} to dkim_keys")
    return fixes


def _key_fix(key: KeyStatus) -> str:
    name = key.dns_name
    if key.status == "missing":
        return f"publish the key for {name}"
    if key.status == "mismatch":
        if key.detail.startswith("the private key cannot be used"):
            return f"fix the key file for {name}: {key.detail.split(': ', 1)[-1]}"
        return f"publish this key's record at {name} (the published key is another one)"
    if key.status == "revoked":
        return f"publish the key for {name} (its p= is empty: revoked)"
    if key.status == "invalid":
        return f"fix the key record at {name}: {key.detail}"
    if key.status == "temporary-failure":
        return f"check that the name servers for {name} answer, then retry"
    return f"remove t=y from the key record at {name} (testing: receivers treat it as unsigned)"


def _spf_fixes(facts: Facts, record: DmarcRecord | None, lined_up: bool) -> list[str]:
    if not facts.spf:
        return [("set egress_ips (or --egress-ip) to the relay's sending addresses, so SPF can "
                 "be judged")]
    fixes = [c.fix for c in facts.spf if c.result != PASS and c.fix]
    if not lined_up:
        author = facts.discovery.domain
        if record is not None and record.aspf == "s":
            fixes.append(f"send with an envelope sender (MAIL FROM) at {author} itself (aspf=s)")
        else:
            fixes.append(f"send with an envelope sender (MAIL FROM) under "
                         f"{facts.discovery.org_domain}")
    return fixes
