"""Issue 19: ``mxroute check-config`` on ``shared_state`` through the real CLI and a real
``redis-server``: a malformed URL or a password in it (78, naming the setting), a password file
that cannot be read (78), Redis reachable (its version reported), an ACL user with the right and
the wrong password, Redis not answering (advice, exit 0: serve would run alone), and a server
too old for the fleet's scripts (78; a loopback stand-in that answers as Redis 4.0 would)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.redisserver import RedisServer, start_redis
from tests.support.relay import free_port

HOST = "127.0.29.2"  # issue 19 (fleetview)'s addresses: 127.0.29.0/24


def check(tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    full.update({"PYTHONPATH": str(ROOT), "MXROUTE_HELO_NAME": "relay.t",
                 "MXROUTE_SPOOL_DIR": str(tmp / "spool"), "MXROUTE_DNS_TIMEOUT": "0.5",
                 "MXROUTE_LISTEN": '["127.0.29.2:2525"]', **env})
    return subprocess.run([sys.executable, "-m", "mxroute", "check-config", "--json"],
                          capture_output=True, text=True, env=full, cwd=ROOT, timeout=60,
                          check=False)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", HOST, user="relay", password="s3cret-pass")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["http://127.0.29.2:6379/0", "redis://u:pw@127.0.29.2/0",
                                 "redis://127.0.29.2:6379/zero", "redis:///0"])
def test_a_malformed_url_is_78_naming_the_setting(tmp_path: Path, url: str) -> None:
    """Issue 19: a bad ``shared_state`` stops check-config with 78, the password redacted."""
    done = check(tmp_path, MXROUTE_SHARED_STATE=url)
    assert done.returncode == 78, done
    assert "shared_state" in done.stderr and "pw@" not in done.stderr


def test_reachable_with_the_acl_user_reports_the_version(tmp_path: Path,
                                                         redis: RedisServer) -> None:
    """Issue 19: the ACL user and its password file: reachable, the server's version shown;
    the password never printed."""
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret-pass\n")
    secret.chmod(0o600)
    done = check(tmp_path, MXROUTE_SHARED_STATE=redis.url,
                 MXROUTE_SHARED_STATE_PASSWORD_FILE=str(secret))
    assert done.returncode == 0, done
    found = json.loads(done.stdout)["shared_state_check"]
    version = subprocess.run([redis.binary, "--version"], capture_output=True, text=True,
                             check=True).stdout.split("v=")[1].split()[0]
    assert found == {"url": redis.url, "reachable": True, "version": version, "problem": None}
    assert "s3cret" not in done.stdout + done.stderr


def test_a_wrong_password_or_an_unreadable_file_is_78(tmp_path: Path,
                                                      redis: RedisServer) -> None:
    """Issue 19: Redis refusing the password, or a password file that gives none: 78."""
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not-it\n")
    done = check(tmp_path, MXROUTE_SHARED_STATE=redis.url,
                 MXROUTE_SHARED_STATE_PASSWORD_FILE=str(wrong))
    assert done.returncode == 78 and "shared_state" in done.stderr, done
    assert "not-it" not in done.stderr
    done = check(tmp_path, MXROUTE_SHARED_STATE=redis.url,
                 MXROUTE_SHARED_STATE_PASSWORD_FILE=str(tmp_path / "missing.pass"))
    assert done.returncode == 78 and "shared_state_password_file" in done.stderr, done


def test_redis_not_answering_is_advice(tmp_path: Path) -> None:
    """Issue 19: nobody on the port: reported, exit 0 (serve would run alone, local limits)."""
    url = f"redis://{HOST}:{free_port(HOST)}/0"
    done = check(tmp_path, MXROUTE_SHARED_STATE=url)
    assert done.returncode == 0, done
    found = json.loads(done.stdout)["shared_state_check"]
    assert found["reachable"] is False and found["version"] is None and found["problem"]
    text = subprocess.run([sys.executable, "-m", "mxroute", "check-config"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "MXROUTE_SHARED_STATE": url,
                               "MXROUTE_SPOOL_DIR": str(tmp_path / "spool"),
                               "MXROUTE_LISTEN": '["127.0.29.2:2525"]'})
    assert f"# shared_state {url}: not reachable" in text.stdout, text


class OldRedis:
    """A loopback stand-in answering as Redis 4.0.9 would (RESP2: +OK, +PONG, INFO)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            buffer = b""
            for _ in range(20):  # bounded: a handful of commands
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n" in buffer and buffer.startswith(b"*"):
                    command, buffer = _one_command(buffer)
                    if command is None:
                        break
                    conn.sendall(_reply(command))

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def _one_command(buffer: bytes) -> tuple[list[bytes] | None, bytes]:
    lines = buffer.split(b"\r\n")
    count = int(lines[0][1:])
    if len(lines) < 1 + 2 * count:
        return None, buffer
    words = [lines[2 + 2 * i] for i in range(count)]
    return words, b"\r\n".join(lines[1 + 2 * count:])


def _reply(command: list[bytes]) -> bytes:
    name = command[0].upper()
    if name == b"PING":
        return b"+PONG\r\n"
    if name == b"INFO":
        body = b"# Server\r\nredis_version:4.0.9\r\n"
        return b"$%d\r\n%s\r\n" % (len(body), body)
    return b"+OK\r\n"


def test_a_server_too_old_for_the_scripts_is_78(tmp_path: Path) -> None:
    """Issue 19: Redis 4.0 lacks what the fleet's scripts need: 78, the version named."""
    old = OldRedis()
    try:
        done = check(tmp_path, MXROUTE_SHARED_STATE=f"redis://{HOST}:{old.port}/0")
    finally:
        old.close()
    assert done.returncode == 78, done
    assert "Redis 4.0.9" in done.stderr and "5.0 or later" in done.stderr
