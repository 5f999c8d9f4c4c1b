"""Benchmark (not a test): the whole OpenSPF RFC 7208 suite, mxroute vs pyspf, in one run.

Both implementations answer from the same in-process zone per scenario (built
once, outside the timing): mxroute through ``Resolver(ZoneTransport)``, a fresh
resolver per check so its cache never carries over between tests; pyspf
through its ``DNSLookup`` hook. Both build a DNS query message per lookup and
read a DNS response message. The zone is ``ZoneData`` behind a memo of its
responses (``AnswerMemo``), because ``ZoneData.answer`` scans every owner name
for NXDOMAIN and would otherwise be most of either figure; ``--no-memo`` shows
the raw numbers. Each run evaluates every suite test once per implementation;
the script prints the median of the runs, the ratio, and how many tests each
got right.

Usage: python bench/spf_bench.py [--runs 5] [--suite ../shared/conformance/spf/rfc7208-tests.yml]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from mxroute.dns.resolver import Resolver
from mxroute.dns.zonefile import ZoneData, ZoneTransport
from mxroute.identity.spf.evaluate import SPFOptions, check_sender
from mxroute.identity.spf.parse import parse_record
from tests.conformance.test_spf_conformance import SUITE_DIR, Case, load_suite


class AnswerMemo(ZoneData):
    """A ZoneData whose responses are computed once per (name, type) and then reused."""

    def __init__(self, zone: ZoneData) -> None:
        super().__init__(zone.nodes, zone.failures)
        self._memo: dict[tuple[dns.name.Name, int], dns.message.Message | None] = {}

    def answer(self, request: dns.message.Message) -> dns.message.Message | None:
        question = request.question[0]
        key = (question.name, question.rdtype)
        if key not in self._memo:
            self._memo[key] = super().answer(request)
        return self._memo[key]


def pyspf_lookup(spf: Any, holder: dict[str, ZoneData]) -> Any:
    """pyspf's DNSLookup answered by ``holder["zone"]`` (the shape of spf.DNSLookup_dnspython)."""

    def lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[Any]:
        try:
            qname, rdtype = dns.name.from_text(name), dns.rdatatype.from_text(qtype)
            request = dns.message.make_query(qname, rdtype)
        except Exception:  # noqa: BLE001 -- a name DNS cannot carry (any parse error): nothing there
            return []
        response = holder["zone"].answer(request)
        if response is None:
            raise spf.TempError("DNS timeout")
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise spf.TempError("DNS " + dns.rcode.to_text(response.rcode()))
        out: list[Any] = []
        for rrset in response.answer:
            if dns.rdatatype.to_text(rrset.rdtype) != qtype:
                continue
            for rdata in rrset:
                if qtype in ("A", "AAAA"):
                    out.append(((name, qtype), rdata.address))
                elif qtype == "MX":
                    out.append(((name, qtype), (rdata.preference, rdata.exchange)))
                elif qtype == "PTR":
                    out.append(((name, qtype), rdata.target.to_text(True)))
                elif qtype in ("TXT", "SPF"):
                    out.append(((name, qtype), rdata.strings))
        return out

    return lookup


def ok(case: Case, result: str, explanation: str | None) -> bool:
    if result not in case.expected:
        return False
    return "explanation" not in case.test or explanation == case.test["explanation"]


async def run_mxroute(scenarios: list[tuple[str, ZoneData, list[Case]]]) -> int:
    options = SPFOptions(default_explanation="DEFAULT")
    parse_record.cache_clear()  # no head start from the previous run: only reuse within one pass
    good = 0
    for _desc, zone, cases in scenarios:
        transport = ZoneTransport(zone)
        for case in cases:
            t = case.test
            resolver = Resolver(transport, trace_size=0)
            outcome = await check_sender(
                resolver, t["host"], t["mailfrom"], t["helo"], options=options
            )
            good += ok(case, outcome.result, outcome.explanation)
    return good


def run_pyspf(
    spf: Any, scenarios: list[tuple[str, ZoneData, list[Case]]], holder: dict[str, ZoneData]
) -> int:
    good = 0
    for _desc, zone, cases in scenarios:
        holder["zone"] = zone
        for case in cases:
            t = case.test
            query = spf.query(i=t["host"], s=t["mailfrom"], h=t["helo"], querytime=20)
            query.set_default_explanation("DEFAULT")
            result, _code, explanation = query.check()
            good += ok(case, result, explanation if result == "fail" else None)
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--suite", type=Path, default=SUITE_DIR / "rfc7208-tests.yml")
    parser.add_argument("--no-memo", action="store_true",
                        help="ask ZoneData directly (its own cost dominates)")
    args = parser.parse_args()
    if not args.suite.is_file():
        print(f"suite not found: {args.suite}", file=sys.stderr)
        return 66
    import spf  # pyspf: a test dependency

    warnings.simplefilter("ignore")
    scenarios = load_suite(args.suite)
    if not args.no_memo:
        scenarios = [(desc, AnswerMemo(zone), cases) for desc, zone, cases in scenarios]
    total = sum(len(cases) for _, _, cases in scenarios)
    holder: dict[str, ZoneData] = {}
    spf.DNSLookup = pyspf_lookup(spf, holder)
    ours: list[float] = []
    theirs: list[float] = []
    ours_good = theirs_good = 0
    for _ in range(max(3, args.runs)):
        started = time.perf_counter()
        ours_good = asyncio.run(run_mxroute(scenarios))
        ours.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        theirs_good = run_pyspf(spf, scenarios, holder)
        theirs.append((time.perf_counter() - started) * 1000)
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    zone_kind = "ZoneData" if args.no_memo else "ZoneData + response memo"
    print(f"suite: {args.suite.name}, {total} tests, {len(ours)} runs, "
          f"same in-process zone data ({zone_kind})")
    runs_ours = ", ".join(f"{x:.1f}" for x in ours)
    runs_theirs = ", ".join(f"{x:.1f}" for x in theirs)
    faster = "mxroute faster" if m_ours < m_theirs else "pyspf faster"
    print(f"mxroute  median {m_ours:8.1f} ms  ({ours_good}/{total} correct)  runs: {runs_ours}")
    print(f"pyspf    median {m_theirs:8.1f} ms  ({theirs_good}/{total} correct)  "
          f"runs: {runs_theirs}")
    print(f"ratio    mxroute / pyspf = {m_ours / m_theirs:.2f}  ({faster})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
