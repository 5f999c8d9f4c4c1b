"""System calls (or a py-spy profile) per message of serve's two processes (issue 23).

Starts `mxroute serve` as bench/accept_latency.py does (loopback smtp-sink, fresh spool under
--workdir), attaches `strace -c -f -p` (or `py-spy record --gil`, with --pyspy PATH) to the
intake process and to the delivery process, sends --messages through the relay, waits for the
queue to drain and prints each process's calls per message and its user/system CPU per message.

    .venv/bin/python bench/serve_syscalls.py [--mxroute PATH] [--messages 1000]
        [--pyspy .venv/bin/py-spy] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import accept_latency as al


def cpu(pid: int) -> tuple[int, int]:
    """utime and stime of one process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mxroute", default=str(al.ROOT / ".venv/bin/mxroute"))
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--pyspy", default="", help="py-spy's path: profile instead of strace")
    parser.add_argument("--out", default="/var/tmp/serve-syscalls")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mxroute-syscalls-", dir=args.workdir))
    sink_port, relay_port = al.free_port(), al.free_port()
    sink = al.smtp_sink("127.0.0.1", sink_port)
    env = dict(os.environ, MXROUTE_LISTEN=json.dumps([f"127.0.0.1:{relay_port}"]),
               MXROUTE_SPOOL_DIR=str(work / "spool"), MXROUTE_DNS_SERVERS='["127.0.0.1:1"]',
               MXROUTE_HELO_NAME="relay.test", MXROUTE_ALLOW_PRIVATE_DESTINATIONS="true",
               MXROUTE_ALLOW_ADDRESS_LITERALS="true", MXROUTE_SMTP_PORT=str(sink_port),
               MXROUTE_RELAY_NETWORKS='["127.0.0.0/8"]')
    env.pop("MXROUTE_CONFIG", None)
    with open(work / "relay.log", "wb") as log:
        relay = subprocess.Popen([args.mxroute, "serve"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    tracers: list[subprocess.Popen[bytes]] = []
    try:
        al.wait_listening(relay_port)
        time.sleep(1.5)
        pids = {"intake": relay.pid, "delivery": al.children(relay.pid)[0]}
        for name, pid in pids.items():
            command = (["strace", "-c", "-f", "-p", str(pid), "-o", f"{args.out}.{name}"]
                       if not args.pyspy else
                       [args.pyspy, "record", "-p", str(pid), "-r", "200", "--gil",
                        "--format", "raw", "-o", f"{args.out}.{name}.raw"])
            tracers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        before = {name: cpu(pid) for name, pid in pids.items()}
        asyncio.run(al.load(relay_port, args.messages, args.sessions))
        for _ in range(1200):
            if al.drained(work / "spool"):
                break
            time.sleep(0.1)
        for name, pid in pids.items():
            user, system = (now - then for now, then in zip(cpu(pid), before[name]))
            print(f"{name}: CPU ms/msg user {user * 1000 / al.TICK / args.messages:.3f} "
                  f"system {system * 1000 / al.TICK / args.messages:.3f}")
    finally:
        for tracer in tracers:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(60)
        al.stop_relay(relay)
        sink.terminate()
        sink.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    for name in ("intake", "delivery") if not args.pyspy else ():
        print(f"{name}: system calls per message (>= 0.05)")
        for line in Path(f"{args.out}.{name}").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit() and int(parts[3]) >= args.messages / 20:
                print(f"  {parts[-1]:16s} {int(parts[3]) / args.messages:7.2f}")
            elif "total" in line and len(parts) >= 4:
                print(f"  {'total':16s} {int(parts[3]) / args.messages:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
