"""The courier's own CPU per message, in-process, against one ``smtp-sink`` (issue 23).

The whole relay's figures (``delivery_cpu.py``, ``accept_latency.py``) move by ±20 % from run to
run on a shared machine; this isolates the courier: C tasks each carry M messages of ~2.3 KB
(one recipient each) through one ``Courier`` to a sink on 127.0.53.20, on reused connections,
under uvloop as ``serve`` runs it, and reports the process's CPU (user + system) per message,
best and median of --runs rounds (the best is the least disturbed by other load). Run it with
each tree's interpreter to compare them (``/work/main/.venv/bin/python bench/courier_cpu.py``).
``--gc-young N`` sets the collector's young generation as the delivery process may.

    .venv/bin/python bench/courier_cpu.py [--tasks 20] [--messages 200] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import time

from mxroute.relay.courier.courier import Courier
from mxroute.relay.envelope import Envelope, Recipient
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.settings import Settings

HOST = "127.0.53.20"
BODY = b"".join(b"%05d " % i + b"x" * 64 + b"\r\n" for i in range(31))


async def carry(courier: Courier, plan: Plan, task: int, messages: int) -> int:
    sent = 0
    for n in range(messages):
        rcpt = Recipient(f"u{task}-{n}@dest.test")
        message = (b"From: bench@sender.test\r\nTo: " + rcpt.address.encode()
                   + b"\r\nSubject: courier %d\r\n\r\n" % n + BODY)
        results = await courier.deliver(plan, Envelope("bench@sender.test", [rcpt]), [rcpt],
                                        message, queue_id="BENCH")
        sent += results[0].disposition.value == "delivered"
    return sent


async def one_round(settings: Settings, plan: Plan, tasks: int, messages: int) -> float:
    courier = Courier(settings)
    await carry(courier, plan, 0, 5)  # warm: a connection, imports
    started = time.process_time()
    sent = sum(await asyncio.gather(*(carry(courier, plan, t, messages) for t in range(tasks))))
    used = time.process_time() - started
    await courier.close()
    assert sent == tasks * messages, f"{sent} of {tasks * messages} delivered"
    return used * 1000 / sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--gc-young", type=int)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if args.gc_young:
        gc.set_threshold(args.gc_young, 20, 20)
    logging_off()
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(["smtp-sink", *as_root, "-c", f"{HOST}:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        settings = Settings(helo_name="relay.test", allow_private_destinations=True,
                            dns_servers=["127.0.0.1:1"])
        plan = Plan("dest.test", Verdict.DELIVERABLE, "1 address", "2.0.0",
                    targets=(Target("mx.dest.test", 10, HOST, 4, port),))
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        figures = sorted(runner(one_round(settings, plan, args.tasks, args.messages))
                         for _ in range(args.runs))
    finally:
        sink.terminate()
        sink.wait(5)
    print(json.dumps({"bench": "courier_cpu", "label": args.label, "tasks": args.tasks,
                      "messages": args.messages, "gc_young": args.gc_young,
                      "best_cpu_ms_per_msg": round(figures[0], 4),
                      "median_cpu_ms_per_msg": round(figures[len(figures) // 2], 4)}))
    return 0


def logging_off() -> None:
    """The delivery line is logged as ``serve`` logs it, to nowhere (its cost is counted)."""
    import logging

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
