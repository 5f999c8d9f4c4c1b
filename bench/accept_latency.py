"""Accept latency of `mxroute serve`: time from the end of DATA (".") to the 250 (issue 6).

relaybench reports rates, not latency; this measures the other half of the promise that
a 250 means fsync'd. S client sessions (asyncio, persistent, lock-step like smtp-source)
send M messages of ~2.3 KB through the relay to a Postfix `smtp-sink` on loopback
(recipients are address literals `u<n>@[127.0.0.1]`, so no DNS is involved), and the
DATA-end→250 times are reported as p50/p90/p99/max, beside the accept rate. The spool
is a fresh directory under --workdir (real disk, so the fsyncs are real).

    .venv/bin/python bench/accept_latency.py [--messages 10000] [--sessions 50] [--json-out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = b"".join(b"%05d " % i + b"x" * 64 + b"\r\n" for i in range(31))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def session(port: int, count: int, first: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    assert (await reply()).startswith(b"220")
    writer.write(b"EHLO client.test\r\n")
    assert (await reply()).startswith(b"250")
    for n in range(first, first + count):
        for command in (b"MAIL FROM:<bench@sender.test>", b"RCPT TO:<u%d@[127.0.0.1]>" % n,
                        b"DATA"):
            writer.write(command + b"\r\n")
            code = await reply()
            assert code[:1] in (b"2", b"3"), code
        header = (b"From: bench@sender.test\r\nTo: u%d@[127.0.0.1]\r\n"
                  b"Subject: latency %d\r\n\r\n" % (n, n))
        writer.write(header + BODY)
        started = time.perf_counter()
        writer.write(b".\r\n")
        code = await reply()
        latencies.append(time.perf_counter() - started)
        assert code.startswith(b"250"), code
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


async def load(port: int, messages: int, sessions: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    per = messages // sessions
    started = time.perf_counter()
    await asyncio.gather(*(session(port, per, i * per, latencies) for i in range(sessions)))
    return latencies, time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mxroute-latency-", dir=args.workdir))
    sink_port, relay_port = free_port(), free_port()
    sink = subprocess.Popen(["smtp-sink", "-c", f"127.0.0.1:{sink_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, MXROUTE_LISTEN=json.dumps([f"127.0.0.1:{relay_port}"]),
               MXROUTE_SPOOL_DIR=str(work / "spool"),
               MXROUTE_DNS_SERVERS='["127.0.0.1:1"]', MXROUTE_HELO_NAME="relay.test",
               MXROUTE_ALLOW_PRIVATE_DESTINATIONS="true", MXROUTE_ALLOW_ADDRESS_LITERALS="true",
               MXROUTE_SMTP_PORT=str(sink_port), MXROUTE_RELAY_NETWORKS='["127.0.0.0/8"]')
    env.pop("MXROUTE_CONFIG", None)
    with open(work / "relay.log", "wb") as log:
        relay = subprocess.Popen([str(ROOT / ".venv/bin/mxroute"), "serve"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", relay_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        latencies, elapsed = asyncio.run(load(relay_port, args.messages, args.sessions))
        ms = [v * 1000 for v in latencies]
        result = {
            "bench": "accept_latency", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "messages": len(ms), "sessions": args.sessions,
            "accept_msgs_per_s": round(len(ms) / elapsed, 1),
            "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2),
        }
        print(f"{len(ms)} messages over {args.sessions} sessions: "
              f"accept {result['accept_msgs_per_s']} msgs/s; "
              f"DATA-end -> 250: p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
              f"p99 {result['p99_ms']} ms, "
              f"max {result['max_ms']} ms")
        print(json.dumps(result))
        if args.json_out:
            with open(args.json_out, "a") as out:
                out.write(json.dumps(result) + "\n")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
