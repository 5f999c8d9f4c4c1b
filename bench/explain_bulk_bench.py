"""Bulk `mxroute explain --json --file F` against a loopback authoritative NSD (issue 16 §4).

100,000 addresses over 10,000 domains (a shuffled list, 10 addresses a domain) served by NSD on
127.0.0.1 from a generated zone: deliverable domains on a shared pool of provider MX hosts and on
their own MX hosts, implicit MX, null MX and NXDOMAIN. Each run reports addresses/s, the DNS
queries mxroute sent (its summary line) and NSD received (``nsd-control stats_noreset``), the
distinct questions the list needs (computed from the zone), and mxroute's CPU per query and per
address. ``dnsperf`` then measures the same NSD's capacity over the same questions, in the same
run. Medians over ``--runs``. Not a test; needs nsd, nsd-control and dnsperf (Debian).

    .venv/bin/python bench/explain_bulk_bench.py --runs 3 \
        --json-out bench/results/explain-bulk.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ZONE = "bulk.test"
POOL = 500  # shared provider MX hosts


def kind(i: int) -> str:
    """The shape of domain ``i``: 65% shared pool, 20% own MX, 5% each implicit, null MX, NX."""
    return {0: "nullmx", 1: "nx", 2: "implicit"}.get(i % 20, "own" if i % 20 < 7 else "pool")


def make_zone(domains: int) -> tuple[str, set[tuple[str, str]]]:
    """The zone text, and every (name, type) question the list needs (ipv6-first, MTA-STS on)."""
    lines = [f"$ORIGIN {ZONE}.", "$TTL 3600",
             "@ IN SOA ns.bulk.test. host.bulk.test. 1 3600 600 86400 3600", "@ IN NS ns",
             "ns IN A 127.0.0.1"]
    questions: set[tuple[str, str]] = set()

    def host(name: str, n: int) -> None:
        lines.append(f"{name} IN A 198.51.{n // 250}.{n % 250 + 1}")
        lines.append(f"{name} IN AAAA 2001:db8::{n:x}")

    for n in range(POOL):
        host(f"mx{n}.hosts", n)
    for i in range(domains):
        name, shape = f"d{i}", kind(i)
        fqdn = f"{name}.{ZONE}"
        questions.add((fqdn, "MX"))
        if shape in ("nullmx", "nx"):
            if shape == "nullmx":
                lines.append(f"{name} IN MX 0 .")
            continue
        questions.add((f"_mta-sts.{fqdn}", "TXT"))
        if shape == "implicit":
            lines.append(f"{name} IN A 203.0.113.{i % 250 + 1}")
            questions.update({(fqdn, "A"), (fqdn, "AAAA")})
        elif shape == "own":
            lines.append(f"{name} IN MX 10 mx.{name}")
            host(f"mx.{name}", POOL + i)
            questions.update({(f"mx.{fqdn}", "A"), (f"mx.{fqdn}", "AAAA")})
        else:
            first, second = i % POOL, (i + 1) % POOL
            lines.append(f"{name} IN MX 10 mx{first}.hosts")
            lines.append(f"{name} IN MX 20 mx{second}.hosts")
            for n in (first, second):
                questions.update({(f"mx{n}.hosts.{ZONE}", "A"), (f"mx{n}.hosts.{ZONE}", "AAAA")})
    return "\n".join(lines) + "\n", questions


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nsd:
    """NSD on 127.0.0.1:port serving the zone, one server process; stopped by its PID."""

    def __init__(self, workdir: Path, zone_text: str) -> None:
        self.dir = workdir
        self.port = free_port()
        (workdir / f"{ZONE}.zone").write_text(zone_text)
        self.conf = workdir / "nsd.conf"
        self.conf.write_text(f"""server:
    ip-address: 127.0.0.1@{self.port}
    port: {self.port}
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    pidfile: "{workdir}/nsd.pid"
    database: ""
    xfrdfile: "{workdir}/xfrd.state"
    zonelistfile: "{workdir}/zone.list"
    logfile: "{workdir}/nsd.log"
    server-count: 1
    verbosity: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: yes
    control-interface: "{workdir}/nsd.ctl"
zone:
    name: {ZONE}
    zonefile: {ZONE}.zone
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["nsd", "-d", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"nsd exited: {(self.dir / 'nsd.log').read_text()}")
            if self.queries() is not None and self._answers():
                return
            time.sleep(0.1)
        raise SystemExit("nsd did not answer within 30 s")

    def _answers(self) -> bool:
        result = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(self.port),
                                 "@127.0.0.1", f"d3.{ZONE}", "MX"], capture_output=True,
                                text=True, check=False) if shutil.which("dig") else None
        return result is None or "mx" in result.stdout

    def queries(self) -> int | None:
        """NSD's count of queries received so far (never reset)."""
        result = subprocess.run(["nsd-control", "-c", str(self.conf), "stats_noreset"],
                                capture_output=True, text=True, check=False)
        found = re.search(r"^num\.queries=(\d+)$", result.stdout, re.MULTILINE)
        return int(found.group(1)) if found else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_mxroute(nsd: Nsd, listfile: Path, out: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update({"MXROUTE_HELO_NAME": "relay.example", "MXROUTE_ALLOW_PRIVATE_DESTINATIONS": "true",
                "MXROUTE_SPOOL_DIR": str(nsd.dir / "spool"), **extra_env})
    load_before = os.getloadavg()[0]
    before_q, before_cpu = nsd.queries(), children_cpu()
    started = time.perf_counter()
    with out.open("wb") as sink:
        proc = subprocess.run([str(ROOT / ".venv/bin/mxroute"), "explain", "--json", "--dns",
                               f"127.0.0.1:{nsd.port}", "--file", str(listfile)],
                              stdout=sink, stderr=subprocess.PIPE, env=env, check=False,
                              timeout=900)
    wall = time.perf_counter() - started
    cpu = children_cpu() - before_cpu
    after_q = nsd.queries()
    summary = proc.stderr.decode().strip()
    if proc.returncode != 0:
        raise SystemExit(f"mxroute exited {proc.returncode}: {summary}")
    sent = int(re.search(r"(\d+) DNS queries", summary).group(1))  # type: ignore[union-attr]
    received = (after_q - before_q) if after_q is not None and before_q is not None else None
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "queries_sent": sent,
            "nsd_received": received, "summary": summary,
            # the 1-minute load average around the run: other work on the 2 cores
            "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


def check_output(out: Path, addresses: list[str]) -> int:
    """Every line an object for its address, in input order; the number of deliverable ones."""
    deliverable = 0
    with out.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            body = json.loads(line)
            if body["address"] != addresses[n]:
                raise SystemExit(f"line {n + 1}: {body['address']} != {addresses[n]}")
            deliverable += body["status"] == "deliverable"
    if n + 1 != len(addresses):
        raise SystemExit(f"{n + 1} lines for {len(addresses)} addresses")
    return deliverable


def run_dnsperf(nsd: Nsd, questions: set[tuple[str, str]], seconds: int) -> dict[str, Any]:
    qfile = nsd.dir / "queries.txt"
    qfile.write_text("".join(f"{name} {qtype}\n" for name, qtype in sorted(questions)))
    result = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(nsd.port), "-d", str(qfile),
                             "-l", str(seconds), "-c", "4", "-Q", "200000"],
                            capture_output=True, text=True, check=False, timeout=seconds + 60)
    qps = re.search(r"Queries per second:\s+([\d.]+)", result.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", result.stdout)
    return {"qps": float(qps.group(1)) if qps else None,
            "lost": int(lost.group(1)) if lost else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addresses", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dnsperf-seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="MXROUTE_EXPLAIN_CONCURRENCY (default: the setting's default)")
    parser.add_argument("--json-out", help="append the result as one JSON line")
    args = parser.parse_args()
    for tool in ("nsd", "nsd-control", "dnsperf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install nsd dnsperf")
    zone_text, questions = make_zone(args.domains)
    rng = random.Random(16)
    addresses = [f"user{n}@d{n % args.domains}.{ZONE}" for n in range(args.addresses)]
    rng.shuffle(addresses)
    extra = {} if args.concurrency is None else {
        "MXROUTE_EXPLAIN_CONCURRENCY": str(args.concurrency)}
    runs: list[dict[str, Any]] = []
    capacity: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mxroute-bulk-") as tmp:
        work = Path(tmp)
        listfile = work / "addresses.txt"
        listfile.write_text("".join(a + "\n" for a in addresses))
        nsd = Nsd(work, zone_text)
        nsd.start()
        try:
            for n in range(args.runs):
                run = run_mxroute(nsd, listfile, work / "out.jsonl", extra)
                run["deliverable"] = check_output(work / "out.jsonl", addresses)
                run["addresses_per_s"] = round(args.addresses / run["wall_s"])
                # what one core of its own would give: the rate by CPU time, not wall time
                run["addresses_per_cpu_s"] = round(args.addresses / run["cpu_s"])
                run["cpu_us_per_query"] = round(run["cpu_s"] / run["queries_sent"] * 1e6, 1)
                run["cpu_us_per_address"] = round(run["cpu_s"] / args.addresses * 1e6, 1)
                run["asked_once"] = (run["queries_sent"] == len(questions)
                                     == run["nsd_received"])
                runs.append(run)
                print(f"run {n + 1}: {json.dumps(run)}", file=sys.stderr)
                capacity.append(run_dnsperf(nsd, questions, args.dnsperf_seconds))
                print(f"dnsperf {n + 1}: {json.dumps(capacity[-1])}", file=sys.stderr)
        finally:
            nsd.stop()

    def median(key: str, rows: list[dict[str, Any]]) -> Any:
        values = [row[key] for row in rows if row[key] is not None]
        return statistics.median(values) if values else None

    result = {
        "bench": "explain-bulk", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "addresses": args.addresses, "domains": args.domains, "runs": args.runs,
        "distinct_questions": len(questions), "cores": os.cpu_count(),
        "median_addresses_per_s": median("addresses_per_s", runs),
        "median_addresses_per_cpu_s": median("addresses_per_cpu_s", runs),
        "median_wall_s": median("wall_s", runs), "median_cpu_s": median("cpu_s", runs),
        "median_cpu_us_per_query": median("cpu_us_per_query", runs),
        "median_cpu_us_per_address": median("cpu_us_per_address", runs),
        "queries_sent": [r["queries_sent"] for r in runs],
        "nsd_received": [r["nsd_received"] for r in runs],
        "asked_once": all(r["asked_once"] for r in runs),
        "nsd_capacity_qps_median": median("qps", capacity),
        "dnsperf": capacity, "runs_detail": runs,
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
