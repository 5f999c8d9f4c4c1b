"""Benchmark (not a test): `mxroute explain --json` as a whole process, and cached lookups
in-process.

Starts the tests' loopback DNS server with a small zone, then
1. runs `mxroute explain --json` N times as a fresh process and reports the median wall time;
2. runs a process that only imports the libraries explain cannot start without (the
   settings model's pydantic-settings, the resolver's dnspython): the floor under (1)
   before a line of mxroute runs, and so mxroute's own share of (1);
3. runs cached resolver lookups in-process and reports lookups per second.

Usage: python bench/explain_bench.py [--runs 21] [--python .venv/bin/python] [--against DIR]

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def explain_once(python: str, dns: str, root: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one `mxroute explain --json` process; CPU time is what load disturbs
    least."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env["MXROUTE_ALLOW_PRIVATE_DESTINATIONS"] = "true"
    env["PYTHONPATH"] = str(root)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([python, "-m", "mxroute", "explain", "--dns", dns, "--json",
                             "u@bench.test"],
                            capture_output=True, env=env, cwd=root, timeout=30, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    assert (result.returncode == 0
            and json.loads(result.stdout)["status"] == "deliverable"), result.stderr
    return elapsed, cpu


# What explain's process must import before any mxroute code: pydantic-settings (the one settings
# model; it imports pydantic and asyncio) and the dnspython modules the resolver sends queries with.
FLOOR_IMPORTS = ("import pydantic_settings, dns.message, dns.asyncquery, dns.rdtypes.ANY.MX, "
                 "dns.rdtypes.IN.A")


def process_ms(python: str, code: str, runs: int) -> list[float]:
    """Wall times (ms) of ``python -c code``, run ``runs`` times."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([python, "-c", code], check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def explain_wall(python: str, dns: str, runs: int,
                 roots: list[Path]) -> dict[Path, list[tuple[float, float]]]:
    """(wall, CPU) times per tree, the trees taking turns (ABBA order) run by run."""
    for root in roots:
        subprocess.run([python, "-m", "compileall", "-q", str(root / "mxroute")], check=True,
                       capture_output=True)
    times: dict[Path, list[tuple[float, float]]] = {root: [] for root in roots}
    for index in range(runs):
        for root in roots if index % 2 == 0 else roots[::-1]:
            times[root].append(explain_once(python, dns, root))
    return times


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
    args = parser.parse_args()
    roots = [ROOT] + ([args.against.resolve()] if args.against else [])
    with DNSServer(ZONE, host="127.0.53.254") as server:
        per_root = explain_wall(args.python, server.address, args.runs, roots)
        rate = asyncio.run(cached_lookups(server))
    times = [wall for wall, _ in per_root[ROOT]]
    cpu = [used for _, used in per_root[ROOT]]
    if args.against:
        other = per_root[roots[1]]
        print(f"{args.against}: explain --json median "
              f"{statistics.median(w for w, _ in other):.0f} ms wall, "
              f"{statistics.median(c for _, c in other):.0f} ms CPU over {args.runs} runs "
              "(alternating)")
    bare = statistics.median(process_ms(args.python, "pass", args.runs))
    floor = statistics.median(process_ms(args.python, FLOOR_IMPORTS, args.runs))
    explain = statistics.median(times)
    print(f"explain --json wall time: median {explain:.0f} ms, "
          f"p90 {sorted(times)[int(len(times) * 0.9)]:.0f} ms, "
          f"CPU median {statistics.median(cpu):.0f} ms over {args.runs} runs")
    print(f"python interpreter start alone: median {bare:.0f} ms")
    print("required libraries alone (pydantic-settings, dnspython; no mxroute code): "
          f"median {floor:.0f} ms, "
          f"so mxroute's own imports and work: {explain - floor:.0f} ms")
    print(f"cached resolver lookups: {rate:,.0f} per second in-process")
    print(json.dumps({"explain_ms_median": round(explain, 1),
                      "explain_cpu_ms_median": round(statistics.median(cpu), 1),
                      "python_start_ms_median": round(bare, 1),
                      "library_floor_ms_median": round(floor, 1),
                      "cached_lookups_per_s": round(rate)}))


if __name__ == "__main__":
    main()
