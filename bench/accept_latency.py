"""Accept latency of `mxroute serve`: time from the end of DATA (".") to the 250 (issue 6).

relaybench reports rates, not latency; this measures the other half of the promise that
a 250 means fsync'd. S client sessions (asyncio, persistent, lock-step like smtp-source)
send M messages of ~2.3 KB through the relay to a Postfix `smtp-sink` on loopback
(recipients are address literals `u<n>@[127.0.0.1]`, so no DNS is involved), and the
DATA-end→250 times are reported as p50/p90/p99/max, beside the accept rate. The spool
is a fresh directory under --workdir (real disk, so the fsyncs are real).

It also reports the relay's CPU per message, split by process (issue 23): the intake process
(`serve`) and the delivery process (its child), from /proc before the load and after the queue
has drained, so branches can be compared without relaybench (`--mxroute` names another tree's
entry point; `--runs` repeats, each on a fresh spool, and prints the medians).

    .venv/bin/python bench/accept_latency.py [--messages 10000] [--sessions 50] [--runs 1]
        [--mxroute PATH] [--label L] [--json-out F]
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def session(port: int, count: int, first: int, latencies: list[float] | None = None,
                  to: str = "[127.0.0.1]") -> None:
    """One persistent, lock-step session (as smtp-source): ``count`` messages to u<n>@``to``;
    the DATA-end -> 250 times appended to ``latencies`` when given. The benches' one client."""
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
        rcpt = f"u{n}@{to}".encode()
        for command in (b"MAIL FROM:<bench@sender.test>", b"RCPT TO:<" + rcpt + b">", b"DATA"):
            writer.write(command + b"\r\n")
            code = await reply()
            assert code[:1] in (b"2", b"3"), code
        writer.write(b"From: bench@sender.test\r\nTo: " + rcpt
                     + b"\r\nSubject: bench %d\r\n\r\n" % n + BODY)
        started = time.perf_counter()
        writer.write(b".\r\n")
        code = await reply()
        if latencies is not None:
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


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (0 when it is gone)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime of a /proc .../stat file (a process or one of its threads; 0 if gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def smtp_sink(host: str, port: int) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink on ``host``:``port`` (it refuses to run as root without -u)."""
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []
    return subprocess.Popen(["smtp-sink", *as_root, "-c", f"{host}:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_listening(port: int, host: str = "127.0.0.1") -> None:
    """Until ``serve`` accepts on ``port`` (at most 10 s)."""
    for _ in range(200):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


def stop_relay(relay: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    relay.send_signal(signal.SIGTERM)
    try:
        relay.wait(15)
    except subprocess.TimeoutExpired:
        relay.kill()
        relay.wait()


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def drained(spool: Path) -> bool:
    queue = spool / "queue"
    return not queue.is_dir() or not any(queue.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--mxroute", type=Path, default=ROOT / ".venv/bin/mxroute")
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    runs = [one_run(args) for _ in range(args.runs)]
    if args.runs > 1:
        keys = ("accept_msgs_per_s", "p50_ms", "p99_ms", "intake_cpu_ms_per_msg",
                "delivery_cpu_ms_per_msg", "relay_cpu_ms_per_msg")
        medians = {k: sorted(float(str(r[k])) for r in runs)[len(runs) // 2] for k in keys}
        print("medians of", args.runs, "runs:", json.dumps(medians))
    return 0


def one_run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="mxroute-latency-", dir=args.workdir))
    sink_port, relay_port = free_port(), free_port()
    sink = smtp_sink("127.0.0.1", sink_port)
    env = dict(os.environ, MXROUTE_LISTEN=json.dumps([f"127.0.0.1:{relay_port}"]),
               MXROUTE_SPOOL_DIR=str(work / "spool"),
               MXROUTE_DNS_SERVERS='["127.0.0.1:1"]', MXROUTE_HELO_NAME="relay.test",
               MXROUTE_ALLOW_PRIVATE_DESTINATIONS="true", MXROUTE_ALLOW_ADDRESS_LITERALS="true",
               MXROUTE_SMTP_PORT=str(sink_port), MXROUTE_RELAY_NETWORKS='["127.0.0.0/8"]')
    env.pop("MXROUTE_CONFIG", None)
    with open(work / "relay.log", "wb") as log:
        # cwd outside any checkout: the delivery process (``python -c``) imports mxroute from
        # its cwd first, so --mxroute of another tree would otherwise run this tree's half
        relay = subprocess.Popen([str(args.mxroute), "serve"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=work)
    try:
        wait_listening(relay_port)
        time.sleep(1.0)  # the delivery process has started and recovered the (empty) queue
        workers = children(relay.pid)
        before = (cpu_seconds(relay.pid), sum(cpu_seconds(c) for c in workers))
        latencies, elapsed = asyncio.run(load(relay_port, args.messages, args.sessions))
        for _ in range(1200):  # at most 120 s for the queue to drain
            if drained(work / "spool"):
                break
            time.sleep(0.1)
        intake_cpu = cpu_seconds(relay.pid) - before[0]
        delivery_cpu = sum(cpu_seconds(c) for c in workers) - before[1]
        ms = [v * 1000 for v in latencies]
        result: dict[str, object] = {
            "bench": "accept_latency", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "label": args.label, "messages": len(ms), "sessions": args.sessions,
            "accept_msgs_per_s": round(len(ms) / elapsed, 1),
            "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2),
            "drained": drained(work / "spool"), "delivery_processes": len(workers),
            "intake_cpu_ms_per_msg": round(intake_cpu * 1000 / len(ms), 3),
            "delivery_cpu_ms_per_msg": round(delivery_cpu * 1000 / len(ms), 3),
            "relay_cpu_ms_per_msg": round((intake_cpu + delivery_cpu) * 1000 / len(ms), 3),
            "loadavg_1m": os.getloadavg()[0],
        }
        print(f"{len(ms)} messages over {args.sessions} sessions: "
              f"accept {result['accept_msgs_per_s']} msgs/s; "
              f"DATA-end -> 250: p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
              f"p99 {result['p99_ms']} ms, "
              f"max {result['max_ms']} ms; CPU ms/msg intake {result['intake_cpu_ms_per_msg']}, "
              f"delivery {result['delivery_cpu_ms_per_msg']} (drained: {result['drained']})")
        print(json.dumps(result))
        if args.json_out:
            with open(args.json_out, "a") as out:
                out.write(json.dumps(result) + "\n")
        return result
    finally:
        stop_relay(relay)
        sink.terminate()
        sink.wait(5)
        if sink.returncode not in (0, -signal.SIGTERM):
            print(f"smtp-sink exited {sink.returncode}: the figures are not valid", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
