"""The delivery process's CPU per message with relaybench's shape (issue 23).

``accept_latency.py`` sends everything to one address literal; relaybench spreads its messages
over D domains whose MX records name K sinks. This does the same on loopback without a DNS
server: a zone file (``dns_zone_files``) with D domains ``d000.bench.test``.., most with one MX,
every fifth with a backup MX, one with two equal MX and the last with an A record only (as
relaybench lays them out), over K ``smtp-sink`` on 127.0.53.1..K (one port, ``smtp_port``).
S client sessions each send to one domain (as relaybench's smtp-source per domain). Reported: the
CPU ms per message of the intake and the delivery process (medians over --runs), and with
``--profile F`` a py-spy recording of the delivery process (raw, for ``py-spy``'s folded
format) during the first run.

    .venv/bin/python bench/delivery_cpu.py [--messages 10000] [--sessions 50] [--domains 50]
        [--hosts 4] [--runs 1] [--mxroute PATH] [--label L] [--json-out F] [--profile F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accept_latency import (
    children,
    cpu_seconds,
    drained,
    free_port,
    session,
    smtp_sink,
    stat_cpu_seconds,
    stop_relay,
    wait_listening,
)

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "127.0.53."
ZONE = "bench.test"


def domain(i: int) -> str:
    return f"d{i:03d}.{ZONE}"


def zone_text(domains: int, hosts: int) -> str:
    """relaybench's layout: 1 MX; every fifth 10/20; d002 two equal MX; the last A only."""
    lines = [f"$ORIGIN {ZONE}.", "$TTL 3600",
             f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 900 604800 3600"]
    lines += [f"mx{k} IN A {PREFIX}{k}" for k in range(1, hosts + 1)]

    def host(j: int) -> int:
        return j % hosts + 1

    for i in range(domains):
        label = domain(i)[: -len(ZONE) - 1]
        if i == domains - 1 and domains > 1:
            lines.append(f"{label} IN A {PREFIX}{host(i)}")
        elif i == 2 and hosts > 1:
            lines += [f"{label} IN MX 10 mx{host(i)}", f"{label} IN MX 10 mx{host(i + 1)}"]
        elif i % 5 == 1 and hosts > 1:
            lines += [f"{label} IN MX 10 mx{host(i)}", f"{label} IN MX 20 mx{host(i + 1)}"]
        else:
            lines.append(f"{label} IN MX 10 mx{host(i)}")
    return "\n".join(lines) + "\n"


async def load(port: int, messages: int, sessions: int, domains: int) -> float:
    per = messages // sessions
    started = time.perf_counter()
    await asyncio.gather(*(session(port, per, i * per, to=domain(i % domains))
                           for i in range(sessions)))
    return time.perf_counter() - started


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s event loop thread (``main``) and of its other threads (the
    spool's executor, the log's flusher; Python 3.11 does not name them for the system)."""
    out = {"main": 0.0, "others": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = "main" if task.name == str(pid) else "others"
        out[name] += stat_cpu_seconds(task / "stat")
    return out


def scrape(address: str) -> dict[str, object]:
    """The courier's counters from the metrics page: ``mxroute_outbound_sessions``."""
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as page:
        text = page.read().decode()
    return {"outbound_" + line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("mxroute_outbound_sessions_total{")}


def one_run(args: argparse.Namespace, profile: Path | None,
            syscalls: Path | None = None) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="mxroute-delivery-", dir=args.workdir))
    (work / "bench.zone").write_text(zone_text(args.domains, args.hosts))
    sink_port, relay_port = free_port(PREFIX + "1"), free_port("127.0.0.1")
    sinks = [smtp_sink(f"{PREFIX}{k}", sink_port) for k in range(1, args.hosts + 1)]
    env = dict(os.environ, MXROUTE_LISTEN=json.dumps([f"127.0.0.1:{relay_port}"]),
               MXROUTE_SPOOL_DIR=str(work / "spool"),
               MXROUTE_DNS_ZONE_FILES=json.dumps([str(work / "bench.zone")]),
               MXROUTE_DNS_SERVERS='["127.0.0.1:1"]', MXROUTE_HELO_NAME="relay.test",
               MXROUTE_ALLOW_PRIVATE_DESTINATIONS="true",
               MXROUTE_SMTP_PORT=str(sink_port), MXROUTE_RELAY_NETWORKS='["127.0.0.0/8"]')
    env.pop("MXROUTE_CONFIG", None)
    metrics = f"{PREFIX}100:{free_port(PREFIX + '100')}" if args.stats else None
    if metrics:  # the courier's counters (connections, reused), at the cost of timing attempts
        env["MXROUTE_METRICS_LISTEN"] = metrics
    spy = None
    with open(work / "relay.log", "wb") as log:
        relay = subprocess.Popen([str(args.mxroute), "serve"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_listening(relay_port)
        time.sleep(1.0)
        workers = children(relay.pid)
        if profile is not None and workers:
            spy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid",
                                    str(workers[0]), "--format", "raw", "--rate", "200",
                                    "-o", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        if syscalls is not None and workers:  # counts per message, not time: strace slows it
            spy = subprocess.Popen(["strace", "-c", "-f", "-o", str(syscalls), "-p",
                                    str(workers[0])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before = (cpu_seconds(relay.pid), sum(cpu_seconds(c) for c in workers))
        threads_before = thread_cpu(workers[0]) if workers else {}
        elapsed = asyncio.run(load(relay_port, args.messages, args.sessions, args.domains))
        for _ in range(1200):
            if drained(work / "spool"):
                break
            time.sleep(0.1)
        threads = thread_cpu(workers[0]) if workers else {}
        intake = cpu_seconds(relay.pid) - before[0]
        delivery = sum(cpu_seconds(c) for c in workers) - before[1]
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        outbound = scrape(metrics) if metrics else {}
        sent = sum(1 for line in (work / "relay.log").read_text(errors="replace").splitlines()
                   if "status=sent" in line)
        n = args.sessions * (args.messages // args.sessions)
        result: dict[str, object] = {
            "bench": "delivery_cpu", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "label": args.label, "messages": n, "sessions": args.sessions,
            "domains": args.domains, "hosts": args.hosts, "sent_lines": sent,
            "accept_msgs_per_s": round(n / elapsed, 1), "drained": drained(work / "spool"),
            "intake_cpu_ms_per_msg": round(intake * 1000 / n, 3),
            "delivery_cpu_ms_per_msg": round(delivery * 1000 / n, 3),
            "relay_cpu_ms_per_msg": round((intake + delivery) * 1000 / n, 3),
            "loadavg_1m": os.getloadavg()[0], **outbound,
            "delivery_threads_cpu_ms_per_msg": {
                name: round((cpu - threads_before.get(name, 0.0)) * 1000 / n, 3)
                for name, cpu in sorted(threads.items())},
        }
        print(json.dumps(result), flush=True)
        if args.json_out:
            with open(args.json_out, "a") as out:
                out.write(json.dumps(result) + "\n")
        return result
    finally:
        stop_relay(relay)
        for sink in sinks:
            sink.terminate()
            sink.wait(5)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--mxroute", type=Path, default=ROOT / ".venv/bin/mxroute")
    parser.add_argument("--label", default="")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--profile", type=Path, help="py-spy raw output of the first run")
    parser.add_argument("--stats", action="store_true",
                        help="metrics on: report the courier's connection counters")
    parser.add_argument("--syscalls", type=Path,
                        help="strace -c of the delivery process during the first run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    runs = [one_run(args, args.profile if i == 0 else None, args.syscalls if i == 0 else None)
            for i in range(args.runs)]
    if args.runs > 1:
        keys = ("intake_cpu_ms_per_msg", "delivery_cpu_ms_per_msg", "relay_cpu_ms_per_msg")
        medians = {k: sorted(float(str(r[k])) for r in runs)[len(runs) // 2] for k in keys}
        print("medians of", args.runs, "runs:", json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
