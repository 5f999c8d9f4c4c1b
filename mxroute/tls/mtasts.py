"""MTA-STS, RFC 8461 (TLS-5 discovery and caching, TLS-6 enforcement, EXP-3).

Pure parts first: the ``_mta-sts`` TXT record (§3.1), the policy file (§3.2), MX
pattern matching (§4.1), the cache decision (§5.1) and what a policy makes of one MX
host (§5). Then the I/O edge: ``MtaSts.lookup`` asks the shared resolver for the TXT
record, fetches ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` when the cache
says so (PKIX-validated for ``mta-sts.<domain>``, HTTP 200 only, no redirects,
``text/plain``, 64 KiB, one total timeout; §3.3) and keeps policies per domain in
memory and in ``<spool_dir>/mta-sts.json`` so a restart keeps them (§5.1, §10.1).

Delivery (``courier.py``) and ``explain`` call the same ``lookup`` and ``host_policy``.
TLSRPT (RFC 8460, §7.1 of RFC 8461) is not implemented: ``testing`` mode logs what
``enforce`` would have refused. DANE (RFC 7672), where it applies to a host, takes
precedence over MTA-STS (RFC 8461 §2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mxroute.dns.resolver import Outcome, Resolver
from mxroute.routing.plan import Plan, blocked
from mxroute.tls import policy as tlspolicy
from mxroute.tls.policy import TlsPolicy

log = logging.getLogger(__name__)

Mode = Literal["enforce", "testing", "none"]
MODES: tuple[Mode, ...] = ("enforce", "testing", "none")
MAX_AGE_LIMIT = 31557600  # §3.2: at most a year
MAX_POLICY_BYTES = 64 * 1024  # §3.3: "a maximum size of 64 KiB" is suggested
MAX_HEADER_BYTES = 16 * 1024
FETCH_TIMEOUT = 20.0  # seconds for the whole fetch: DNS, connect, TLS, request, response (§3.3)
FAILED_FETCH_PAUSE = 60.0  # a failed fetch is not repeated for the same id sooner (§3.3 rate limiting)
CACHE_LIMIT = 10000  # domains kept; the least recently fetched go first
STORE_NAME = "mta-sts.json"  # under spool_dir
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
        return (False, why) if self.mode == "enforce" else (True, f"{why} (testing: delivered anyway)")

    def to_text(self) -> str:
        lines = ["version: STSv1", f"mode: {self.mode}", *(f"mx: {p}" for p in self.mx), f"max_age: {self.max_age}"]
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
        if not isinstance(txt_id, str) or not _TXT_ID.fullmatch(txt_id) or not isinstance(text, str):
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


# --- the result of a lookup, and what it makes of one MX host --------------------------------------

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
        where = "fetched now" if self.source == "fetched" else f"cached {self.now - self.entry.fetched:.0f}s ago"
        return (f"{self.policy.mode}, mx {', '.join(self.policy.mx) or '-'}, id {self.entry.id}, "
                f"max_age {self.policy.max_age} ({where})" + (f"; fetch failed: {self.error}" if self.error else ""))

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


def skip_reason(enabled: bool, plan: Plan, tls: TlsPolicy) -> str | None:
    """Why MTA-STS is not consulted for ``plan``'s destination, or None when it is.

    Off with ``mta_sts = false``; only for a deliverable route to a domain (not an address
    literal); and an admin's ``tls_policy_domains`` entry wins, as Postfix's policy table
    wins over a policy resolver. Delivery and ``explain`` both ask this.
    """
    if not enabled:
        return "mta_sts = false"
    if not plan.deliverable:
        return "the route is not deliverable"
    if plan.domain.startswith("["):
        return "an address literal has no MTA-STS policy"
    if tls.source != tlspolicy.DEFAULT_SOURCE:
        return f"tls_policy_domains entry {tls.match} takes precedence"
    return None


def host_policy(lookup: Lookup | None, exchange: str, base: TlsPolicy) -> tuple[TlsPolicy, str | None]:
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
    """``lookup`` when delivery to ``exchange`` should check TLS as ``enforce`` would, only to log it.

    That is a ``testing`` policy and a host matching its patterns (§5: "testing" senders
    deliver as usual and report what failed; TLSRPT itself is not implemented).
    """
    policy = lookup.policy if lookup else None
    if lookup is None or policy is None or policy.mode != "testing" or policy.match(exchange) is None:
        return None
    return lookup


def testing_refusal(lookup: Lookup, exchange: str, why: str) -> str:
    """The log text for a TLS failure that ``enforce`` would have refused (TLS-6 testing)."""
    return f"MTA-STS policy of {lookup.domain} (testing): {why}; enforce would refuse it"


def testing_note(lookup: Lookup | None, exchange: str) -> str | None:
    """What ``enforce`` would have refused for ``exchange`` under a ``testing`` policy, or None."""
    policy = lookup.policy if lookup else None
    if lookup is None or policy is None or policy.mode != "testing":
        return None
    if policy.match(exchange) is None:
        return f"MTA-STS policy of {lookup.domain} (testing): {exchange} matches no mx pattern; enforce would skip it"
    return None


# --- §3.3 the HTTPS fetch (I/O) ------------------------------------------------------------------

async def fetch_policy(
    resolver: Resolver, domain: str, *, port: int = 443, ca_file: Path | None = None,
    families: Sequence[int] = (6, 4), allow_private: bool = False, timeout: float = FETCH_TIMEOUT,
) -> StsPolicy:
    """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and parse it, or PolicyError (§3.3)."""
    try:
        return await asyncio.wait_for(_fetch(resolver, domain, port, ca_file, families, allow_private), timeout)
    except TimeoutError:
        raise PolicyError(f"no policy from mta-sts.{domain} within {timeout:g}s") from None


async def _fetch(
    resolver: Resolver, domain: str, port: int, ca_file: Path | None, families: Sequence[int], allow_private: bool,
) -> StsPolicy:
    host = f"mta-sts.{domain}"
    addresses: list[str] = []
    for family in families:
        answer = await resolver.lookup(host, "A" if family == 4 else "AAAA")
        addresses.extend(rr.address for rr in answer.rrs if answer.outcome is Outcome.RECORDS)
    if not addresses:
        raise PolicyError(f"{host} has no address")
    context = tlspolicy.verify_context(ca_file)
    context.set_alpn_protocols(["http/1.1"])
    problems: list[str] = []
    for address in addresses[:4]:
        why = None if allow_private else blocked(ipaddress.ip_address(address))
        if why:
            problems.append(f"{address}: {why}")
            continue
        try:
            reader, writer = await asyncio.open_connection(address, port, ssl=context, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, certificate not valid for host
            problems.append(f"{address}: {getattr(exc, 'verify_message', None) or exc.strerror or exc}")
            continue
        try:
            writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mxroute\r\n"
                         "Accept: text/plain\r\nConnection: close\r\n\r\n".encode("ascii"))
            await writer.drain()
            body = await _response(reader)
        except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            problems.append(f"{address}: {type(exc).__name__}: {exc}")
            continue
        finally:
            writer.close()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"policy from {host} is not UTF-8 text") from None
        return parse_policy(text)
    raise PolicyError(f"cannot reach {host}: " + "; ".join(problems))


async def _response(reader: asyncio.StreamReader) -> bytes:
    """The body of a 200 ``text/plain`` response of at most MAX_POLICY_BYTES; else PolicyError."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise PolicyError("response header too large") from None
    if len(head) > MAX_HEADER_BYTES:
        raise PolicyError("response header too large")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1."):
        raise PolicyError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    if status[1] != "200":  # §3.3: 200 only; a redirect (3xx) is never followed
        raise PolicyError(f"HTTP status {' '.join(status[1:])[:60]} (only 200 is a policy)")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise PolicyError(f"Content-Type {media or 'missing'!r} is not text/plain")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _chunked(reader)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy of {length} bytes is over the {MAX_POLICY_BYTES}-byte limit")
        return await reader.readexactly(int(length))
    body = await reader.read(MAX_POLICY_BYTES + 1)
    while body and len(body) <= MAX_POLICY_BYTES:
        more = await reader.read(MAX_POLICY_BYTES + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy over the {MAX_POLICY_BYTES}-byte limit")
    return body


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    for _ in range(MAX_POLICY_BYTES + 1):  # each chunk at least a byte: bounded
        size_line = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise PolicyError("malformed chunked response") from None
        if size == 0:
            return body
        if len(body) + size > MAX_POLICY_BYTES:
            raise PolicyError(f"policy over the {MAX_POLICY_BYTES}-byte limit")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    raise PolicyError("malformed chunked response")


# --- the cache and the lookup (I/O) --------------------------------------------------------------

class MtaSts:
    """Per-domain MTA-STS policies: TXT through the shared resolver, fetch when needed, cache.

    One per delivery process (and one per ``explain`` run, which reads the store but never
    writes it). Concurrent lookups of one domain share one fetch. ``settings`` and
    ``resolver`` are attributes so a reload can replace them.
    """

    def __init__(
        self, settings: Any, resolver: Resolver, *, store: Path | None = None, persist: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.store = store
        self.persist = persist and store is not None
        self.clock = clock
        self._cache: OrderedDict[str, Cached] = OrderedDict()
        self._failed: dict[str, tuple[str, float, str]] = {}  # domain -> (txt id, retry after, why)
        self._inflight: dict[str, asyncio.Future[Lookup]] = {}
        self.stats = {"fetches": 0, "fetch_failures": 0}
        self._saving: asyncio.Lock | None = None  # made in the event loop that saves
        if store is not None:
            self._load(store)

    def cached(self, domain: str) -> Cached | None:
        return self._cache.get(domain)

    def forget_failures(self) -> None:
        """Fetch again at the next lookup, without the pause after a failed fetch (``queue flush``)."""
        self._failed.clear()

    def snapshot(self) -> dict[str, int]:
        """Counters and the number of policies held (metrics)."""
        return {**self.stats, "policies": len(self._cache)}

    async def lookup(self, domain: str) -> Lookup:
        """The MTA-STS state of ``domain`` now (TLS-5): cached, fetched, or no policy."""
        pending = self._inflight.get(domain)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._inflight[domain] = future
        try:
            result = await self._lookup(domain)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._inflight[domain]

    async def _lookup(self, domain: str) -> Lookup:
        answer = await self.resolver.lookup(f"_mta-sts.{domain}", "TXT")
        txt: TxtState
        txt_id = None
        if answer.outcome is Outcome.RECORDS:
            records = [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer.rrs]
            txt_id = parse_txt(records)
            txt = "found" if txt_id else "invalid"
        elif answer.outcome.temporary:
            txt = "temporary-failure"
        else:
            txt = "absent"
        now = self.clock()
        entry = self._cache.get(domain)
        if entry is not None and not entry.fresh(now):
            del self._cache[domain]
            entry = None
        action = decide(txt_id, entry, now)
        if action == "cache":
            return Lookup(domain, txt, txt_id, entry, "cache", now)
        if action == "none" or txt_id is None:
            return Lookup(domain, txt, txt_id, None, "none", now)
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == txt_id and failed[1] > now:
            error = f"{failed[2]} (not retried for another {failed[1] - now:.0f}s)"
        else:
            problem = await self._fetch(domain, txt_id, now)
            if problem is None:
                return Lookup(domain, txt, txt_id, self._cache[domain], "fetched", now)
            error = problem
        if after_failed_fetch(entry, now) == "cache":
            return Lookup(domain, txt, txt_id, entry, "cache", now, error)
        return Lookup(domain, txt, txt_id, None, "none", now, error)

    async def _fetch(self, domain: str, txt_id: str, now: float) -> str | None:
        """Fetch and cache the policy of ``domain``; None, or why it failed."""
        from mxroute.routing.route import policy_from_settings

        s = self.settings
        self.stats["fetches"] += 1
        try:
            policy = await fetch_policy(self.resolver, domain, port=s.mta_sts_port, ca_file=s.tls_ca_file,
                                        families=policy_from_settings(s).families,
                                        allow_private=s.allow_private_destinations)
        except PolicyError as exc:
            self.stats["fetch_failures"] += 1
            why = str(exc)
            if len(self._failed) >= CACHE_LIMIT:
                self._failed.clear()
            self._failed[domain] = (txt_id, now + FAILED_FETCH_PAUSE, why)
            log.warning("MTA-STS policy of %s (id %s): fetch failed: %s", domain, txt_id, why)
            return why
        self._failed.pop(domain, None)
        self._cache.pop(domain, None)
        self._cache[domain] = Cached(txt_id, policy, now)
        while len(self._cache) > CACHE_LIMIT:
            self._cache.popitem(last=False)
        log.info("MTA-STS policy of %s: id %s, mode %s, mx %s, max_age %d (TLS-5)",
                 domain, txt_id, policy.mode, ",".join(policy.mx) or "-", policy.max_age)
        if self.persist:
            await self._save()
        return None

    def _load(self, path: Path) -> None:
        """Read the store; a missing file is an empty cache, a bad one is logged and ignored."""
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            entries = body["policies"] if isinstance(body, dict) else None
            if not isinstance(entries, dict):
                raise TypeError("no 'policies' object")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("MTA-STS cache %s ignored: %s", path, exc)
            return
        now = self.clock()
        for domain, item in list(entries.items())[-CACHE_LIMIT:]:
            try:
                entry = Cached.from_json(item)
            except PolicyError:
                continue
            if isinstance(domain, str) and entry.fresh(now):
                self._cache[domain] = entry

    async def _save(self) -> None:
        """Write the store atomically (a temporary file renamed over it), one write at a time,
        off the event loop; failures are logged (the policies stay in memory)."""
        assert self.store is not None
        if self._saving is None:
            self._saving = asyncio.Lock()
        async with self._saving:
            body = {"version": 1, "policies": {d: e.to_json() for d, e in self._cache.items()}}
            await asyncio.to_thread(self._write, self.store, json.dumps(body, separators=(",", ":")))

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("MTA-STS cache %s not written: %s", path, exc.strerror or exc)


__all__ = [
    "Cached", "Lookup", "MtaSts", "PolicyError", "StsPolicy", "after_failed_fetch", "audited", "decide",
    "fetch_policy", "host_policy", "mx_matches", "parse_policy", "parse_txt", "skip_reason", "testing_note", "testing_refusal",
]
