"""Benchmark (not a test): `mxroute explain --json` as a whole process, and cached lookups
in-process.

Starts the tests' loopback DNS server with a small zone, then, round by round (the order
rotating each round, so a loaded machine slows all alike: interleaved, issue 16 part 5)
1. runs `mxroute explain --json` for a plain domain as a fresh process;
2. runs a process that only imports the libraries explain cannot start without (FLOOR_IMPORTS:
   the settings model's pydantic-settings, the dnspython modules the resolver sends and parses
   queries with): the floor under (1) before a line of mxroute runs;
3. runs a bare interpreter;
and reports each one's median wall and CPU time over the rounds, and explain / floor (issue
16's target: at most 1.10). Then it runs cached resolver lookups in-process and reports
lookups per second.

Usage: python bench/explain_bench.py [--runs 21] [--python .venv/bin/python] [--against DIR]
                                     [--record bench/results/explain.jsonl --note TEXT]

The package's bytecode is compiled first, as an installed package has it (with
PYTHONDONTWRITEBYTECODE set, an editable checkout would otherwise be compiled from
source on every run). ``--against DIR`` (another checkout, e.g. ``git archive OLD |
tar -x -C DIR``) alternates runs of the two trees, so a loaded machine slows both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.10  # issue 16 part 5: explain --json at most 1.10 x the library floor
sys.path.insert(0, str(ROOT))

from mxroute.dns.resolver import NetworkTransport, Resolver, Server
from tests.support.dnsserver import DNSServer

ZONE = """
$ORIGIN bench.test.
$TTL 300
@    IN SOA ns.bench.test. host.bench.test. 1 3600 600 86400 60
@    IN MX 10 mx1.bench.test.
@    IN MX 10 mx2.bench.test.
@    IN MX 20 mx3.bench.test.
mx1  IN A 127.0.1.1
mx2  IN A 127.0.1.2
mx3  IN A 127.0.1.3
mx1  IN AAAA ::1
"""


def _timed(argv: list[str], env: dict[str, str] | None, cwd: Path
           ) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """(wall ms, CPU ms, result) of one process; CPU time is what load disturbs least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=30, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return elapsed, cpu, result


def explain_once(python: str, dns: str, root: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one `mxroute explain --json` process for a plain domain."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env["MXROUTE_ALLOW_PRIVATE_DESTINATIONS"] = "true"
    env["PYTHONPATH"] = str(root)
    elapsed, cpu, result = _timed([python, "-m", "mxroute", "explain", "--dns", dns, "--json",
                                   "u@bench.test"], env, root)
    assert (result.returncode == 0
            and json.loads(result.stdout)["status"] == "deliverable"), result.stderr
    return elapsed, cpu


def code_once(python: str, code: str) -> tuple[float, float]:
    """(wall ms, CPU ms) of ``python -c code``."""
    elapsed, cpu, result = _timed([python, "-c", code], None, ROOT)
    assert result.returncode == 0, result.stderr
    return elapsed, cpu


# What explain's process must import before any mxroute code: pydantic-settings (the one settings
# model; it imports pydantic and asyncio) and the dnspython modules the resolver sends queries
# with (dns.asyncquery, which brings dns.query and its ssl, and the asyncio backend it loads on
# the first query) and parses this zone's answers with. `floor_gaps` checks that nothing else
# outside mxroute is loaded by explain.
FLOOR_IMPORTS = ("import pydantic_settings, dns.message, dns.asyncquery, dns.asyncbackend, "
                 "dns.rdtypes.ANY.MX, dns.rdtypes.ANY.SOA, dns.rdtypes.IN.A, dns.rdtypes.IN.AAAA; "
                 "dns.asyncbackend.get_backend('asyncio')")
_MODULES = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def floor_gaps(python: str, dns: str) -> tuple[list[str], list[str]]:
    """(modules outside mxroute that explain loads and the floor does not, modules the floor loads
    and explain does not): both empty when FLOOR_IMPORTS is what explain needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update({"MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true", "PYTHONPATH": str(ROOT)})
    code = ("import contextlib, io, sys\nfrom mxroute.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(sys.argv[1:])\n" + _MODULES)
    run = subprocess.run([python, "-c", code, "explain", "--dns", dns, "--json", "u@bench.test"],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    explain = {m for m in json.loads(run.stdout) if not m.startswith("mxroute")}
    run = subprocess.run([python, "-c", f"{FLOOR_IMPORTS}\n{_MODULES}"], capture_output=True,
                         text=True, check=True)
    floor = set(json.loads(run.stdout))
    return sorted(explain - floor), sorted(floor - explain)


Times = list[tuple[float, float]]


def interleaved(python: str, dns: str, runs: int, roots: list[Path]) -> dict[str, Times]:
    """(wall, CPU) per kind ("floor", "bare", and each tree), one of each per round, the order
    rotating round by round."""
    for root in roots:
        subprocess.run([python, "-m", "compileall", "-q", str(root / "mxroute")], check=True,
                       capture_output=True)
    jobs: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        (str(root), lambda root=root: explain_once(python, dns, root)) for root in roots]
    jobs += [("floor", lambda: code_once(python, FLOOR_IMPORTS)),
             ("bare", lambda: code_once(python, "pass"))]
    times: dict[str, Times] = {name: [] for name, _ in jobs}
    for _, job in jobs:  # one warm-up each: the page cache, not the measurement
        job()
    for index in range(runs):
        shift = index % len(jobs)
        for name, job in jobs[shift:] + jobs[:shift]:
            times[name].append(job())
    return times


def median(times: Times, which: int = 0) -> float:
    return statistics.median(t[which] for t in times)


async def cached_lookups(server: DNSServer, seconds: float = 2.0) -> float:
    resolver = Resolver(NetworkTransport([Server(server.host, server.port)], timeout=1, attempts=1),
                        trace_size=0)
    await resolver.lookup("bench.test", "MX")
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            await resolver.lookup("bench.test", "MX")
        count += 1000
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout to compare with, run for run")
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="append the JSON line to FILE (bench/results/explain.jsonl)")
    parser.add_argument("--note", default="", help="what was measured, for --record")
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs: at least 10 (medians of fewer say little on a shared machine)")
    roots = [ROOT] + ([args.against.resolve()] if args.against else [])
    with DNSServer(ZONE, host="127.0.53.254") as server:
        beyond, unused = floor_gaps(args.python, server.address)
        times = interleaved(args.python, server.address, args.runs, roots)
        rate = asyncio.run(cached_lookups(server))
    explain, floor, bare = times[str(ROOT)], times["floor"], times["bare"]
    ratio = median(explain) / median(floor)
    cpu_ratio = median(explain, 1) / median(floor, 1)
    print(f"interleaved, {args.runs} rounds; medians, wall (CPU):")
    print(f"  explain --json (plain domain): {median(explain):.0f} ms ({median(explain, 1):.0f})")
    if args.against:
        other = times[str(roots[1])]
        print(f"  {args.against}: {median(other):.0f} ms ({median(other, 1):.0f})")
    print(f"  required libraries alone, no mxroute code: {median(floor):.0f} ms "
          f"({median(floor, 1):.0f})")
    print(f"  python interpreter alone: {median(bare):.0f} ms ({median(bare, 1):.0f})")
    print(f"  loaded by explain outside mxroute, not by the floor: {beyond or 'nothing'}; "
          f"by the floor only: {unused or 'nothing'}")
    print(f"  explain / floor: {ratio:.3f} wall, {cpu_ratio:.3f} CPU "
          f"(target <= {TARGET_RATIO:.2f}: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    print(f"cached resolver lookups: {rate:,.0f} per second in-process")
    line: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "code": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, check=False).stdout.strip(),
        "note": args.note, "runs": args.runs, "interleaved": True,
        "explain_ms_median": round(median(explain), 1),
        "explain_cpu_ms_median": round(median(explain, 1), 1),
        "library_floor_ms_median": round(median(floor), 1),
        "library_floor_cpu_ms_median": round(median(floor, 1), 1),
        "python_start_ms_median": round(median(bare), 1),
        "floor_imports": FLOOR_IMPORTS, "beyond_floor": beyond, "floor_only": unused,
        "explain_over_floor": round(ratio, 3), "explain_over_floor_cpu": round(cpu_ratio, 3),
        "cached_lookups_per_s": round(rate)}
    if args.against:
        line["against"] = str(args.against)
        line["against_ms_median"] = round(median(times[str(roots[1])]), 1)
        line["against_cpu_ms_median"] = round(median(times[str(roots[1])], 1), 1)
        line["against_over_floor"] = round(median(times[str(roots[1])]) / median(floor), 3)
    print(json.dumps(line))
    if args.record:
        with args.record.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
