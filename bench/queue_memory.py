"""Memory per queued message and start-up recovery time of `mxroute serve` (issue 6).

Builds a spool of N messages (default 100,000) for one unreachable destination
(`u<n>@unreachable.test`, each ~2.3 KB like relaybench's, already tried once and
deferred for an hour: the steady state of a destination that is down), then starts
`mxroute serve` on it and measures

* ready: time from exec to the 220 banner on the listen port (issue 23: the intake listens
  while the delivery process still recovers; before, it scanned every queue file first);
* scheduled: time from exec to the delivery process's "recovery: N message(s) queued" log
  line (every queued message is then in its schedule), and that count;
* RSS: VmRSS of the daemon and its delivery process 2 s after recovery, and VmHWM (their
  peaks), summed;
* base: the same for an empty spool; per message = (RSS - base) / N.

The files are written with the spool's own encoder (`mxroute.relay.spool.format.encode`), without an
fsync each (one `sync` at the end): building is not what is measured. Traffic: none
leaves the machine (DNS points at 127.0.0.1:1, nothing is due). Needs no root.

    .venv/bin/python bench/queue_memory.py [--messages 100000] [--keep DIR] [--json-out F]
        [--drop-caches] [--runs 3] [--mxroute PATH]
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT))

from mxroute.relay.spool.format import MessageMeta, RecipientState, encode, new_queue_id

BODY = (b"From: bench@sender.test\r\nTo: someone@unreachable.test\r\nSubject: queued\r\n\r\n"
        + b"".join(b"%05d " % i + b"x" * 64 + b"\r\n" for i in range(31)))  # ~2.3 KB


def build(spool: Path, count: int) -> float:
    started = time.monotonic()
    queue = spool / "queue"
    for sub in ("queue", "tmp", "corrupt"):
        (spool / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    spool.chmod(0o700)
    now = time.time()
    for n in range(count):
        qid = new_queue_id()
        received = (f"Received: from client.test ([127.0.0.1])\r\n"
                    f"\tby relay.test with ESMTP id {qid}\r\n"
                    f"\tfor <u{n}@unreachable.test>; Mon, 30 Nov 2026 12:00:00 +0000\r\n").encode()
        message = received + BODY
        meta = MessageMeta(
            queue_id=qid, sender=f"app{n % 100}@sender.test", arrival=now - 60, size=len(message),
            client="client.test [127.0.0.1]",
            recipients=[RecipientState(
                address=f"u{n}@unreachable.test", attempts=1, next_try=now + 3600, status="4.4.1",
                reply="451 4.4.1 connect to mx.unreachable.test[127.0.0.1]:25: Connection refused",
                why="deferred",
                hosts={"mx.unreachable.test[127.0.0.1]:25":
                       "451 4.4.1 connect: Connection refused"})],
        )
        fd = os.open(queue / qid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, encode(meta, message))
        finally:
            os.close(fd)
    os.sync()
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of the daemon and its children (the delivery process), summed."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    for proc in (pid, *children):
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] += int(value.split()[0])
    return out


def scheduled_at(log: Path) -> int | None:
    """The count of the "recovery: N message(s) queued" line in ``log``, None before it."""
    for line in log.read_text(errors="replace").splitlines():
        if "recovery:" in line and "queued" in line:
            return int(line.split("recovery:")[1].split()[0])
    return None


def measure(spool: Path, log: Path, binary: Path,
            timeout: float = 120.0) -> dict[str, float | None]:
    port = free_port()
    env = dict(os.environ, MXROUTE_LISTEN=json.dumps([f"127.0.0.1:{port}"]),
               MXROUTE_SPOOL_DIR=str(spool),
               MXROUTE_DNS_SERVERS='["127.0.0.1:1"]', MXROUTE_HELO_NAME="relay.test",
               MXROUTE_RETRY_MIN_SECONDS="3600", MXROUTE_RETRY_MAX_SECONDS="3600")
    env.pop("MXROUTE_CONFIG", None)
    with open(log, "wb") as out:
        started = time.monotonic()
        # cwd outside any checkout: the delivery process (``python -c``) imports mxroute from
        # its cwd first, so --mxroute of another tree would otherwise run this tree's half
        proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=spool.parent)
        try:
            deadline = started + timeout
            ready = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                        if conn.recv(64).startswith(b"220"):
                            ready = time.monotonic() - started
                            break
                except OSError:
                    time.sleep(0.02)
            if ready is None:
                raise SystemExit(f"relay not ready within {timeout}s; see {log}")
            scheduled, recovered = None, None
            while time.monotonic() < deadline and proc.poll() is None:
                recovered = scheduled_at(log)
                if recovered is not None:
                    scheduled = time.monotonic() - started
                    break
                time.sleep(0.01)
            if scheduled is None:
                raise SystemExit(f"no recovery line within {timeout}s; see {log}")
            time.sleep(2.0)
            mem = status(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"ready_s": round(ready, 3), "scheduled_s": round(scheduled, 3),
            "rss_kb": mem["VmRSS"], "hwm_kb": mem["VmHWM"], "recovered": recovered}


def report(args: argparse.Namespace, work: Path, full: Path, files: int,
           base: dict[str, float | None]) -> None:
    """One loaded start: printed, and appended to ``--json-out``."""
    if args.drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    loaded = measure(full, work / "full.log", args.mxroute)
    per_msg = (float(loaded["rss_kb"] or 0) - float(base["rss_kb"] or 0)) * 1024 / files
    result = {
        "bench": "queue_memory", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "messages": files,
        "base_rss_mib": round(float(base["rss_kb"] or 0) / 1024, 1),
        "base_ready_s": base["ready_s"],
        "loaded_rss_mib": round(float(loaded["rss_kb"] or 0) / 1024, 1),
        "loaded_peak_rss_mib": round(float(loaded["hwm_kb"] or 0) / 1024, 1),
        "bytes_per_queued_message": round(per_msg), "recovery_ready_s": loaded["ready_s"],
        "all_scheduled_s": loaded["scheduled_s"],
        "recovered": loaded["recovered"], "cold_cache": args.drop_caches,
        "spool_mib": round(sum(e.stat().st_size for e in os.scandir(full / "queue")) / 2**20,
                           1),
    }
    print(f"empty spool: RSS {result['base_rss_mib']} MiB, "
          f"ready in {float(base['ready_s'] or 0):.2f}s")
    print(f"{files} queued: RSS {result['loaded_rss_mib']} MiB "
          f"(peak {result['loaded_peak_rss_mib']} MiB), "
          f"220 in {float(loaded['ready_s'] or 0):.2f}s, all {loaded['recovered']} scheduled in "
          f"{float(loaded['scheduled_s'] or 0):.2f}s")
    print(f"=> {per_msg:.0f} bytes of RSS per queued message beyond the base (target < 2048)")
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "a") as out:
            out.write(json.dumps(result) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--keep", type=Path,
                        help="build the spool here and keep it (reused if it exists)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache before the loaded start "
                             "(cold recovery; needs root)")
    parser.add_argument("--runs", type=int, default=1, help="loaded starts (each printed)")
    parser.add_argument("--mxroute", type=Path, default=ROOT / ".venv/bin/mxroute",
                        help="the mxroute executable to start (e.g. another checkout's)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="mxroute-qmem-", dir="/var/tmp"))
    try:
        empty, full = work / "empty", work / "full"
        built = None
        if not (full / "queue").is_dir():
            built = build(full, args.messages)
            print(f"built {args.messages} queue files in {built:.1f}s under {full}", flush=True)
        files = sum(1 for _ in os.scandir(full / "queue"))
        (empty / "queue").mkdir(parents=True, exist_ok=True)
        base = measure(empty, work / "empty.log", args.mxroute)
        for _ in range(args.runs):
            report(args, work, full, files, base)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
