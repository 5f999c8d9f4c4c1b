"""Record what the real ``mxroute serve`` does to its spool, under strace (issue 21).

``record(tmp, dns)`` runs ``serve`` (intake and delivery process) under ``strace -f`` for a
workload that takes every spool path: acceptance by three concurrent clients (group commit),
delivery, deferral and its state record, a ``550`` and its DSN, expiry and its DSN,
``mxroute queue hold``/``delete``/``flush``, a clean stop with messages queued (issue 23: the
schedule snapshot ``spool/schedule`` written), a start from it, a release and new messages, a
SIGKILL, and the start-up recovery from the then stale snapshot. It returns a ``Recording``:
the spool ops (``stracefs``), the ``250``s written to clients (ops of kind ``ack``), each
message's recipients, and when the sinks took each recipient and each DSN (their wall clock,
strace's clock).

Sinks on 127.0.21.x (issue 21's addresses), the relay listening on 127.0.21.200.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.crashmodel import Op, Trace
from tests.support.dnsserver import DNSServer
from tests.support.relay import Relay, free_port, wait_for
from tests.support.smtpsink import Sink
from tests.support.stracefs import TRACED, parse

NET = "127.0.21"
RELAY_HOST = f"{NET}.200"
LIFETIME = 6  # queue_lifetime_seconds of the recording: slow.test's mail expires within it
FINAL = re.compile(rb"(?im)^Final-Recipient:\s*rfc822;\s*(\S+)")
QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


def strace_problem() -> str | None:
    """Why strace cannot trace here (not installed, ptrace refused), or None."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync", "true"],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        return f"strace cannot trace here: {done.stderr.strip()[:200]}"
    return None


@dataclass
class Recording:
    """What one recorded run did and what its peers saw."""

    root: str  # the spool directory that was traced
    ops: list[Op]
    recipients: dict[str, list[str]] = field(default_factory=dict)  # queue ID -> recipients
    delivered: list[tuple[float, str]] = field(default_factory=list)  # (sink's time, rcpt)
    notified: list[tuple[float, str]] = field(default_factory=list)  # (time, Final-Recipient)
    deleted: dict[str, float] = field(default_factory=dict)  # queue ID -> `queue delete` asked
    log: str = ""

    def trace(self) -> Trace:
        return Trace(self.ops)


class _Traced:
    """``serve`` under strace: started by ``Relay`` with ``wrap``; stopped through its PID."""

    def __init__(self, relay: Relay, out: Path) -> None:
        self.relay = relay
        relay.wrap = ["strace", "-f", "-qq", "-ttt", "-y", "-xx", "-s", "4194304",
                      "-e", f"trace={TRACED}", "-o", str(out)]
        relay.start()

    def serve_pid(self) -> int:
        assert self.relay.proc is not None
        tracer = self.relay.proc.pid
        children = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
        return int(children[0])

    def stop(self, sig: int) -> None:
        os.kill(self.serve_pid(), sig)
        assert self.relay.proc is not None
        self.relay.proc.wait(timeout=30)


def _submit(relay: Relay, token: str, rcpts: list[str], acks: dict[str, str]) -> None:
    body = (f"From: a@sender.test\r\nSubject: {token}\r\nMessage-ID: <{token}@sender.test>"
            f"\r\n\r\ncrash states {token}\r\n" + "x" * 300 + "\r\n").encode()
    with smtplib.SMTP(relay.host, relay.port, timeout=20) as client:
        client.ehlo("load.test")
        client.mail("a@sender.test")
        for rcpt in rcpts:
            client.rcpt(rcpt)
        code, text = client.data(body)
    found = QUEUED.search(text.decode())
    assert code == 250 and found, (code, text)
    acks[token] = found.group(1)


def _burst(relay: Relay, tokens: list[str], acks: dict[str, str]) -> None:
    """Three clients at once (the intake's group commit), one message per connection."""

    def run(mine: list[str]) -> None:
        for token in mine:
            rcpts = [f"{token}-a@ok.test"]
            number = int(token.rsplit("m", 1)[1])
            if number % 2:
                rcpts.append(f"{token}-b@slow.test")  # 451: deferred, then expired
            if number % 3 == 0:
                rcpts.append(f"{token}-c@bad.test")  # 550: a DSN
            _submit(relay, token, rcpts, acks)

    threads = [threading.Thread(target=run, args=(tokens[n::3],)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def _sinks(port: int) -> dict[str, Sink]:
    sinks = {
        "ok": Sink(f"{NET}.1", port, delays={".": 0.02}),
        "slow": Sink(f"{NET}.2", port, replies={"RCPT": {"*": "451 4.3.0 try later"}}),
        "bad": Sink(f"{NET}.3", port, replies={"RCPT": {"*": "550 5.1.1 no such user"}}),
        "sender": Sink(f"{NET}.9", port),
    }
    for sink in sinks.values():
        sink.start()
    return sinks


def zone(dns: DNSServer, hosts: dict[str, str]) -> None:
    """ok/slow/bad/sender.test each at its sink address."""
    records = "".join(f"{name} IN MX 10 mx.{name}.test.\nmx.{name} IN A {ip}\n"
                      for name, ip in hosts.items())
    dns.set_zone(f"$ORIGIN test.\n$TTL 1\n@ IN SOA ns.test. host.test. 1 3600 600 86400 1\n"
                 f"{records}")


def _release(relay: Relay, queue_id: str) -> None:
    """``queue release`` just after a restart under strace: while the delivery process still
    recovers, the tool may get no answer in time (exit 75: try again, nothing was done); the
    message may also have expired or been delivered meanwhile (66). Bounded retries."""
    done = None
    for _ in range(30):
        done = relay.queue("release", queue_id)
        if done.returncode in (0, 66):
            return
        time.sleep(1.0)
    assert done is not None
    raise AssertionError(f"queue release {queue_id}: exit {done.returncode}: {done.stderr}")


def record(tmp: Path, dns: DNSServer) -> Recording:
    """Run the workload under strace; the recording."""
    port = free_port(f"{NET}.1")
    sinks = _sinks(port)
    zone(dns, {"ok": f"{NET}.1", "slow": f"{NET}.2", "bad": f"{NET}.3", "sender": f"{NET}.9"})
    relay = Relay(tmp, dns, port, host=RELAY_HOST, queue_lifetime_seconds=LIFETIME,
                  bounce_lifetime_seconds=600, retry_min_seconds=1, retry_max_seconds=2)
    acks: dict[str, str] = {}
    deleted: dict[str, float] = {}
    try:
        traced = _Traced(relay, tmp / "trace1.txt")
        _burst(relay, [f"t{n}m{i}" for n in range(3) for i in range(4)], acks)
        slow = [acks[t] for t in sorted(acks) if int(t.rsplit("m", 1)[1]) % 2]
        assert relay.queue("hold", slow[0]).returncode == 0
        deleted[slow[1]] = time.time()
        assert relay.queue("delete", slow[1]).returncode == 0
        assert relay.queue("flush").returncode == 0
        wait_for(lambda: len(relay.queued()) <= 2, timeout=LIFETIME + 15)
        _burst(relay, ["k0m1", "k1m3", "k2m5"], acks)  # queued, deferred: then a clean stop
        time.sleep(0.5)
        traced.stop(signal.SIGTERM)  # issue 23: writes spool/schedule with them in it
        traced = _Traced(relay, tmp / "trace2.txt")  # recovery from the snapshot
        if relay.queued():
            _release(relay, relay.queued()[0])
        _burst(relay, ["s0m3", "s1m1"], acks)  # new after the snapshot: then SIGKILL
        time.sleep(0.5)
        traced.stop(signal.SIGKILL)
        traced = _Traced(relay, tmp / "trace3.txt")  # recovery with a stale snapshot
        _burst(relay, ["r0m2", "r1m4", "r2m1"], acks)
        wait_for(lambda: not relay.queued(), timeout=LIFETIME + 15)
        traced.stop(signal.SIGTERM)
    except BaseException:
        relay.kill()
        raise
    finally:
        for sink in sinks.values():
            sink.stop()
    text = "".join((tmp / f"trace{n}.txt").read_text() for n in (1, 2, 3))
    ops = parse(text, str(relay.spool))
    if not any(op.kind == "fsync" for op in ops):
        pytest.fail(f"strace recorded no fsync under {relay.spool}: {text[:2000]}")
    rec = Recording(str(relay.spool), ops, deleted=deleted, log=relay.log())
    rec.recipients = _recipients(rec.trace())
    for name in ("ok", "slow", "bad"):
        rec.delivered += [(m.wall, r.lower()) for m in sinks[name].messages for r in m.rcpt_to]
    rec.notified = [(m.wall, f.decode().lower()) for m in sinks["sender"].messages
                    for f in FINAL.findall(m.data or b"")]
    return rec


def _recipients(trace: Trace) -> dict[str, list[str]]:
    """Each queue ID's recipients, from the bytes written to its file before its rename."""
    from mxroute.relay.spool.format import CorruptFile, decode

    found: dict[str, list[str]] = {}
    for event in trace.events:
        op = event.op
        if op.kind == "rename" and op.dst.startswith("queue/"):
            disk = trace.materialize(trace.choices(event.index + 1, random.Random(0), 0)[0])
            queue_id = op.dst.split("/", 1)[1]
            try:
                meta, _, _ = decode(disk.files.get(op.dst, b""), queue_id)
            except CorruptFile:
                continue
            found[queue_id] = [r.address.lower() for r in meta.recipients]
    return found


def serve_state(files: Path, tmp: Path, dns: DNSServer, expect: dict[str, set[str]],
                held: set[str]) -> tuple[set[str], str]:
    """Start the real ``serve`` on a materialized spool (``files``: its directory) against one
    accepting sink for every domain; wait (bounded) until ``expect``'s recipients (queue ID ->
    pending recipients, as in-process recovery found them) are delivered or notified and the
    queue holds only the ``held`` messages. The recipients that never arrived, and the log."""
    port = free_port(f"{NET}.1")
    sink = Sink(f"{NET}.1", port)
    sink.start()
    zone(dns, {name: f"{NET}.1" for name in ("ok", "slow", "bad", "sender")})
    tmp.mkdir(parents=True, exist_ok=True)
    relay = Relay(tmp, dns, port, host=RELAY_HOST)
    shutil.copytree(files, relay.spool)
    wanted = {r for rcpts in expect.values() for r in rcpts}

    def arrived() -> set[str]:
        got = {r.lower() for m in sink.messages for r in m.rcpt_to}
        got |= {f.decode().lower() for m in sink.messages for f in FINAL.findall(m.data or b"")}
        return got

    try:
        relay.start()
        wait_for(lambda: wanted <= arrived() and set(relay.queued()) <= held, timeout=30)
        missing = wanted - arrived()
        relay.terminate()
    finally:
        relay.kill()
        sink.stop()
    return missing, relay.log()


__all__ = [
    "LIFETIME",
    "NET",
    "RELAY_HOST",
    "Recording",
    "record",
    "serve_state",
    "strace_problem",
    "zone",
]
