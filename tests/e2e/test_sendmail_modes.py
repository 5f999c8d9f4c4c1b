"""`sendmail -F`, and mxroute invoked as `mailq` or `newaliases`, through the real command
(issue 15 section C item 6).

As Postfix's sendmail: `-F NAME` (else $NAME) is the display name of the From: field added to a
message that has none; `mailq` (= `sendmail -bp`) lists the queue as `mxroute queue list` does;
`newaliases` (= `sendmail -bi`, `-I`) has no aliases database to build: it says so and exits 0,
as Exim does without `bi_command`. The names are symlinks to the `mxroute` script
(docs/operators.md), so argv[0] picks the mode.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.relay import MSG, ROOT, World, wait_for


def run_as(
    name: str, args: list[str], env: dict[str, str], tmp: Path, stdin: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    """mxroute run under the program name ``name``: a symlink to the installed script, or,
    where it is not installed as one, the same main() with that argv[0]."""
    entry = Path(sys.executable).with_name("mxroute")
    if entry.exists():
        link = tmp / "bin" / name
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(entry)
        argv = [str(link), *args]
    else:
        code = (f"import sys; sys.argv[0] = {name!r}; from mxroute.cli.main import main; "
                "sys.exit(main())")
        argv = [sys.executable, "-c", code, *args]
    return subprocess.run(argv, cwd=ROOT, env=env, input=stdin, capture_output=True, timeout=60,
                          check=False)


def mxroute(args: list[str], env: dict[str, str], stdin: bytes = b"") -> \
        subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mxroute", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, timeout=60, check=False)


def head_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[0]


def test_full_name_becomes_the_display_name_of_the_added_from(world: World) -> None:
    """issue 15 C6: -F "Full Name" (and -Fname, and $NAME when -F is absent) when the message
    has no From:; quoted when it holds specials, RFC 2047-encoded when not ASCII; a message
    with its own From: keeps it."""
    sink = world.sink(1)
    relay = world.relay()
    cases: list[tuple[list[str], dict[str, str], bytes, bytes]] = [
        (["-F", "Cron Daemon"], {}, b"Subject: a\n\nx\n", b"From: Cron Daemon <cron@sender.test>"),
        (["-FNightly"], {}, b"Subject: b\n\nx\n", b"From: Nightly <cron@sender.test>"),
        ([], {"NAME": "Env Name"}, b"Subject: c\n\nx\n", b"From: Env Name <cron@sender.test>"),
        (["-F", "Doe, Jane"], {"NAME": "not used"}, b"Subject: d\n\nx\n",
         b'From: "Doe, Jane" <cron@sender.test>'),
        (["-F", "Jos\u00e9"], {}, b"Subject: e\n\nx\n",
         b"From: =?utf-8?b?Sm9zw6k=?= <cron@sender.test>"),
        (["-F", "Ignored"], {}, b"From: Own <own@sender.test>\nSubject: f\n\nx\n",
         b"From: Own <own@sender.test>"),
    ]
    for args, extra, message, _ in cases:
        done = mxroute(["sendmail", *args, "-f", "cron@sender.test", "u@dest.test"],
                       {**relay.env, **extra}, message)
        assert done.returncode == 0, (args, done.stderr)
    assert wait_for(lambda: len(sink.messages) == len(cases), timeout=20), relay.log()
    heads = {head_of(m.data).split(b"Subject: ")[1][:1]: head_of(m.data) for m in sink.messages}
    for (args, _, message, expected), key in zip(cases, b"abcdef", strict=True):
        head = heads[bytes([key])]
        froms = [line for line in head.split(b"\r\n") if line.lower().startswith(b"from:")]
        assert froms == [expected], (args, head)


def test_mailq_lists_the_queue_as_queue_list_does(world: World, tmp_path: Path) -> None:
    """issue 15 C6: `mailq` and `sendmail -bp` print what `mxroute queue list` prints."""
    world.sink(1, replies={"RCPT": "451 4.3.0 not now"})
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert relay.logged("status=deferred")
    listed = relay.queue("list")
    assert listed.returncode == 0 and relay.queued()[0] in listed.stdout, listed.stderr
    mailq = run_as("mailq", [], relay.env, tmp_path)
    assert mailq.returncode == 0, mailq.stderr
    bp = mxroute(["sendmail", "-bp"], relay.env)
    assert bp.returncode == 0, bp.stderr
    # issue 15 B: the same listing, byte for byte (next tries are times, not countdowns)
    assert mailq.stdout.decode() == listed.stdout == bp.stdout.decode()
    assert "<u@dest.test>" in listed.stdout and "451 4.3.0 not now" in listed.stdout


def test_mailq_without_a_spool_is_the_queue_error(tmp_path: Path, world: World) -> None:
    """issue 15 C6 with C1: mailq on a spool that is not there: 66 and the path."""
    env = {**world.relay().env, "MXROUTE_SPOOL_DIR": str(tmp_path / "nope")}
    done = run_as("mailq", [], env, tmp_path)
    assert done.returncode == 66
    assert f"no spool at {tmp_path / 'nope'} (spool_dir from MXROUTE_SPOOL_DIR)" in \
        done.stderr.decode()


def test_newaliases_says_there_is_no_aliases_database_and_exits_0(
    tmp_path: Path, world: World
) -> None:
    """issue 15 C6: `newaliases`, `sendmail -bi` and `sendmail -I`: one line, exit 0, nothing
    read from stdin, nothing sent."""
    env = world.relay().env
    for done in (run_as("newaliases", [], env, tmp_path), mxroute(["sendmail", "-bi"], env),
                 mxroute(["sendmail", "-I"], env)):
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().startswith("mxroute: no aliases database"), done.stdout
        assert done.stderr == b""


def test_a_full_name_never_adds_a_header_field() -> None:
    """issue 15 C6: a CR or LF in -F or $NAME is folded to a space (no header injection)."""
    from mxroute.cli.sendmail import complete_headers, full_name

    name = full_name("Eve\r\nBcc: victim@x.test")
    assert name == "Eve Bcc: victim@x.test"
    message, _ = complete_headers(b"Subject: x\r\n\r\nbody\r\n", "eve@x.test", False, name)
    assert b"\r\nBcc:" not in message
    assert full_name(None, {"NAME": "  "}) is None and full_name(None, {}) is None


def test_a_full_name_with_an_smtputf8_sender() -> None:
    """issue 15 C6: an internationalized sender keeps its From: (formataddr() refuses it)."""
    from mxroute.cli.sendmail import complete_headers

    message, _ = complete_headers(b"Subject: x\r\n\r\nb\r\n", "jos\u00e9@b\u00fccher.test", False,
                                  "Jos\u00e9")
    assert "From: =?utf-8?b?Sm9zw6k=?= <jos\u00e9@b\u00fccher.test>\r\n".encode() in message
