"""The real `mxroute serve` as a test subject: a subprocess configured by MXROUTE_* only.

``World`` bundles a loopback DNS server, SMTP sinks on 127.1.N.x and the relays a
test started; the ``world`` fixture (tests/conftest.py) stops them all by PID.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import Sink

ROOT = Path(__file__).resolve().parents[2]
_nets = itertools.cycle(range(10, 250))


def next_net() -> int:
    """A fresh N for the 127.1.N.x sink addresses of one test (cycles through 240)."""
    return next(_nets)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def service_env() -> dict[str, str]:
    """This environment without PYTHON* variables (PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE,
    ...) and with PYTHONPATH the checkout: what systemd or a newcomer's shell gives ``serve``,
    whatever the shell running the tests has set (issue 13)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy or ``timeout`` (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    return predicate()


def wait_for_text(read: Callable[[], str], texts: tuple[str, ...], timeout: float = 15.0) -> str:
    """``read()`` once it holds every one of ``texts`` (bounded, as ``wait_for``); the last
    text read otherwise, for the assertion's message."""
    last = [""]

    def holds() -> bool:
        last[0] = read()
        return all(text in last[0] for text in texts)

    wait_for(holds, timeout=timeout)
    return last[0]


# --- the delivery process of a running serve ----------------------------------------------------


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def delivery_pid(relay_pid: int, other_than: int | None = None) -> int:
    """The delivery process of the serve ``relay_pid`` (not ``other_than``), waited for."""
    found = wait_for(
        lambda: [p for p in children(relay_pid) if p != other_than and alive(p)], timeout=15
    )
    assert found, "no delivery process"
    (pid,) = found
    return pid


# --- SMTP sinks: tests/support/smtpsink.py, all on the relay's smtp_port --------------------------


def rcpt_script(sink: Sink, address: str, reply: str | None) -> None:
    """Script the RCPT reply for ``address`` (None: back to normal)."""
    table = sink.replies.setdefault("RCPT", {})
    if reply is None:
        table.pop(address, None)
    else:
        table[address] = reply


# --- the relay process ---------------------------------------------------------------------------

class Relay:
    """``python -m mxroute serve`` as a subprocess, configured by environment only."""

    def __init__(self, tmp: Path, dns: DNSServer, smtp_port: int, port: int | None = None,
                 host: str = "127.0.0.1", **settings: Any) -> None:
        # where start() waits for the greeting: the first of ``listen`` when a test sets it
        self.host = host
        self.port = port or free_port(host)
        self.wrap: list[str] = []  # a command ``serve`` runs under (issue 21: strace)
        self.spool = tmp / "spool"
        self.log_path = tmp / "relay.log"
        self.env = service_env()
        values: dict[str, Any] = {
            "listen": [f"{host}:{self.port}"],
            "spool_dir": str(self.spool),
            "dns_servers": [dns.address],
            "smtp_port": smtp_port,
            "allow_private_destinations": True,
            "helo_name": "relay.test",
            "retry_min_seconds": 1,
            "retry_max_seconds": 2,
            "dns_timeout": 1.0,
            "connect_timeout": 2.0,
            **settings,
        }
        for name, value in values.items():
            self.env[f"MXROUTE_{name.upper()}"] = (
                value if isinstance(value, str) else json.dumps(value)
            )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, stdout: int | None = None) -> Relay:
        """Start ``serve`` with stdout and stderr to ``log_path`` (or to the descriptor
        ``stdout``) and wait, bounded, for its banner."""
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*self.wrap, sys.executable, "-m", "mxroute", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log if stdout is None else stdout,
                stderr=subprocess.STDOUT,
            )
        if not wait_for(self._ready, timeout=20):
            self.kill()
            pytest.fail(f"relay did not start:\n{self.log()}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"relay exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                return sock.recv(100).startswith(b"220")
        except OSError:
            return False

    def log(self) -> str:
        """The log so far (read once: to assert a line, wait for it with ``logged``)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, *texts: str, timeout: float = 15.0) -> str:
        """The log once it holds every one of ``texts`` (bounded wait: a line comes within
        about 0.1 s of its event, see mxroute/service/logsetup.py); the log so far otherwise."""
        return wait_for_text(self.log, texts, timeout)

    def client(self, source: str | None = None) -> smtplib.SMTP:
        client = smtplib.SMTP(self.host, self.port, timeout=10,
                              source_address=(source, 0) if source else None)
        client.ehlo("client.test")
        return client

    def send(self, sender: str, rcpts: list[str], body: bytes, **kwargs: Any) -> dict[str, Any]:
        with self.client() as client:
            return client.sendmail(sender, rcpts, body, **kwargs)

    def queue(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mxroute", "queue", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def queued(self) -> list[str]:
        queue_dir = self.spool / "queue"
        return sorted(p.name for p in queue_dir.iterdir()) if queue_dir.exists() else []

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class World:
    tmp: Path
    dns: DNSServer
    net: int
    sink_port: int
    sinks: list[Sink] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)

    base: str = "127.1"  # the sinks are on {base}.{net}.x

    def ip(self, n: int) -> str:
        return f"{self.base}.{self.net}.{n}"

    def sink(self, n: int, **kwargs: Any) -> Sink:
        sink = Sink(self.ip(n), self.sink_port, **kwargs)
        sink.start()
        self.sinks.append(sink)
        return sink

    def zone(self, records: str) -> None:
        self.dns.set_zone(
            f"$ORIGIN test.\n$TTL 1\n@ IN SOA ns.test. host.test. 1 3600 600 86400 1\n{records}\n"
        )

    def relay(self, port: int | None = None, home: str | None = None,
              **settings: Any) -> Relay:
        """A started relay; ``home``: its own directory (spool, log) under the world's, for a
        test running several (a fleet, issue 19)."""
        tmp = self.tmp if home is None else self.tmp / home
        tmp.mkdir(exist_ok=True)
        relay = Relay(tmp, self.dns, self.sink_port, port, **settings)
        self.relays.append(relay)  # killed by PID with the world, even if start() fails
        return relay.start()

    def node(self, name: str, **settings: Any) -> Relay:
        """Another ``serve`` with its own spool and log in ``tmp/name`` (a fleet's node, issue
        19), killed by PID with the world."""
        home = self.tmp / name
        home.mkdir(exist_ok=True)
        relay = Relay(home, self.dns, self.sink_port, **settings)
        self.relays.append(relay)
        return relay.start()

    @classmethod
    @contextmanager
    def running(cls, tmp: Path, dns: DNSServer, net: int | None = None,
                base: str = "127.1") -> Iterator[World]:
        """A world on 127.1.N.x (a fresh N unless given; ``base`` instead of 127.1 for a test's
        own range); on exit every relay it started is killed by PID and every sink stopped,
        whatever the test did."""
        net = next_net() if net is None else net
        world = cls(tmp, dns, net, free_port(f"{base}.{net}.1"), base=base)
        try:
            yield world
        finally:
            for relay in world.relays:
                relay.kill()
            for sink in world.sinks:
                sink.stop()


MSG = (b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: hello\r\n"
       b"Message-ID: <1@sender.test>\r\n\r\nbody line\r\n.dot line\r\n")


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """GET /metrics over loopback (no proxy), as {"name{labels}": value}."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        text = response.read().decode()
    finally:
        conn.close()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
