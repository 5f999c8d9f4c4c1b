"""The cost of ``shared_state`` (issue 19): `mxroute serve` with its limits, suspensions and
queue view shared through a Redis on loopback, against the same serve alone.

Each round runs both, alternately (off, on): a fresh spool, S client sessions inject M messages
(``accept_latency.load``: address-literal recipients ``u<n>@[127.0.0.1]``, no DNS) to a Postfix
``smtp-sink``, and the clock stops when the spool's queue is empty (every message delivered).
A shaping rule for every site (``match = "*"``: a connection limit and a message rate high
enough never to wait) makes each delivery take a connection lease and each message a GCRA
turn, as a shaped fleet does. With Redis on, ``INFO commandstats`` before and after gives the
round trips per message (every script call and every command no script runs: ``round_trips``)
and the commands run per message by name (those inside the scripts included).

    .venv/bin/python bench/fleet_bench.py [--messages 5000] [--sessions 20] [--rounds 2]
        [--json-out bench/results/fleet.jsonl]

Figures are medians over the rounds; the target is a throughput ratio (on/off) >= 0.90.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from accept_latency import ROOT, free_port, load

REDIS_HOST = "127.0.29.50"  # issue 19 (fleetview)'s loopback addresses
SHAPING = [{"match": "*", "connection_limit": 20, "message_rate": 1000000,
            "message_burst": 100000}]


def redis_port() -> int:
    with socket.socket() as s:
        s.bind((REDIS_HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1") -> None:
    """Until something listens on ``port`` (at most 10 s)."""
    for _ in range(200):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


# what the fleet's Lua scripts call (mxroute/relay/fleet/scripts.py): counted by commandstats
# inside an EVALSHA, so not round trips of their own
SCRIPT_INNER = {"del", "exists", "get", "pexpire", "pttl", "set", "time", "zadd", "zcard", "zrem",
                "zremrangebyscore"}


def round_trips(by_command: dict[str, float]) -> float:
    """Commands clients sent: every script call, and every command no script runs. (GET, SET,
    PTTL, DEL sent by the shared state itself, a few a node every 5 s, are left out: a floor.)"""
    return sum(n for name, n in by_command.items() if name not in SCRIPT_INNER)


def command_calls(port: int) -> dict[str, int]:
    """Commands Redis has run by name (INFO commandstats, the commands a script runs included:
    ``total_commands_processed`` counts them too), INFO left out."""
    out = subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", str(port), "INFO",
                          "commandstats"], capture_output=True, text=True, check=True).stdout
    calls: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            name = line[len("cmdstat_"):].split(":")[0]
            calls[name] = int(line.split("calls=")[1].split(",")[0])
    return calls


def one_run(args: argparse.Namespace, shared: int | None) -> dict[str, Any]:
    """One serve (``shared``: the Redis port, None: alone): injected, drained, measured."""
    work = Path(tempfile.mkdtemp(prefix="mxroute-fleet-", dir=args.workdir))
    sink_port, relay_port = free_port(), free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
    sink = subprocess.Popen(["smtp-sink", *user, "-c", f"127.0.0.1:{sink_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)  # a sink not yet listening would make the site dead
    env = dict(os.environ, MXROUTE_LISTEN=json.dumps([f"127.0.0.1:{relay_port}"]),
               MXROUTE_SPOOL_DIR=str(work / "spool"),
               MXROUTE_DNS_SERVERS='["127.0.0.1:1"]', MXROUTE_HELO_NAME="relay.test",
               MXROUTE_ALLOW_PRIVATE_DESTINATIONS="true", MXROUTE_ALLOW_ADDRESS_LITERALS="true",
               MXROUTE_SMTP_PORT=str(sink_port), MXROUTE_RELAY_NETWORKS='["127.0.0.0/8"]',
               MXROUTE_SHAPING=json.dumps(SHAPING), MXROUTE_LOG_LEVEL="WARNING")
    env.pop("MXROUTE_CONFIG", None)
    if shared is not None:
        env["MXROUTE_SHARED_STATE"] = f"redis://{REDIS_HOST}:{shared}/0"
    queue = work / "spool" / "queue"
    with open(work / "relay.log", "wb") as log:
        relay = subprocess.Popen([str(ROOT / ".venv/bin/mxroute"), "serve"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_port(relay_port)
        time.sleep(1.0)  # the delivery process and its first heartbeat
        before = command_calls(shared) if shared is not None else {}
        started = time.perf_counter()
        asyncio.run(load(relay_port, args.messages, args.sessions))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and queue.is_dir() and any(queue.iterdir()):
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        after = command_calls(shared) if shared is not None else {}
        by_command = {name: round((n - before.get(name, 0)) / args.messages, 3)
                      for name, n in sorted(after.items()) if n > before.get(name, 0)}
        return {"msgs_per_s": args.messages / elapsed, "seconds": elapsed,
                "redis_calls_per_msg": round_trips(by_command), "by_command": by_command}
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(15)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        sink.terminate()
        sink.wait(5)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    port = redis_port()
    rdir = Path(tempfile.mkdtemp(prefix="mxroute-fleet-redis-", dir=args.workdir))
    redis = subprocess.Popen(["redis-server", "--bind", REDIS_HOST, "--port", str(port),
                              "--save", "", "--appendonly", "no", "--dir", str(rdir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    try:
        wait_port(port, REDIS_HOST)
        for n in range(args.rounds):
            off.append(one_run(args, None))
            on.append(one_run(args, port))
            print(f"round {n + 1}: off {off[-1]['msgs_per_s']:.1f} msgs/s, on "
                  f"{on[-1]['msgs_per_s']:.1f} msgs/s, "
                  f"{on[-1]['redis_calls_per_msg']:.2f} Redis calls/msg", flush=True)
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(rdir, ignore_errors=True)
    off_rate = statistics.median(r["msgs_per_s"] for r in off)
    on_rate = statistics.median(r["msgs_per_s"] for r in on)
    result = {
        "bench": "fleet_bench", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "messages": args.messages, "sessions": args.sessions, "rounds": args.rounds,
        "off_msgs_per_s": round(off_rate, 1), "on_msgs_per_s": round(on_rate, 1),
        "ratio_on_off": round(on_rate / off_rate, 3),
        "redis_calls_per_msg": round(statistics.median(r["redis_calls_per_msg"] for r in on), 3),
        "by_command_per_msg": on[-1]["by_command"] if on else {},
        "runs": {"off": [round(r["msgs_per_s"], 1) for r in off],
                 "on": [round(r["msgs_per_s"], 1) for r in on]},
        "load_1min": os.getloadavg()[0],
    }
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "a") as out:
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
