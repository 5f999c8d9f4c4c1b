"""A private ``redis-server`` (Debian's) for the fleet tests (issue 19): its own loopback address
in 127.0.19.0/24 and a fresh port (never the Debian service's 6379), no persistence
(``--save ''``, ``--appendonly no``), its files in a temporary directory, stopped by its PID.

``start_redis(root)`` starts one (with ``user``/``password``: an ACL user, the default user
off; with ``tls=(cert, key)``: TLS only, for ``rediss://``); ``server.kill()`` kills it as a
crash would, ``server.start()`` starts it again on the same address and port; ``stop()`` ends
it for good. ``redis_server`` (tests/conftest.py) is the
fixture: one server a test, stopped after it. Missing ``redis-server``: skip here, fail under
CI=true (.ci/run installs the Debian package).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.relay import free_port

REDIS_SERVER = "redis-server"
HOST = "127.0.19.1"  # issue 19's addresses: 127.0.19.0/24
IN_CI = os.environ.get("CI") == "true"


def need_redis() -> str:
    """The path of ``redis-server``: skip when it is missing here, fail under CI=true."""
    path = shutil.which(REDIS_SERVER) or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None)
    if path is None:
        if IN_CI:
            pytest.fail("redis-server is not installed: .ci/run installs the Debian package "
                        "redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI installs it")
    return path


class RedisServer:
    """One ``redis-server`` process on ``host``:``port`` (see the module docstring)."""

    def __init__(self, root: Path, host: str = HOST, *, user: str | None = None,
                 password: str | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.binary = need_redis()
        self.root, self.host, self.port = root, host, free_port(host)
        self.user, self.password = user, password
        self.tls = tls  # (cert.pem, key.pem): TLS only (rediss://), no client certificates
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://[user@]host:port/0`` (never a password)."""
        user = f"{self.user}@" if self.user else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.root / "redis.log"

    def args(self) -> list[str]:
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                     str(self.tls[0]), "--tls-key-file", str(self.tls[1]), "--tls-auth-clients",
                     "no"]
        args = [self.binary, "--bind", self.host, *ports, "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no",
                "--protected-mode", "no", "--logfile", str(self.log_path)]
        if self.password is not None:
            name = self.user or "default"
            args += ["--user", name, "on", f">{self.password}", "~*", "&*", "+@all"]
            if name != "default":
                args += ["--user", "default", "off"]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it (again) and wait, bounded, until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self.args(), cwd=self.root, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            if self.answering():
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not start on {self.host}:{self.port}:\n{self.log()}")

    def answering(self) -> bool:
        """A PING gets an answer (PONG, or NOAUTH with a password); with TLS, unverified (the
        fixture only asks whether it is up)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as raw:
                sock = raw
                if self.tls is not None:
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                    sock = context.wrap_socket(raw)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """Kill it as a crash would (SIGKILL, by PID), and wait for the end."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """End it (SIGTERM by PID, SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def start_redis(root: Path, host: str = HOST, **options: Any) -> RedisServer:
    """A started ``RedisServer`` (``options``: ``user``, ``password``, ``tls``)."""
    return RedisServer(root, host, **options).start()


__all__ = ["HOST", "RedisServer", "need_redis", "start_redis"]
