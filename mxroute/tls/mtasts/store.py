"""MTA-STS policies per destination domain, kept in memory and on disk (RFC 8461 §5.1, §10.1).

``MtaSts.lookup`` asks the shared resolver for the ``_mta-sts`` TXT record, fetches the policy
(``mtasts.fetch``) when the cache decision (``mtasts.policy.decide``) says so, and keeps the
policies in ``<spool_dir>/mta-sts.json`` so a restart keeps them (TLS-5).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from mxroute.dns.answer import Answer, Outcome
from mxroute.dns.resolver import Resolver
from mxroute.tls.mtasts.fetch import Reach, fetch_policy
from mxroute.tls.mtasts.policy import (
    Cached,
    Lookup,
    PolicyError,
    TxtState,
    after_failed_fetch,
    decide,
    parse_txt,
)

log = logging.getLogger(__name__)

FAILED_FETCH_PAUSE = 60.0  # a failed fetch is not repeated for the same id sooner (§3.3)
CACHE_LIMIT = 10000  # domains kept; the least recently fetched go first
STORE_NAME = "mta-sts.json"  # under spool_dir


class MtaSts:
    """Per-domain MTA-STS policies: TXT through the shared resolver, fetch when needed, cache.

    One per delivery process (and one per ``explain`` run, which reads the store but never
    writes it). Concurrent lookups of one domain share one fetch. ``reach`` (where a fetch may
    connect) and ``resolver`` are attributes so a reload can replace them.
    """

    def __init__(
        self, reach: Reach, resolver: Resolver, *, store: Path | None = None,
        persist: bool = True, clock: Callable[[], float] = time.time,
    ) -> None:
        self.reach = reach
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

    def sharing(self, resolver: Resolver) -> MtaSts:
        """A view asking through ``resolver``, sharing this one's policies, failed fetches and
        fetches in flight (bulk ``explain``: one fetch per domain, each address's own trace)."""
        view = copy.copy(self)
        view.resolver = resolver
        return view

    def cached(self, domain: str) -> Cached | None:
        return self._cache.get(domain)

    def forget_failures(self) -> None:
        """Fetch again at the next lookup, without the pause after a failed fetch
        (``queue flush``)."""
        self._failed.clear()

    def snapshot(self) -> dict[str, int]:
        """Counters and the number of policies held (metrics)."""
        return {**self.stats, "policies": len(self._cache)}

    async def lookup(self, domain: str) -> Lookup:
        """The MTA-STS state of ``domain`` now (TLS-5): cached, fetched, or no policy."""
        # every caller asks for the TXT record (the resolver coalesces and caches it), so each
        # one's trace shows it, also when it then joins a lookup already in flight
        answer = await self.resolver.lookup(f"_mta-sts.{domain}", "TXT")
        pending = self._inflight.get(domain)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._inflight[domain] = future
        try:
            result = await self._lookup(domain, answer)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._inflight[domain]

    async def _lookup(self, domain: str, answer: Answer) -> Lookup:
        txt, txt_id = _txt(answer)
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
        self.stats["fetches"] += 1
        try:
            policy = await fetch_policy(self.resolver, domain, self.reach)
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
            text = json.dumps(body, separators=(",", ":"))
            await asyncio.to_thread(_write, self.store, text)


def _txt(answer: Answer) -> tuple[TxtState, str | None]:
    """What the ``_mta-sts`` TXT answer says (§3.1): its state and the policy id, if one."""
    if answer.outcome is Outcome.RECORDS:
        records = [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer.rrs]
        txt_id = parse_txt(records)
        return ("found" if txt_id else "invalid"), txt_id
    if answer.outcome.temporary:
        return "temporary-failure", None
    return "absent", None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("MTA-STS cache %s not written: %s", path, exc.strerror or exc)


__all__ = ["CACHE_LIMIT", "FAILED_FETCH_PAUSE", "STORE_NAME", "MtaSts"]
