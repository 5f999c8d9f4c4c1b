"""Fault, crash and hostile-input suites (issue 7; RFC-CHECKLIST G and H: SEC-1..14, DUR-1..10).

Everything except the in-process fuzzing goes through the real ``mxroute serve``
(tests/support/relay.py's ``Relay``) over loopback, against the loopback DNS
server and SMTP sinks of tests/support. Each suite records its figures with the
``figures`` fixture; they are printed at the end of the run (``pytest -q`` shows
them) by ``pytest_terminal_summary`` below.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.relay import World

FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def figures() -> Callable[..., None]:
    """``figures("crash consistency", sent=.., acknowledged=..)``: one line in the end-of-run
    summary."""

    def record(suite: str, **numbers: Any) -> None:
        FIGURES.append((suite, numbers))

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault suites: figures (tests/faults)")
    for suite, numbers in FIGURES:
        shown = ", ".join(f"{key}={value}" for key, value in numbers.items())
        terminalreporter.write_line(f"{suite}: {shown}")


@pytest.fixture
def fworld(tmp_path: Path, dns_server: DNSServer) -> Iterator[World]:
    """tests/e2e's World (relays, sinks on 127.1.N.x, the zone) for one fault test; everything
    stopped after."""
    with World.running(tmp_path, dns_server) as w:
        w.zone(f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {w.ip(1)}\n"
               f"other IN MX 10 mx1.other.test.\nmx1.other IN A {w.ip(2)}\n"
               f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {w.ip(9)}\n")
        yield w


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; under CI=true the environment must provide it, so fail instead."""
    if in_ci():
        pytest.fail(f"cannot run in CI: {reason}")
    pytest.skip(reason)


def mount_tmpfs(path: Path, size: str) -> None:
    """``mount -t tmpfs -o size=SIZE tmpfs PATH`` or skip/fail with the reason."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)],
                          check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        skip_or_fail(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    for _ in range(20):  # bounded: a lazy unmount as the last resort
        if subprocess.run(["umount", str(path)], check=False, capture_output=True,
                          timeout=30).returncode == 0:
            return
        import time

        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)
