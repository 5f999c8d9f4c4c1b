"""Bulk `mxroute explain --json -` / `--file F` (issue 16 §4): many addresses, one resolver.

Reads one address per line and writes one JSON object per line, in input order: for an address,
exactly the object a single ``explain --json`` prints (``run_explain``, the same code); for a line
that is not an address, an error object ``{"address", "line", "status": "error", "error"}``.
Blank lines and lines starting with ``#`` are skipped. Up to ``explain_concurrency`` addresses
are resolved at once over one shared resolver (its cache and coalescing ask each DNS question
once for the whole run); input is read in chunks and output waits in a bounded reorder window, so
memory does not grow with the length of the input.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from mxroute.address import Address, parse_address
from mxroute.cli.explain import mta_sts_store, run_explain
from mxroute.dns.resolver import Resolver
from mxroute.errors import EX_OK, AddressError
from mxroute.settings import Settings

CHUNK = 65536  # bytes read at a time
MAX_LINE = 1024  # longer than any address (RFC 5321 §4.5.3.1.3: a path is at most 256 octets)
SHOWN = 80  # characters of an over-long line kept in its error object
WINDOW_PER_SLOT = 8  # finished lines that may wait for an earlier one, per concurrent address
# answers a bulk run keeps at least (dns_cache_size if larger): a list's domains stay cached to
# its end, so each question is asked once; memory grows with distinct questions, never lines
BULK_CACHE_SIZE = 200_000


@dataclass
class Summary:
    """What the run did: the stderr summary line."""

    addresses: int = 0
    malformed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("deliverable", "permanent-failure", "temporary-failure"), 0))
    domains: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def line(self, resolver: Resolver) -> str:
        stats = resolver.stats
        rate = self.addresses / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.addresses} addresses ({self.malformed} malformed), "
                f"{len(self.domains)} domains, {stats.queries} DNS queries "
                f"({stats.hits} cache hits, {stats.coalesced} coalesced); "
                f"deliverable {self.counts['deliverable']}, "
                f"permanent {self.counts['permanent-failure']}, "
                f"temporary {self.counts['temporary-failure']}; "
                f"{self.seconds:.2f} s, {rate:.0f} addresses/s")


@dataclass(frozen=True)
class Options:
    """The per-address options of ``run_explain``, the same for every line."""

    seed: int | None = None
    egress_ips: tuple[str, ...] = ()
    sender: str | None = None
    helo: str | None = None
    probe: bool = False
    author: Address | None = None


async def run_bulk(fd: int, write: Callable[[str], object], settings: Settings,
                   resolver: Resolver, options: Options) -> Summary:
    """Explain every address read from ``fd``; ``write`` each result line, in input order.

    A line is written as soon as it and every line before it are done; at most
    ``explain_concurrency`` addresses are resolved at once, and at most
    ``WINDOW_PER_SLOT`` times as many lines wait to be written.
    """
    summary = Summary()
    started = time.perf_counter()
    sts = mta_sts_store(settings, resolver)  # one per run: each policy fetched once
    slots = asyncio.Semaphore(settings.explain_concurrency)
    window: asyncio.Queue[asyncio.Future[str] | str | None] = asyncio.Queue(
        settings.explain_concurrency * WINDOW_PER_SLOT)

    async def one(address: Address) -> str:
        async with slots:
            report = await run_explain(
                address, settings, resolver.sharing(), seed=options.seed,
                egress_ips=options.egress_ips, sender=options.sender, helo=options.helo,
                probe=options.probe, author=options.author, sts=sts)
        summary.counts[report.plan.verdict.value] += 1
        return json.dumps(report.to_json(), ensure_ascii=False)

    failed: list[BaseException] = []  # what stopped the writer (stdout closed): the run ends

    async def writer() -> None:
        while (item := await window.get()) is not None:
            if failed:
                continue  # drain, so the reader never waits on a full window
            try:
                write((item if isinstance(item, str) else await item) + "\n")
            except Exception as exc:  # noqa: BLE001 -- re-raised by the reader below
                failed.append(exc)

    writing = asyncio.ensure_future(writer())
    try:
        async for number, text, problem in _lines(fd):
            if failed:
                break
            if problem is None and (not text or text.startswith("#")):
                continue  # blank lines and comments
            summary.addresses += 1
            try:
                if problem is not None:
                    raise AddressError(problem)
                address = parse_address(text)
            except AddressError as exc:
                summary.malformed += 1
                await window.put(_error(number, text, exc.message))
                continue
            summary.domains.add(address.domain)
            await window.put(asyncio.ensure_future(one(address)))
        await window.put(None)
        await writing
    finally:
        writing.cancel()
    if failed:
        raise failed[0]
    summary.seconds = time.perf_counter() - started
    return summary


def bulk_command(args: Any, settings: Settings, resolver: Resolver,
                 usage: Callable[[str], Exception]) -> int:
    """``explain --json -`` / ``--file FILE``: every line evaluated, exit 0; the summary on
    stderr. ``usage`` makes the exception for a bad argument (exit 64)."""
    if args.file is not None and args.address is not None:
        raise usage("give ADDRESS, - (stdin) or --file FILE, not both")
    if not args.json:
        raise usage("reading addresses from stdin or --file needs --json (one object per line)")
    resolver.cache_size = max(resolver.cache_size, BULK_CACHE_SIZE)
    recorder = None
    if args.record:
        from mxroute.dns.zonefile import Recorder

        recorder = Recorder()
        resolver.observers.append(recorder)
    options = Options(seed=args.seed, egress_ips=tuple(args.egress_ip), sender=args.sender,
                      helo=args.helo, probe=args.probe, author=args.author)
    try:
        import uvloop  # optional, as for serve: a faster event loop when installed

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.file is None:
        summary = runner(run_bulk(sys.stdin.fileno(), sys.stdout.write, settings, resolver,
                                  options))
    else:
        try:
            handle = open(args.file, "rb")  # noqa: SIM115 -- closed below
        except OSError as exc:
            raise usage(f"cannot read {args.file}: {exc.strerror or exc}") from None
        with handle:
            summary = runner(run_bulk(handle.fileno(), sys.stdout.write, settings, resolver,
                                      options))
    sys.stdout.flush()
    print(f"mxroute explain: {summary.line(resolver)}", file=sys.stderr)
    if recorder is not None:
        try:
            with open(args.record, "w", encoding="utf-8") as out:
                out.write(recorder.zone_text(f"explain {args.file or '-'}"))
        except OSError as exc:
            raise usage(f"cannot write {args.record}: {exc.strerror or exc}") from None
    return EX_OK


def _error(number: int, text: str, message: str) -> str:
    """The object for a line that is not an address: its text, its number, why."""
    return json.dumps({"address": text, "line": number, "status": "error", "error": message},
                      ensure_ascii=False)


async def _lines(fd: int) -> AsyncIterator[tuple[int, str, str | None]]:
    """(line number, stripped text, problem or None) for each line of ``fd``, read in chunks
    off the event loop (a slow pipe never stalls the lookups in flight); a line that is not
    UTF-8 or longer than ``MAX_LINE`` comes with its problem and a shortened text."""
    number = 0
    pending = b""
    skipping = False  # inside an over-long line, until its end
    while True:
        chunk = await asyncio.to_thread(os.read, fd, CHUNK)
        data = pending + chunk
        lines = data.split(b"\n")
        pending = lines.pop() if chunk else b""  # at the end, an unterminated last line counts
        for raw in lines:
            if skipping:
                skipping = False
                continue
            number += 1
            yield (number, *_decode(raw))
        if len(pending) > MAX_LINE and not skipping:
            number += 1
            yield (number, *_decode(pending))
            pending, skipping = b"", True
        elif skipping:
            pending = b""
        if not chunk:
            return


def _decode(raw: bytes) -> tuple[str, str | None]:
    if len(raw) > MAX_LINE:
        shown = raw[:SHOWN].decode("utf-8", "replace")
        return shown, f"line longer than {MAX_LINE} bytes: not an address"
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace").strip(), "line is not UTF-8"


__all__ = ["Options", "Summary", "bulk_command", "run_bulk"]
