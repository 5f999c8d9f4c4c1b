"""Peak resident memory of `mxroute serve` under a burst of large messages (issue 22).

N clients each send one message of SIZE MB at once (default 1, 10 and 30 clients of 20 MB) to
a relay whose destination (an aiosmtpd sink on loopback) stalls its greeting for STALL s, so
that every accepted message waits for delivery. Measured: VmHWM (peak RSS) of the daemon and of
its delivery process, each minus its RSS before the burst (``base``), summed; and the bytes in
flight (N x SIZE). RAM per byte = (peak - base) / bytes in flight; the replies (250 / 452 4.3.1
when the in-flight budget refuses) are counted. Each client that gets 452 retries after 1 s, as
a real client would, until accepted (bounded).

    .venv/bin/python bench/memory_burst.py [--clients 1,10,30] [--size-mb 20] [--stall 20]
        [--budget BYTES] [--json-out F]

Loopback only (127.0.22.x); DNS is tests/support's DNSServer; needs no root.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dnsserver import DNSServer
from tests.support.procmem import family, vm
from tests.support.relay import Relay, free_port, wait_for
from tests.support.smtpsink import Sink

SINK_IP = "127.0.22.201"


def body(size: int, n: int) -> bytes:
    head = f"From: a@sender.test\r\nTo: u{n}@dest.test\r\nSubject: big {n}\r\n\r\n".encode()
    line = b"x" * 74 + b"\r\n"
    return head + line * (size // len(line))


def client(port: int, n: int, size: int, replies: list[str], retry_for: float) -> None:
    message = body(size, n)
    deadline = time.monotonic() + retry_for
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
                smtp.sendmail("a@sender.test", [f"u{n}@dest.test"], message)
            replies.append("250")
            return
        except smtplib.SMTPResponseException as exc:
            replies.append(f"{exc.smtp_code}")
        except (smtplib.SMTPException, OSError) as exc:
            replies.append(type(exc).__name__)
        if time.monotonic() > deadline:
            return
        time.sleep(1.0)


def run(clients: int, size: int, stall: float, budget: int | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="memburst-") as tmp, \
            DNSServer(host="127.0.22.200") as dns:
        sink_port = free_port(SINK_IP)
        dns.set_zone("$ORIGIN test.\n$TTL 1\n@ IN SOA ns.test. host.test. 1 3600 600 86400 1\n"
                     f"dest IN MX 10 mx.dest.test.\nmx.dest IN A {SINK_IP}\n")
        settings: dict[str, object] = {"relay_networks": ["127.0.0.0/8"],
                                       "max_message_size": max(size * 2, 36700160)}
        if budget is not None:
            settings["max_inflight_bytes"] = budget
        with Sink(SINK_IP, sink_port, delays={"GREETING": stall}, size_limit=None) as sink:
            relay = Relay(Path(tmp), dns, sink_port, **settings).start(
                stdout=subprocess.DEVNULL)
            try:
                assert relay.proc is not None
                pid = relay.proc.pid
                wait_for(lambda: len(family(pid)) > 1, timeout=10)
                pids = family(pid)
                time.sleep(1.0)
                base = {p: vm(p, "VmRSS") for p in pids}
                replies: list[str] = []
                threads = [threading.Thread(target=client, args=(relay.port, n, size, replies,
                                                                 stall * 3 + 60))
                           for n in range(clients)]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=stall * 4 + 120)
                accepted_in = time.monotonic() - started
                sink.wait(lambda s: len(s.messages) >= clients, timeout=stall * 3 + 120)
                peak = {p: vm(p, "VmHWM") for p in pids}
                delivered = len(sink.messages)
            finally:
                relay.kill()
    grown = sum(max(0, peak[p] - base[p]) for p in pids)
    inflight = clients * size
    return {
        "clients": clients, "size_mb": size / 1e6, "stall_s": stall, "budget": budget,
        "base_mib": round(sum(base.values()) / 2**20, 1),
        "peak_mib": round(sum(peak.values()) / 2**20, 1),
        "peak_per_process_mib": [round(peak[p] / 2**20, 1) for p in pids],
        "grown_mib": round(grown / 2**20, 1), "inflight_mib": round(inflight / 2**20, 1),
        "ram_per_byte": round(grown / inflight, 2),
        "replies": {r: replies.count(r) for r in sorted(set(replies))},
        "delivered": delivered, "accepted_in_s": round(accepted_in, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,10,30")
    parser.add_argument("--size-mb", type=float, default=20.0)
    parser.add_argument("--stall", type=float, default=20.0)
    parser.add_argument("--budget", type=int, default=None,
                        help="max_inflight_bytes (default: the relay's own default)")
    parser.add_argument("--label", default="")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    for count in (int(c) for c in args.clients.split(",")):
        result = {"bench": "memory_burst", "label": args.label, "commit": commit,
                  "cpus": os.cpu_count(),
                  **run(count, int(args.size_mb * 1e6), args.stall, args.budget)}
        print(json.dumps(result), flush=True)
        if args.json_out:
            with args.json_out.open("a") as out:
                out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
