"""`mxroute sendmail` through the real relay: the /usr/sbin/sendmail interface and its exit codes.

sendmail(8) callers (cron, PHP's mail(), logwatch) act on the exit code alone: 0 taken,
64 usage, 65 bad address, 69 refused for good, 75 try again later (the caller keeps the
message). Every case runs the real command as a subprocess against a real `mxroute serve`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mxroute.cli.sendmail import Usage, split_common
from tests.support.relay import ROOT, World, free_port, wait_for


def sendmail(
    args: list[str], stdin: bytes, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mxroute", "sendmail", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, timeout=60, check=False)


MESSAGE = (b"To: u@dest.test\nCc: c@dest.test\nBcc: hidden@dest.test\nSubject: cron\n\n"
           b"line\n.\nafter the dot\n")


def test_t_and_i_deliver_with_completed_headers_and_no_bcc(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay()
    done = sendmail(["-t", "-i", "-f", "cron@sender.test"], MESSAGE, relay.env)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: len(sink.messages) == 1)
    got = sink.messages[0]
    assert got.mail_from == "cron@sender.test"
    assert sorted(got.rcpt_to) == ["c@dest.test", "hidden@dest.test", "u@dest.test"]
    head, _, body = got.data.partition(b"\r\n\r\n")
    assert b"bcc:" not in head.lower()
    for name in (b"Date:", b"Message-ID:", b"From: cron@sender.test"):
        assert name in head
    assert body == b"line\r\n.\r\nafter the dot\r\n"  # -i: a lone dot is text


def test_without_i_a_lone_dot_ends_the_message(world: World) -> None:
    sink = world.sink(1)
    relay = world.relay()
    assert sendmail(["-t", "-f", "cron@sender.test"], MESSAGE, relay.env).returncode == 0
    assert wait_for(lambda: sink.messages)
    assert sink.messages[0].data.endswith(b"\r\n\r\nline\r\n")


def test_relay_down_is_75_so_the_caller_keeps_the_message(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MXROUTE_LISTEN": f'["127.0.0.1:{free_port()}"]'}
    done = sendmail(["u@dest.test"], b"Subject: x\n\nbody\n", env)
    assert done.returncode == 75
    assert b"cannot reach the relay" in done.stderr and b"Traceback" not in done.stderr


def test_usage_bad_address_and_refusal_codes(world: World) -> None:
    # sendmail connects from 127.0.0.1: not allowed to relay
    relay = world.relay(relay_networks=["127.0.0.9/32"])
    assert sendmail(["-q1h", "u@dest.test"], b"x\n", relay.env).returncode == 64
    assert sendmail([], b"Subject: x\n\nbody\n", relay.env).returncode == 64  # no recipient, no -t
    assert sendmail(["not an address"], b"Subject: x\n\nbody\n", relay.env).returncode == 65
    refused = sendmail(["u@dest.test"], b"Subject: x\n\nbody\n", relay.env)
    assert refused.returncode == 69 and b"554" in refused.stderr


def test_config_option_finds_the_relay_named_in_the_file(world: World) -> None:
    """The contract's common options: --config (and sendmail's -C) pick the relay; --dns/--zone are
    accepted."""
    sink = world.sink(1)
    relay = world.relay()
    config = world.tmp / "sendmail.toml"
    config.write_text(f'listen = ["127.0.0.1:{relay.port}"]\n')
    # env would win over the file
    env = {k: v for k, v in relay.env.items() if k != "MXROUTE_LISTEN"}
    for args in (
        ["--config", str(config)],
        [f"--config={config}"],
        ["-C", str(config)],
        [f"-C{config}"],
    ):
        done = sendmail([*args, "--dns", "127.0.0.1", "-f", "a@sender.test", "u@dest.test"],
                        b"Subject: x\n\nbody\n", env)
        assert done.returncode == 0, (args, done.stderr)
    assert wait_for(lambda: len(sink.messages) == 4)


def test_split_common_options() -> None:
    assert split_common(["-C", "a.toml", "-t", "--zone", "z", "x@y"]) == ("a.toml", ["-t", "x@y"])
    assert split_common(["--config=b.toml", "-i", "--", "--config"]) == (
        "b.toml",
        ["-i", "--", "--config"],
    )
    with pytest.raises(Usage):
        split_common(["--config"])


def test_partial_acceptance_exits_0_and_names_the_refused(world: World) -> None:
    """Issue 13 item 4: once one recipient is accepted and the message queued (250 after DATA),
    sendmail exits 0 (EX_OK), so a caller retrying on 69/75 sends no duplicate; each refused
    recipient gets one stderr line with the relay's reply (Postfix reports them by DSN).
    A permanent (550 5.1.2 address literal) and a temporary (452 4.5.3, SEC-9) refusal alike.
    (No checklist ID covers sendmail(8); the duplicate it prevents is DUR-9's concern.)"""
    sink = world.sink(1)
    relay = world.relay(max_recipients=2)
    done = sendmail(["-f", "a@sender.test", "bob@dest.test", "x@[127.0.0.1]", "u@dest.test",
                     "late@dest.test"], b"Subject: x\n\nx\n", relay.env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("sendmail: <x@[127.0.0.1]> refused: 550 5.1.2"), lines
    assert lines[1].startswith("sendmail: <late@dest.test> refused: 452 4.5.3"), lines
    assert wait_for(lambda: len(sink.messages) == 1)
    assert sorted(sink.messages[0].rcpt_to) == ["bob@dest.test", "u@dest.test"]


def test_no_recipient_accepted_keeps_the_refusal_codes(world: World) -> None:
    """Issue 13 item 4: with every recipient refused nothing is queued: 69 for a permanent refusal,
    one stderr line per recipient."""
    relay = world.relay()
    done = sendmail(["x@[127.0.0.1]", "y@[127.0.0.2]"], b"Subject: x\n\nx\n", relay.env)
    assert done.returncode == 69, done.stderr
    assert len(done.stderr.decode().splitlines()) == 2 and b"550 5.1.2" in done.stderr
    assert relay.queued() == []
