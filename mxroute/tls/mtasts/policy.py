"""MTA-STS, the pure part (RFC 8461; TLS-5, TLS-6, EXP-3): no asyncio, socket or ssl.

The ``_mta-sts`` TXT record (§3.1), the policy file (§3.2), MX pattern matching (§4.1), the
cache decision (§5.1) and what a policy makes of one MX host (§5). The I/O is in
``mtasts.fetch`` (the HTTPS fetch) and ``mtasts.store`` (the cache and the lookup).

Delivery (the courier) and ``explain`` apply the same ``Lookup`` through ``host_policy``.
TLSRPT (RFC 8460, §7.1 of RFC 8461) is not implemented: ``testing`` mode logs what
``enforce`` would have refused. DANE (RFC 7672), where it applies to a host, takes
precedence over MTA-STS (RFC 8461 §2; ``tls.host``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mxroute.tls import policy as tlspolicy
from mxroute.tls.policy import TlsPolicy

Mode = Literal["enforce", "testing", "none"]
MODES: tuple[Mode, ...] = ("enforce", "testing", "none")
MAX_AGE_LIMIT = 31557600  # §3.2: at most a year
SOURCE = "mta-sts"  # TlsPolicy.source of a host policy that came from MTA-STS

_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_POLICY_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*(.*)")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class PolicyError(ValueError):
    """A TXT record, policy file or fetch that yields no policy, and why."""


# --- §3.1 the TXT record -------------------------------------------------------------------------

def parse_txt(records: Iterable[str]) -> str | None:
    """The policy ``id`` of the one valid ``v=STSv1`` record among ``records``, else None.

    Records that do not begin with ``v=STSv1`` are discarded; anything but exactly one
    left, or one that is not valid, means no policy (§3.1).
    """
    candidates = [r.strip() for r in records if re.match(r"v=STSv1(?:[ \t;]|$)", r.strip())]
    if len(candidates) != 1:
        return None
    fields = [f.strip(" \t") for f in candidates[0].split(";")]
    if fields and fields[-1] == "":  # one trailing ";" is allowed
        fields.pop()
    if not fields or fields[0] != "v=STSv1":
        return None
    found: dict[str, str] = {}
    for item in fields[1:]:
        match = _TXT_FIELD.fullmatch(item)
        if match is None:
            return None
        found.setdefault(match.group(1), match.group(2))
    txt_id = found.get("id")
    return txt_id if txt_id is not None and _TXT_ID.fullmatch(txt_id) else None


# --- §3.2 the policy file, §4.1 MX matching ------------------------------------------------------

def mx_matches(pattern: str, host: str) -> bool:
    """Does MX ``host`` match ``pattern`` (§4.1)? ``*.`` covers exactly one leftmost label."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def _mx_pattern(value: str) -> str:
    text = value.strip().lower().rstrip(".")
    name = text.removeprefix("*.")
    labels = name.split(".")
    if not name or not all(_LABEL.fullmatch(label) for label in labels):
        raise PolicyError(f"mx {value!r} is not a host name or *.domain pattern")
    return text


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """A valid policy (§3.2): its mode, mx patterns and lifetime in seconds."""

    mode: Mode
    mx: tuple[str, ...]
    max_age: int

    def match(self, host: str) -> str | None:
        """The first mx pattern ``host`` matches, or None."""
        return next((p for p in self.mx if mx_matches(p, host)), None)

    def verdict(self, host: str) -> tuple[bool, str]:
        """May delivery use MX ``host`` (§5), and why? Only ``enforce`` refuses."""
        if self.mode == "none":
            return True, "mode none: no MTA-STS restriction"
        pattern = self.match(host)
        if pattern is not None:
            return True, f"matches {pattern}"
        why = f"{host} matches no mx pattern of the MTA-STS policy"
        if self.mode == "enforce":
            return False, why
        return True, f"{why} (testing: delivered anyway)"

    def to_text(self) -> str:
        lines = ["version: STSv1", f"mode: {self.mode}", *(f"mx: {p}" for p in self.mx),
                 f"max_age: {self.max_age}"]
        return "\r\n".join(lines) + "\r\n"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "mx": list(self.mx), "max_age": self.max_age}


def parse_policy(text: str) -> StsPolicy:
    """The policy in ``text`` (CRLF or LF lines of ``key: value``), or PolicyError (§3.2).

    Unknown keys are ignored; of a repeated key other than ``mx`` the first counts.
    """
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r").rstrip(" \t")
        if not line:
            continue
        match = _POLICY_FIELD.fullmatch(line)
        if match is None:
            raise PolicyError(f"not a 'key: value' line: {line[:60]!r}")
        key, value = match.group(1), match.group(2)
        if key == "mx":
            mx.append(_mx_pattern(value))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r} is not enforce, testing or none")
    age = fields.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", age) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {age!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx pattern")
    return StsPolicy(mode, tuple(mx), int(age))


# --- §5.1 the cache ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cached:
    """A policy as fetched for TXT ``id`` at ``fetched`` (seconds since the epoch)."""

    id: str
    policy: StsPolicy
    fetched: float

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def fresh(self, now: float) -> bool:
        return now < self.expires

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "policy": self.policy.to_text(), "fetched": self.fetched}

    @classmethod
    def from_json(cls, body: Any) -> Cached:
        """An entry of the store, validated as a fetched policy is (PolicyError if not)."""
        try:
            txt_id, text, fetched = body["id"], body["policy"], float(body["fetched"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"malformed cache entry: {exc!r}") from None
        if not (isinstance(txt_id, str) and _TXT_ID.fullmatch(txt_id) and isinstance(text, str)):
            raise PolicyError("malformed cache entry")
        return cls(txt_id, parse_policy(text), fetched)


Action = Literal["cache", "fetch", "none"]


def decide(txt_id: str | None, cached: Cached | None, now: float) -> Action:
    """Use the cached policy, fetch one, or apply none (§3.3, §5.1).

    A TXT id with no fresh policy of that id: fetch. No usable TXT record (absent,
    invalid or a DNS failure): an unexpired cached policy still applies (§5.1: "if no
    live policy can be discovered ... the sender MUST apply that cached policy").
    """
    fresh = cached is not None and cached.fresh(now)
    if txt_id is None:
        return "cache" if fresh else "none"
    if fresh and cached is not None and cached.id == txt_id:
        return "cache"
    return "fetch"


def after_failed_fetch(cached: Cached | None, now: float) -> Action:
    """A fetch failed: an unexpired cached policy applies, else none (§5.1)."""
    return "cache" if cached is not None and cached.fresh(now) else "none"


# --- the result of a lookup, and what it makes of one MX host ------------------------------

TxtState = Literal["found", "absent", "invalid", "temporary-failure"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """The MTA-STS state of a destination, as delivery applies it and ``explain`` shows it."""

    domain: str
    txt: TxtState
    txt_id: str | None
    entry: Cached | None  # the policy that applies (None: no policy)
    source: Literal["fetched", "cache", "none"]
    now: float
    error: str | None = None  # why a fetch failed

    @property
    def policy(self) -> StsPolicy | None:
        return self.entry.policy if self.entry else None

    def describe(self) -> str:
        """One line for explain's summary and the logs."""
        if self.policy is None:
            why = f"; fetch failed: {self.error}" if self.error else ""
            return f"no policy (TXT {self.txt}{why})"
        assert self.entry is not None
        age = self.now - self.entry.fetched
        where = "fetched now" if self.source == "fetched" else f"cached {age:.0f}s ago"
        failed = f"; fetch failed: {self.error}" if self.error else ""
        return (f"{self.policy.mode}, mx {', '.join(self.policy.mx) or '-'}, id {self.entry.id}, "
                f"max_age {self.policy.max_age} ({where})" + failed)

    def to_json(self, exchanges: Sequence[str], base: TlsPolicy) -> dict[str, Any]:
        """explain's ``mta_sts`` member (EXP-3); ``base``: the domain's policy without MTA-STS."""
        entry = self.entry
        body: dict[str, Any] = {
            "applied": True, "txt": self.txt, "txt_id": self.txt_id, "source": self.source,
            "policy": entry.policy.to_json() if entry else None,
            "policy_id": entry.id if entry else None,
            "age": round(self.now - entry.fetched, 1) if entry else None,
            "expires_in": round(entry.expires - self.now, 1) if entry else None,
            "error": self.error, "hosts": [],
        }
        for exchange in dict.fromkeys(exchanges):
            policy, refusal = host_policy(self, exchange, base)
            body["hosts"].append({"exchange": exchange, "eligible": refusal is None,
                                  "tls": policy.level if refusal is None else None,
                                  "reason": refusal or _eligible_text(self, exchange)})
        return body


def _eligible_text(lookup: Lookup, exchange: str) -> str:
    policy = lookup.policy
    if policy is None:
        return "no MTA-STS policy"
    why = policy.verdict(exchange)[1]
    if policy.mode == "enforce":
        return f"{why}: STARTTLS with a PKIX-valid certificate for {exchange} required"
    return why


def skip_reason(enabled: bool, domain: str, tls: TlsPolicy, *, deliverable: bool) -> str | None:
    """Why MTA-STS is not consulted for mail to ``domain``, or None when it is.

    ``enabled``: the setting ``mta_sts``; ``tls``: the domain's policy; ``deliverable``: routing
    found hosts to try. Off with ``mta_sts = false``; only for a deliverable route to a domain
    (not an address literal); and an admin's ``tls_policy_domains`` entry wins, as Postfix's
    policy table wins over a policy resolver. Delivery and ``explain`` both ask this.
    """
    if not enabled:
        return "mta_sts = false"
    if not deliverable:
        return "the route is not deliverable"
    if domain.startswith("["):
        return "an address literal has no MTA-STS policy"
    if tls.source == tlspolicy.ROUTES_SOURCE:  # issue 16: MTA-STS names MX hosts, not a next hop
        return f"routes {tls.match} sends the mail to a configured next hop, not to the MX"
    if tls.source != tlspolicy.DEFAULT_SOURCE:
        return f"tls_policy_domains entry {tls.match} takes precedence"
    return None


def host_policy(
    lookup: Lookup | None, exchange: str, base: TlsPolicy,
) -> tuple[TlsPolicy, str | None]:
    """The TLS policy for MX ``exchange`` under ``lookup``, or the 4.7.5 reply refusing it (TLS-6).

    ``enforce``: a matching host must pass ``verify`` (PKIX, the MX name, SNI = the MX
    name, §4.1-4.2); a host matching no pattern is not used (§5). ``testing``, ``none``,
    no policy: ``base`` unchanged (``testing`` is logged by the caller, §5).
    """
    policy = lookup.policy if lookup else None
    if lookup is None or policy is None or policy.mode != "enforce":
        return base, None
    ok, why = policy.verdict(exchange)
    if not ok:
        return base, f"451 {tlspolicy.STATUS} MTA-STS policy of {lookup.domain} (enforce): {why}"
    return TlsPolicy("verify", SOURCE, policy.match(exchange)), None


def audited(lookup: Lookup | None, exchange: str) -> Lookup | None:
    """``lookup`` when delivery to ``exchange`` should check TLS as ``enforce`` would, only to
    log it.

    That is a ``testing`` policy and a host matching its patterns (§5: "testing" senders
    deliver as usual and report what failed; TLSRPT itself is not implemented).
    """
    policy = lookup.policy if lookup else None
    if lookup is None or policy is None or policy.mode != "testing":
        return None
    return lookup if policy.match(exchange) is not None else None


def testing_refusal(lookup: Lookup, exchange: str, why: str) -> str:
    """The log text for a TLS failure that ``enforce`` would have refused (TLS-6 testing)."""
    return f"MTA-STS policy of {lookup.domain} (testing): {why}; enforce would refuse it"


def testing_note(lookup: Lookup | None, exchange: str) -> str | None:
    """What ``enforce`` would have refused for ``exchange`` under a ``testing`` policy, or None."""
    policy = lookup.policy if lookup else None
    if lookup is None or policy is None or policy.mode != "testing":
        return None
    if policy.match(exchange) is None:
        return (f"MTA-STS policy of {lookup.domain} (testing): {exchange} matches no mx pattern; "
                "enforce would skip it")
    return None


__all__ = [
    "MAX_AGE_LIMIT", "MODES", "SOURCE", "Action", "Cached", "Lookup", "Mode", "PolicyError",
    "StsPolicy", "TxtState", "after_failed_fetch", "audited", "decide", "host_policy",
    "mx_matches", "parse_policy", "parse_txt", "skip_reason", "testing_note", "testing_refusal",
]
