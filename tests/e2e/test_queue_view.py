"""The read-only queue tools through the real CLI (issue 15 section B): `queue list` with each
recipient's state and last reason and its filters, `queue summary` (qshape, exiqsumm),
`queue show ID` with the headers, `queue cat ID [--headers|--body]` (postcat -q), a unique
queue-ID prefix for any ID, and `mailq` = `sendmail -bp` = `queue list`.

The spools are made by the real spool code (``Spool.store``) or by a real `serve` deferring
mail; every value a peer chose is printed so that a terminal cannot be hijacked (SEC-6).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mxroute.relay.spool.format import MessageMeta, RecipientState
from mxroute.relay.spool.store import Spool
from tests.support.relay import MSG, ROOT, World, rcpt_script, wait_for

NOW = time.time()
HOSTILE = b"Subject: \x1b]0;pwned\x07\x1b[2J clear\r\n"


def mxroute(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mxroute", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def env_for(spool: Path, tmp: Path) -> dict[str, str]:
    config = tmp / "empty.toml"
    config.write_text("# every default\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MXROUTE_", "PYTHON")) and k != "STATE_DIRECTORY"}
    env.update({"PYTHONPATH": str(ROOT), "MXROUTE_CONFIG": str(config),
                "MXROUTE_SPOOL_DIR": str(spool)})
    return env


def message(subject: bytes = b"Subject: hello\r\n", body: bytes = b"body line\r\n") -> bytes:
    return (b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test with ESMTP\r\n"
            b"From: a@sender.test\r\n" + subject + b"\r\n" + body)


def rcpt(address: str, *, due_in: float = 0.0, attempts: int = 0, reply: str | None = None,
         state: str = "pending") -> RecipientState:
    return RecipientState(address, state=state, attempts=attempts,
                          next_try=NOW + due_in if attempts else 0.0, reply=reply,
                          remote_reply=reply is not None)


def make_spool(root: Path, messages: list[tuple[str, float, list[RecipientState], bytes]]) -> None:
    """Queue files made by the real spool code: (queue ID, age in seconds, recipients, bytes)."""
    spool = Spool(root, threads=4)
    spool.prepare()

    async def store_all() -> None:
        for start in range(0, len(messages), 200):
            await asyncio.gather(*(
                spool.store(MessageMeta(queue_id=qid, sender="a@sender.test", arrival=NOW - age,
                                        recipients=rcpts, client="client.test [127.0.0.1]",
                                        size=len(data)), data)
                for qid, age, rcpts, data in messages[start:start + 200]))

    try:
        asyncio.run(store_all())
    finally:
        spool.close()


IDS = {"fresh": "0A0000000000000001", "old": "0B0000000000000002",
       "mixed": "0B0000000000000003", "hostile": "0C0000000000000004"}


def small_spool(tmp: Path) -> dict[str, str]:
    """Four messages: new and due, deferred for hours, one due and one deferred recipient, and
    one whose header holds terminal escape sequences."""
    spool = tmp / "spool"
    make_spool(spool, [
        (IDS["fresh"], 60, [rcpt("u@dest.test")], message()),
        (IDS["old"], 3 * 3600, [rcpt("v@other.test", due_in=1800, attempts=3,
                                     reply="451 4.3.0 greylisted")], message()),
        (IDS["mixed"], 7200, [rcpt("w@dest.test", due_in=-5, attempts=1,
                                   reply="421 4.4.2 timeout"),
                              rcpt("x@other.test", due_in=900, attempts=1,
                                   reply="452 4.2.2 mailbox full"),
                              rcpt("y@other.test", state="delivered", attempts=1,
                                   reply="250 2.0.0 ok")], message()),
        (IDS["hostile"], 30, [rcpt("z@dest.test")], message(HOSTILE, b"\x1b[31mred\r\n")),
    ])
    return env_for(spool, tmp)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_list_shows_each_recipient_state_and_reason(tmp_path: Path) -> None:
    """issue 15 B list: per message id, arrival, size, sender, and each recipient with its state
    (active = due now or never tried; deferred = waiting for its retry time) and last reason."""
    env = small_spool(tmp_path)
    done = mxroute(["queue", "list"], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for queue_id in IDS.values():
        assert queue_id in out
    assert "<a@sender.test>" in out
    lines = out.splitlines()
    row = next(line for line in lines if "<v@other.test>" in line)
    assert "deferred" in row and "451 4.3.0 greylisted" in row and "3 attempt" in row
    assert "active" in next(line for line in lines if "<u@dest.test>" in line)
    assert "not tried yet" in next(line for line in lines if "<u@dest.test>" in line)
    assert "active" in next(line for line in lines if "<w@dest.test>" in line)
    assert "delivered" in next(line for line in lines if "<y@other.test>" in line)
    assert lines[-1].startswith("-- 4 message(s), 5 pending recipient(s)"), lines[-1]


def test_list_json_is_one_object_per_line_with_recipients(tmp_path: Path) -> None:
    """issue 15 B list --json (postqueue -j; CONTRACT: one object per message, its recipients,
    their states and last replies)."""
    env = small_spool(tmp_path)
    done = mxroute(["queue", "list", "--json"], env)
    assert done.returncode == 0, done.stderr
    entries = {e["queue_id"]: e for e in json_lines(done.stdout)}
    assert sorted(entries) == sorted(IDS.values())
    mixed = entries[IDS["mixed"]]
    assert mixed["sender"] == "a@sender.test" and mixed["state"] == "active"
    assert mixed["size"] == len(message()) and abs(mixed["arrival"] - (NOW - 7200)) < 1
    rcpts = {r["address"]: r for r in mixed["recipients"]}  # type: ignore[attr-defined]
    assert rcpts["x@other.test"]["state"] == "deferred"
    assert rcpts["x@other.test"]["reason"] == "452 4.2.2 mailbox full"
    assert rcpts["w@dest.test"]["state"] == "active"
    assert rcpts["y@other.test"]["state"] == "delivered"
    assert entries[IDS["old"]]["state"] == "deferred"
    assert mixed["pending"] == 2


def test_list_filters(tmp_path: Path) -> None:
    """issue 15 B list --domain, --state active|deferred, --older-than; filters combine."""
    env = small_spool(tmp_path)

    def ids(*args: str) -> set[str]:
        done = mxroute(["queue", "list", "--json", *args], env)
        assert done.returncode == 0, done.stderr
        return {str(e["queue_id"]) for e in json_lines(done.stdout)}

    assert ids("--state", "deferred") == {IDS["old"]}
    assert ids("--state", "active") == {IDS["fresh"], IDS["mixed"], IDS["hostile"]}
    assert ids("--domain", "OTHER.test") == {IDS["old"], IDS["mixed"]}
    assert ids("--older-than", "1h") == {IDS["old"], IDS["mixed"]}
    assert ids("--older-than", "150m") == {IDS["old"]}
    assert ids("--older-than", "1d") == set()
    assert ids("--domain", "dest.test", "--older-than", "30m") == {IDS["mixed"]}
    text = mxroute(["queue", "list", "--domain", "nowhere.test"], env)
    assert text.returncode == 0 and "no message matches" in text.stdout, text
    for bad in (["--older-than", "soon"], ["--state", "frozen"]):
        done = mxroute(["queue", "list", *bad], env)
        assert done.returncode == 64 and "Traceback" not in done.stderr, done.stderr


def test_summary_domains_by_age(tmp_path: Path) -> None:
    """issue 15 B summary (qshape, exiqsumm): recipient domains x age buckets, counts, volume,
    oldest, newest; --top N; --json."""
    env = small_spool(tmp_path)
    done = mxroute(["queue", "summary", "--json"], env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    rows = {r["domain"]: r for r in summary["domains"]}
    assert set(rows) == {"dest.test", "other.test"}
    dest, other = rows["dest.test"], rows["other.test"]
    assert dest["messages"] == 3 and dest["recipients"] == 3
    assert other["messages"] == 2 and other["recipients"] == 2  # the delivered one is not queued
    assert other["volume"] == 2 * len(message())
    assert abs(other["oldest"] - (NOW - 3 * 3600)) < 1 and abs(other["newest"] - (NOW - 7200)) < 1
    assert sum(other["buckets"]) == 2 and len(other["buckets"]) == len(summary["buckets"])
    assert summary["total"]["messages"] == 4
    top = json.loads(mxroute(["queue", "summary", "--json", "--top", "1"], env).stdout)
    assert [r["domain"] for r in top["domains"]] == ["dest.test"]
    text = mxroute(["queue", "summary"], env)
    assert text.returncode == 0, text.stderr
    assert "dest.test" in text.stdout and "TOTAL" in text.stdout and "5m" in text.stdout


def test_show_and_cat_by_unique_prefix(tmp_path: Path) -> None:
    """issue 15 B show ID (with the headers) and cat ID [--headers|--body] (postcat -q): the
    bytes as spooled, our Received: first; a unique prefix is an ID, an ambiguous one an error
    naming the matches, an unknown one 66."""
    env = small_spool(tmp_path)
    shown = mxroute(["queue", "show", "0A"], env)
    assert shown.returncode == 0, shown.stderr
    assert IDS["fresh"] in shown.stdout and "Subject: hello" in shown.stdout
    data = json.loads(mxroute(["queue", "show", "0A", "--json"], env).stdout)
    assert data["queue_id"] == IDS["fresh"]
    assert ["Subject", "hello"] in data["headers"] and data["headers"][0][0] == "Received"
    cat = mxroute(["queue", "cat", "0A"], env)
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout.startswith("Received: from client.test ([127.0.0.1])\n\tby relay.test")
    assert cat.stdout.endswith("\n\nbody line\n")
    headers = mxroute(["queue", "cat", "0A", "--headers"], env).stdout
    assert "Subject: hello" in headers and "body line" not in headers
    body = mxroute(["queue", "cat", "0A", "--body"], env).stdout
    assert body == "body line\n"
    ambiguous = mxroute(["queue", "show", "0B"], env)
    assert ambiguous.returncode == 64, ambiguous
    assert IDS["old"] in ambiguous.stderr and IDS["mixed"] in ambiguous.stderr
    for action in ("show", "cat"):
        missing = mxroute(["queue", action, "0F"], env)
        assert missing.returncode == 66 and "no such message" in missing.stderr, missing
        bad = mxroute(["queue", action, "../etc"], env)
        assert bad.returncode == 64 and "not a queue ID" in bad.stderr, bad


def test_escape_sequences_never_reach_the_terminal(tmp_path: Path) -> None:
    """issue 15 B, SEC-6: a header or body with ESC/BEL sequences is shown with them made
    visible, by show, cat and cat --json."""
    env = small_spool(tmp_path)
    for args in (["show", IDS["hostile"]], ["cat", IDS["hostile"]],
                 ["cat", IDS["hostile"], "--json"], ["show", IDS["hostile"], "--json"]):
        done = mxroute(["queue", *args], env)
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout, (args, done.stdout)
        assert "pwned" in done.stdout
    cat = mxroute(["queue", "cat", IDS["hostile"]], env).stdout
    assert "Subject: \\x1b]0;pwned\\x07\\x1b[2J clear" in cat and "\\x1b[31mred" in cat


def peak_kib(args: list[str], env: dict[str, str]) -> tuple[int, int]:
    """(stdout lines, peak resident KiB) of ``mxroute queue ARGS``, run by a fresh parent."""
    probe = ("import resource, subprocess, sys; "
             "done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE); "
             "assert done.returncode == 0, done.returncode; "
             "print(len(done.stdout.splitlines()), "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "mxroute", "queue",
                          *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_a_large_spool_is_streamed(tmp_path: Path) -> None:
    """issue 15 B: list and summary over a few thousand queue files (made by the real spool
    code) keep memory bounded: 3,000 more messages (about 100 MB of files and 150,000 more
    recipients, some 75 MB once parsed) grow neither by more than 24 MiB (what a process
    holding the files or their parsed state could not stay under)."""
    body = (b"x" * 998 + b"\r\n") * 10

    def add(first: int, last: int) -> None:
        make_spool(tmp_path / "spool", [
            (f"0D{n:016X}", n, [rcpt(f"u{n}.{i}@d{n % 7}.test", attempts=1, due_in=600,
                                     reply=f"451 4.3.0 {i} " + "try later " * 20)
                                for i in range(50)], message(body=body))
            for n in range(first, last)])

    env = env_for(tmp_path / "spool", tmp_path)
    commands = (["list", "--json"], ["list"], ["summary", "--json"])
    add(0, 1000)
    small = {tuple(args): peak_kib(args, env) for args in commands}
    add(1000, 4000)
    for args in commands:
        lines, peak = peak_kib(args, env)
        if args == ["list", "--json"]:
            assert small[tuple(args)][0] == 1000 and lines == 4000
        assert peak - small[tuple(args)][1] < 24 * 1024, (args, small[tuple(args)], peak)
    # a reader that stops early (`| head`): a quiet end, no error about the spool
    with subprocess.Popen([sys.executable, "-m", "mxroute", "queue", "list"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as head:
        assert head.stdout is not None and head.stderr is not None
        assert head.stdout.readline().startswith(b"QUEUE ID")
        head.stdout.close()
        assert head.wait(timeout=120) == 0
        assert head.stderr.read() == b""


def test_serve_deferral_seen_by_list_show_cat_and_mailq(world: World, tmp_path: Path) -> None:
    """issue 15 B with a real serve: a deferred recipient's reply is in list (text and JSON),
    show and cat find the message by a prefix, and mailq = sendmail -bp = queue list."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 greylisted")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: "status=deferred" in relay.log())
    (queue_id,) = relay.queued()
    listed = relay.queue("list")
    row = next(line for line in listed.stdout.splitlines() if "<u@dest.test>" in line)
    assert "deferred" in row and "451 4.3.0 greylisted" in row, listed.stdout
    (entry,) = json_lines(relay.queue("list", "--json").stdout)
    assert entry["recipients"][0]["state"] == "deferred"  # type: ignore[index]
    assert entry["recipients"][0]["reason"] == "451 4.3.0 greylisted"  # type: ignore[index]
    cat = relay.queue("cat", queue_id[:12])
    assert cat.returncode == 0 and cat.stdout.startswith("Received: from client.test"), cat
    assert f"with ESMTP id {queue_id}" in cat.stdout
    assert "Subject: hello" in relay.queue("show", queue_id[:12]).stdout
    bp = mxroute(["sendmail", "-bp"], relay.env)
    assert bp.returncode == 0 and bp.stdout == listed.stdout, (bp.stdout, listed.stdout)
