"""`mxroute queue` and the spool it finds, through the real CLI (issue 15 section C item 1).

A missing spool is an error for every queue action (list included, `--json` too): exit 66
(EX_NOINPUT) and one line naming the absolute path and where `spool_dir` came from (the
environment, the file, or which default). The CLI and `serve` find the same configuration
(`MXROUTE_CONFIG`, documented) and so the same spool, from any directory, with no extra flag.
Nothing here reads the real /etc/mxroute: every run names its file with MXROUTE_CONFIG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mxroute.hostdefaults import SYSTEM_SPOOL
from tests.support.relay import MSG, ROOT, World

ACTIONS = (["list"], ["list", "--json"], ["show", "0" * 25], ["flush"], ["delete", "0" * 25])


def mxroute(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mxroute", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This environment without MXROUTE_* and systemd's STATE_DIRECTORY, with an empty
    configuration file named by MXROUTE_CONFIG (so the host's /etc/mxroute plays no part)."""
    config = tmp / "empty.toml"
    config.write_text("# nothing set: every default\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MXROUTE_", "PYTHON")) and k != "STATE_DIRECTORY"}
    env.update({"PYTHONPATH": str(ROOT), "MXROUTE_CONFIG": str(config), **extra})
    return env


def assert_no_spool(done: subprocess.CompletedProcess[str], path: Path, origin: str) -> None:
    assert done.returncode == 66, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", done.stdout  # not "queue is empty", not []
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"no spool at {path} " in done.stderr, done.stderr
    assert origin in done.stderr, done.stderr


@pytest.mark.parametrize("action", ACTIONS, ids=" ".join)
def test_missing_spool_from_the_environment_is_an_error_naming_it(
    tmp_path: Path, action: list[str]
) -> None:
    """issue 15 C1: MXROUTE_SPOOL_DIR names a directory that does not exist."""
    missing = tmp_path / "nope"
    done = mxroute(["queue", *action], clean_env(tmp_path, MXROUTE_SPOOL_DIR=str(missing)),
                   tmp_path)
    assert_no_spool(done, missing, "(spool_dir from MXROUTE_SPOOL_DIR)")


@pytest.mark.parametrize("action", ACTIONS, ids=" ".join)
def test_missing_spool_from_the_file_names_the_file(tmp_path: Path, action: list[str]) -> None:
    """issue 15 C1: a relative spool_dir in the file: the absolute path, and the file."""
    config = tmp_path / "relay.toml"
    config.write_text('spool_dir = "rel/spool"\n')
    done = mxroute(["queue", *action], clean_env(tmp_path, MXROUTE_CONFIG=str(config)), tmp_path)
    assert_no_spool(done, tmp_path / "rel" / "spool", f"(spool_dir from {config})")


@pytest.mark.parametrize("action", ACTIONS, ids=" ".join)
def test_missing_default_spool_says_which_default(tmp_path: Path, action: list[str]) -> None:
    """issue 15 C1: the default, outside systemd, run from another directory: ./spool there,
    and why (no $STATE_DIRECTORY, no /var/lib/mxroute)."""
    if SYSTEM_SPOOL.exists():
        pytest.skip(f"{SYSTEM_SPOOL} exists on this host: it is the default here")
    done = mxroute(["queue", *action], clean_env(tmp_path), tmp_path)
    assert_no_spool(done, tmp_path / "spool", "(spool_dir default: ./spool")
    assert str(SYSTEM_SPOOL) in done.stderr and "STATE_DIRECTORY" in done.stderr


def test_missing_state_directory_default_names_systemd(tmp_path: Path) -> None:
    """issue 15 C1: under systemd (STATE_DIRECTORY set) the default is that directory."""
    state = tmp_path / "state"
    done = mxroute(["queue", "list"], clean_env(tmp_path, STATE_DIRECTORY=str(state)), tmp_path)
    assert_no_spool(done, state, "(spool_dir default: $STATE_DIRECTORY")


def test_cli_and_serve_find_the_same_spool_through_the_same_file(world: World) -> None:
    """issue 15 C1: serve started with only MXROUTE_CONFIG (its spool_dir in the file), and
    `mxroute queue list` run from another directory with the same environment: the message
    serve queued is listed; `check-config` shows the same spool."""
    world.sink(1, replies={"RCPT": "451 4.3.0 not now"})
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.terminate()
    world.relays.remove(relay)
    config = world.tmp / "relay.toml"
    lines = []
    for name in ("listen", "spool_dir", "dns_servers", "smtp_port", "allow_private_destinations",
                 "helo_name", "retry_min_seconds", "retry_max_seconds"):
        value = relay.env.pop(f"MXROUTE_{name.upper()}")
        quoted = name in ("spool_dir", "helo_name")  # the rest are JSON: TOML as they stand
        lines.append(f"{name} = {json.dumps(value) if quoted else value}")
    config.write_text("\n".join(lines) + "\n")
    relay.env["MXROUTE_CONFIG"] = str(config)
    relay.start()
    world.relays.append(relay)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert relay.logged("status=deferred")
    elsewhere = world.tmp / "elsewhere"
    elsewhere.mkdir()
    listed = mxroute(["queue", "list", "--json"], relay.env, elsewhere)
    assert listed.returncode == 0, listed.stderr
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]  # one object a line
    assert entry["queue_id"] in relay.queued()
    shown = mxroute(["check-config", "--json"], relay.env, elsewhere)
    assert json.loads(shown.stdout)["spool_dir"] == str(relay.spool)
