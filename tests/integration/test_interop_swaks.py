"""Interop: swaks (a real SMTP client) injects into the real `mxroute serve` (issue 4, "Interop
with real MTAs").

Skipped with a reason when swaks is not installed, except in CI (CI=true), where
a missing swaks is a failure: `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.relay import World, wait_for

SWAKS = shutil.which("swaks")

pytestmark = pytest.mark.interop

if SWAKS is None and os.environ.get("CI") != "true":
    pytest.skip("swaks is not installed (Debian package swaks); CI installs it",
                allow_module_level=True)


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None, "swaks must be installed in CI"
    return subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(port), "--helo",
                           "swaks.test", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_swaks_pipelined_submission_with_dsn_is_relayed(world: World) -> None:
    """swaks, pipelined, two recipients → 250 → one transaction at the MX (SESS-19 header on top).

    (swaks 20201014 in Debian 12 has no DSN options; DSN parameters are covered in tests/e2e.)
    """
    sink = world.sink(1)
    relay = world.relay()
    result = swaks(relay.port, "--from", "a@sender.test", "--to", "u@dest.test,v@dest.test",
                   "--pipeline",
                   "--header", "Subject: swaks interop", "--body", "hello from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    assert wait_for(lambda: sink.messages)
    (got,) = sink.messages
    assert sorted(got.rcpt_to) == ["u@dest.test", "v@dest.test"]
    assert got.data.startswith(b"Received: from swaks.test (unknown [127.0.0.1])")  # no PTR: C5
    assert b"Subject: swaks interop" in got.data


def test_swaks_relay_denied_and_smuggling_attempt_refused(world: World) -> None:
    """SEC-3 through swaks from 127.0.0.9; SEC-1: a bare-CR body is refused with 550 5.5.2."""
    world.sink(1)
    relay = world.relay(relay_networks=["127.0.0.1/32"])
    denied = swaks(relay.port, "--from", "a@sender.test", "--to", "u@ext.test",
                   "--local-interface", "127.0.0.9")
    assert "554 5.7.1 Relay access denied" in denied.stdout
    smuggle = swaks(relay.port, "--from", "a@sender.test", "--to", "u@dest.test",
                    "--data", "Subject: x\r\n\r\nhello\r.\rMAIL FROM:<spoof@evil.test>\r\n")
    assert "550 5.5.2" in smuggle.stdout
    assert relay.queued() == []
