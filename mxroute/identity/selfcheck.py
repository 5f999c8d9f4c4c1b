"""The sending-identity self-check while ``serve`` runs (SPF-10, SPF-12): warn, never refuse.

For each new sender domain seen in MAIL FROM, after its message is queued, a
background task asks what receivers will ask (``findings.py``): does the
domain's SPF pass each egress IP (RFC 7208 ``check_host``), and does each
egress IP have a forward-confirmed PTR matching ``helo_name`` (iprev, RFC 8601
§3)? Problems become ONE warning line per check, each with its stable code and
its fix. Nothing is ever refused or delayed (RFC 5321 §4.1.4 forbids refusing on
an EHLO mismatch; SPF-10's default action is warn and log).

Costs on the intake path: one dict lookup and one clock read per message while
the domain's verdict is cached, for the smallest TTL of the DNS answers the
check used (clamped to ``MIN_TTL`` .. ``MAX_TTL``), in a cache of at most
``MAX_DOMAINS`` domains (oldest dropped first). The PTR/HELO verdict belongs to
the egress IP, not to a domain: it is checked at start-up, re-checked when its
TTL runs out, and reported again only when it changes.

The SPF verdict is cached per domain although macros (``%{l}``) may make it
depend on the local part: a self-check is advice, and the first sender of a
domain stands for the rest. Log lines (stable, for log filters), from the logger
``mxroute.identity.selfcheck``:

- ``WARNING ...: identity: mail from DOMAIN: egress IP CODE: what; fix: how | ...``
- ``INFO ...: identity: mail from DOMAIN: egress IP spf-none|spf-neutral|spf-temperror: ...``

From: domains (issue 14 §3): the intake hands over each queued message's From: domain
(``observe_author``); the first message from a new one gets the DMARC verdict
(``identity.dmarc.assess``: SPF alignment for the egress IPs, DKIM alignment of the keys that
sign it), cached the same way in a cache of its own. Only ``fail`` warns:

- ``WARNING ...: identity: From: DOMAIN: dmarc-fail (p=POLICY): why; fix: how | ...``
- ``INFO ...: identity: From: DOMAIN: dmarc-none|dmarc-temporary-failure: why``
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from mxroute.dns.answer import Answer
from mxroute.dns.resolver import Resolver
from mxroute.identity.dmarc.assess import assess
from mxroute.identity.dmarc.orgdomain import load as load_suffixes
from mxroute.identity.findings import Finding, ptr_findings, spf_findings
from mxroute.identity.rdns import iprev
from mxroute.identity.spf.evaluate import check_host
from mxroute.settings import DkimKey, Settings
from mxroute.text import safe_text

log = logging.getLogger(__name__)

MIN_TTL = 60  # a verdict is kept at least this long, even when DNS says 0 or a lookup failed
MAX_TTL = 86400
DEFAULT_TTL = 3600  # when the check asked DNS nothing (the domain is not a host name)
MAX_DOMAINS = 4096
# What receivers act on: SPF fail/softfail/permerror (RFC 7208 §8.4, §8.5, §8.7) and a missing
# or mismatching FCrDNS. spf-none / spf-neutral / spf-temperror are logged at INFO.
WARN_SPF = frozenset({"spf-fail", "spf-softfail", "spf-permerror"})
_CHECKING = float("inf")  # marks a domain whose check runs: later messages start no second one


class Queued(Protocol):
    """A message the intake has queued, as the self-check sees it: its sender."""

    @property
    def sender(self) -> str: ...


MessageT = TypeVar("MessageT", bound=Queued)


class _TTLTracker:
    """The resolver as the SPF and iprev code see it, noting the smallest TTL of the answers."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.ttl: int | None = None

    async def lookup(self, name: str, qtype: str) -> Answer:
        answer = await self.resolver.lookup(name, qtype)
        self.ttl = answer.ttl if self.ttl is None else min(self.ttl, answer.ttl)
        return answer

    def lifetime(self) -> int:
        return max(MIN_TTL, min(MAX_TTL, DEFAULT_TTL if self.ttl is None else self.ttl))


class SelfCheck:
    """Per-domain SPF and per-IP PTR/HELO checks for ``serve``, cached, in the background."""

    def __init__(
        self, resolver: Resolver, egress_ips: list[str], helo: str, *,
        clock: Callable[[], float] = time.monotonic, max_domains: int = MAX_DOMAINS,
        dkim_keys: Sequence[DkimKey] = (),
    ) -> None:
        self.resolver = resolver
        self.egress_ips = list(egress_ips)
        self.helo = helo
        self.dkim_keys = list(dkim_keys)
        self.clock = clock
        self.max_domains = max_domains
        # domain -> when its verdict expires (_CHECKING while it runs)
        self._domains: dict[str, float] = {}
        self._authors: dict[str, float] = {}  # From: domain -> when its DMARC verdict expires
        self._ptr: dict[str, tuple[float, tuple[Finding, ...]]] = {}  # ip -> (expires, findings)
        self._ptr_said: dict[str, tuple[str, ...]] = {}  # ip -> the codes last logged
        self._ptr_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.checks = 0  # domain checks run (tests and metrics)
        self.author_checks = 0  # From: domain checks run

    @property
    def running(self) -> int:
        """How many checks run in the background now."""
        return len(self._tasks)

    def expiries(self) -> dict[str, float]:
        """The cached domains, oldest first, and when each verdict expires (inf: still checking)."""
        return dict(self._domains)

    def wrap(self, on_queued: Callable[[MessageT], None]) -> Callable[[MessageT], None]:
        """``on_queued`` (the queue's ``add``) followed by ``observe(meta.sender)``."""
        observe = self.observe

        def queued(meta: MessageT) -> None:
            on_queued(meta)
            observe(meta.sender)

        return queued

    def observe(self, sender: str) -> None:
        """Called for each queued message: the hot path, one lookup when the domain is known."""
        if not sender:  # null reverse-path (bounces): no sender domain to check
            return
        domain = sender[sender.rfind("@") + 1:]
        if self._claim(self._domains, domain):
            self._spawn(self._run(self._domains, domain, self.check(domain, sender)),
                        f"selfcheck-{domain[:64]}")

    def observe_author(self, sender: str, author: str | None) -> None:
        """Called for each queued message with its From: domain (None: no single one)."""
        if author and self._claim(self._authors, author):
            self._spawn(self._run(self._authors, author, self.check_author(author, sender)),
                        f"selfcheck-from-{author[:64]}")

    def start(self) -> None:
        """The PTR/HELO part at start-up (SPF-12), in the background."""
        self._spawn(self._startup(), "selfcheck-startup")

    def _claim(self, cache: dict[str, float], domain: str) -> bool:
        """True when ``domain`` needs a check now (then marked as checking), False if cached."""
        expires = cache.get(domain)
        if expires is not None and expires > self.clock():
            return False
        # re-insert at the end: the dict's order is the eviction order
        cache.pop(domain, None)
        while len(cache) >= self.max_domains:
            del cache[next(iter(cache))]
        cache[domain] = _CHECKING
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, cache: dict[str, float], domain: str,
                   check: Coroutine[Any, Any, int]) -> None:
        lifetime = MIN_TTL
        try:
            lifetime = await check
        except Exception as exc:  # noqa: BLE001  (a bug here must never touch mail: note it, retry after MIN_TTL)
            log.error("identity: self-check for %s failed: %r", domain, exc)
        if cache.get(domain) == _CHECKING:
            cache[domain] = self.clock() + lifetime

    async def _startup(self) -> None:
        await asyncio.to_thread(load_suffixes)  # the Public Suffix List, off the event loop
        try:
            problems = await self._ptr_problems()
        except Exception as exc:  # noqa: BLE001  (advice only: never let it touch mail)
            log.error("identity: PTR/HELO self-check failed: %r", exc)
            return
        if problems:
            log.warning("identity: at start-up: %s", " | ".join(problems))
        else:
            log.info("identity: PTR and HELO name of %s check out (%s)",
                     ", ".join(self.egress_ips), self.helo)

    async def check(self, domain: str, sender: str) -> int:
        """Check ``domain`` for every egress IP and log what is wrong.

        Returns how long the verdict holds, in seconds.
        """
        self.checks += 1
        log.debug("identity: checking mail from %s", domain)
        tracker = _TTLTracker(self.resolver)
        warnings: list[str] = []
        notes: list[str] = []
        for ip in self.egress_ips:
            result = await check_host(tracker, ip, domain, sender, helo=self.helo)
            for finding in spf_findings(result):
                (warnings if finding.code in WARN_SPF else notes).append(_line(ip, finding))
        warnings += await self._ptr_problems()
        if warnings:
            log.warning("identity: mail from %s: %s", domain, " | ".join(warnings))
        elif notes:
            log.info("identity: mail from %s: %s", domain, " | ".join(notes))
        else:
            log.debug("identity: mail from %s: SPF passes for %s",
                      domain, ", ".join(self.egress_ips))
        return tracker.lifetime()

    async def check_author(self, author: str, sender: str) -> int:
        """The DMARC verdict for mail From: ``author`` sent as ``sender``; warn on ``fail``.

        Returns how long the verdict holds, in seconds.
        """
        self.author_checks += 1
        log.debug("identity: checking mail From: %s", author)
        tracker = _TTLTracker(self.resolver)
        found = (await assess(tracker, author, sender=sender, egress_ips=self.egress_ips,
                              helo=self.helo, dkim_keys=self.dkim_keys)).verdict
        what = safe_text(found.reason, 1000)
        if found.verdict == "fail":
            log.warning("identity: From: %s: dmarc-fail (p=%s): %s; fix: %s", author,
                        found.policy, what, safe_text(" | ".join(found.fixes), 1000))
        elif found.verdict == "pass":
            log.debug("identity: From: %s: DMARC passes: %s", author, what)
        else:
            log.info("identity: From: %s: dmarc-%s: %s", author, found.verdict, what)
        return tracker.lifetime()

    async def _ptr_problems(self) -> list[str]:
        """PTR/HELO findings not yet reported (re-checked when their TTL has run out)."""
        out: list[str] = []
        async with self._ptr_lock:  # one check at a time: the first message's, not one per domain
            for ip in self.egress_ips:
                expires, findings = self._ptr.get(ip, (0.0, ()))
                if expires <= self.clock():
                    tracker = _TTLTracker(self.resolver)
                    findings = tuple(ptr_findings(await iprev(tracker, ip, self.helo), self.helo))
                    self._ptr[ip] = (self.clock() + tracker.lifetime(), findings)
                codes = tuple(finding.code for finding in findings)
                if codes != self._ptr_said.get(ip, ()):
                    self._ptr_said[ip] = codes
                    out += [_line(ip, finding) for finding in findings]
        return out


def _line(ip: str, finding: Finding) -> str:
    return f"egress {ip} {finding.code}: {finding.message}; fix: {finding.fix}"


def _unwatched(sender: str, author: str | None) -> None:
    """The intake's From: domain hook while the self-check is off."""


def watch(
    settings: Settings, resolver: Resolver, on_queued: Callable[[MessageT], None]
) -> tuple[Callable[[MessageT], None], Callable[[str, str | None], None]]:
    """The intake's two hooks: ``on_queued`` with the self-check behind it, and the From:
    domain hook (``SelfCheck.observe_author``); unchanged and a no-op when ``egress_ips`` is
    empty.

    Call inside the running event loop (``serve`` start-up): it schedules the PTR/HELO check.
    """
    if not settings.egress_ips:
        log.info("identity: self-check off: egress_ips is empty "
                 "(set it to be warned about SPF, PTR and DMARC problems)")
        return on_queued, _unwatched
    check = SelfCheck(resolver, settings.egress_ips, settings.helo_name,
                      dkim_keys=settings.dkim_keys)
    log.info("identity: self-check on for egress %s, HELO %s",
             ", ".join(settings.egress_ips), settings.helo_name)
    check.start()
    return check.wrap(on_queued), check.observe_author
