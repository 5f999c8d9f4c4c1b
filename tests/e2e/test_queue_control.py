"""The control plane and the acting queue tools, through the real CLI and ``serve`` (issue 15
sections A and B: flush, hold, release, requeue, bounce, delete, hosts).

With ``serve`` running, ``mxroute queue ACTION`` speaks to it over ``control.sock`` in the spool
(0600): the effect, its operator-action log line and the queue gauge are there when the command
returns. Without it, the same commands act on the spool files under the spool lock.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.support.relay import MSG, ROOT, Relay, World, free_port, rcpt_script, scrape, wait_for


def deferred(world: World, relay: Relay, *rcpts: str) -> list[str]:
    """Send one message per recipient (each deferred by the sink): their queue IDs, in order."""
    ids = []
    for rcpt in rcpts:
        before = set(relay.queued())
        relay.send("a@sender.test", [rcpt], MSG)
        (new,) = wait_for(lambda b=before: set(relay.queued()) - b)  # type: ignore[misc]
        ids.append(new)
    assert wait_for(lambda: relay.log().count("status=deferred") >= len(rcpts))
    return ids


def ok(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    reply: dict[str, object] = json.loads(done.stdout)
    return reply


def queue_gauge(port: int) -> float:
    values = scrape(port)
    return sum(v for k, v in values.items() if k.startswith("mxroute_queue_messages{"))


@pytest.mark.parametrize("processes", [1, 0])
def test_delete_acts_at_once_logs_the_operator_and_updates_the_gauge(
    world: World, processes: int
) -> None:
    """issue 15 A: `queue delete PREFIX` on a running serve (a delivery process, or none):
    gone, logged with the operator's uid and counted in the queue gauge when the command
    returns; the socket is 0600."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    metrics = free_port()
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600,
                        metrics_listen=f"127.0.0.1:{metrics}", delivery_processes=processes)
    (qid,) = deferred(world, relay, "u@dest.test")
    sock = relay.spool / "control.sock"
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert queue_gauge(metrics) == 1
    reply = ok(relay.queue("delete", qid[:12], "--json"))
    assert reply["action"] == "delete" and reply["live"] is True
    assert reply["messages"] == [{"queue_id": qid, "result": "deleted"}]
    assert relay.queued() == []
    assert queue_gauge(metrics) == 0  # at once, not at the next retry
    assert relay.logged(f"{qid}: operator: delete by uid {os.getuid()}")
    missing = relay.queue("delete", qid)
    assert missing.returncode == 66 and qid in missing.stderr


def test_flush_id_flushes_only_that_message(world: World) -> None:
    """issue 15 B regression: `queue flush ID` made everything due and ignored the ID."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    rcpt_script(sink, "v@dest.test", "451 4.3.0 later")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    u_id, v_id = deferred(world, relay, "u@dest.test", "v@dest.test")
    rcpt_script(sink, "u@dest.test", None)
    rcpt_script(sink, "v@dest.test", None)
    reply = ok(relay.queue("flush", u_id, "--json"))
    assert reply["messages"] == [{"queue_id": u_id, "result": "flushed"}]
    assert wait_for(lambda: relay.queued() == [v_id])
    time.sleep(1.0)  # a flush of everything would have sent v@ by now too
    assert [m.rcpt_to for m in sink.messages] == [["u@dest.test"]]
    assert relay.queued() == [v_id]
    other = relay.queue("flush", "--domain", "dest.test")
    assert other.returncode == 0, other.stderr
    assert wait_for(lambda: relay.queued() == [])


def test_hold_survives_a_restart_and_release_delivers(world: World) -> None:
    """issue 15 B: a held message is never tried (not even by a flush); hold is in the queue
    file's state, so a restart keeps it; `release` makes it due now. Offline (no serve) hold
    and release act on the file under the spool lock."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    relay = world.relay(retry_min_seconds=1, retry_max_seconds=1)
    (qid,) = deferred(world, relay, "u@dest.test")
    assert ok(relay.queue("hold", qid, "--json"))["messages"] == [
        {"queue_id": qid, "result": "held"}]
    assert relay.logged(f"{qid}: operator: hold by uid {os.getuid()}")
    rcpt_script(sink, "u@dest.test", None)
    assert relay.queue("flush").returncode == 0
    time.sleep(2.5)  # retries every second: a held message would have gone by now
    assert sink.messages == [] and relay.queued() == [qid]
    assert json.loads(relay.queue("show", qid, "--json").stdout)["held"] is True
    [held] = [json.loads(line) for line in relay.queue("list", "--state", "hold", "--json")
              .stdout.splitlines()]
    assert (held["queue_id"], held["state"], held["recipients"][0]["state"]) == (qid, "hold",
                                                                                 "hold")
    assert relay.queue("list", "--state", "deferred", "--json").stdout == ""
    assert relay.terminate() == 0
    relay.start()
    time.sleep(2.0)
    assert sink.messages == []
    assert relay.terminate() == 0
    offline = ok(relay.queue("release", qid, "--json"))  # no serve: the file, under the lock
    assert offline["live"] is False and offline["messages"] == [
        {"queue_id": qid, "result": "released"}]
    assert ok(relay.queue("hold", qid, "--json"))["messages"] == [
        {"queue_id": qid, "result": "held"}]
    relay.start()
    time.sleep(2.0)
    assert sink.messages == []
    assert ok(relay.queue("release", qid[:10], "--json"))["live"] is True
    assert wait_for(lambda: sink.messages)
    assert wait_for(lambda: relay.queued() == [])


def test_held_mail_expires_and_is_bounced(world: World) -> None:
    """issue 15 B: held mail still expires at queue_lifetime_seconds and is then bounced."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    bounces = world.sink(9)
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600, queue_lifetime_seconds=4)
    (qid,) = deferred(world, relay, "u@dest.test")
    ok(relay.queue("hold", qid, "--json"))
    assert wait_for(lambda: bounces.messages, timeout=15)
    (dsn,) = bounces.messages
    assert dsn.rcpt_to == ["a@sender.test"] and b"on hold" in dsn.data
    assert wait_for(lambda: qid not in relay.queued())


def test_bounce_sends_a_dsn_with_the_reason(world: World) -> None:
    """issue 15 B: `queue bounce ID --reason` (Exim -Mg): a DSN to the sender, never silent."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    bounces = world.sink(9)
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    (qid,) = deferred(world, relay, "u@dest.test")
    reply = ok(relay.queue("bounce", qid, "--reason", "spam run, removed by ops", "--json"))
    assert reply["messages"] == [{"queue_id": qid, "result": "bounced"}]
    assert wait_for(lambda: bounces.messages)
    (dsn,) = bounces.messages
    assert dsn.rcpt_to == ["a@sender.test"]
    assert b"spam run, removed by ops" in dsn.data and b"Action: failed" in dsn.data
    assert relay.logged(f"{qid}: operator: bounce by uid {os.getuid()}")
    assert wait_for(lambda: qid not in relay.queued())


def test_delete_during_delivery_waits_for_the_attempt(world: World) -> None:
    """issue 15 A: a message being delivered is acted on when its attempt ends; the reply
    says so."""
    sink = world.sink(1, delays={"DATA": 3.0}, replies={"DATA": "451 4.3.0 try later"})
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: any(c.transactions for c in sink.connections))
    (qid,) = relay.queued()
    reply = ok(relay.queue("delete", qid, "--json"))
    assert reply["messages"] == [{"queue_id": qid, "result": "after-attempt"}]
    assert relay.logged("status=deferred", f"{qid}: operator: delete by uid")
    assert wait_for(lambda: relay.queued() == [])


def test_requeue_all_and_delete_deferred_and_ambiguous_prefix(world: World) -> None:
    """issue 15 B: `requeue --all` routes again now; a prefix matching two IDs is an error
    listing them; `delete --deferred` empties the deferred queue."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    rcpt_script(sink, "v@dest.test", "451 4.3.0 later")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    ids = deferred(world, relay, "u@dest.test", "v@dest.test")
    tried = relay.log().count(" status=deferred")
    reply = ok(relay.queue("requeue", "--all", "--json"))
    assert sorted(m["queue_id"] for m in reply["messages"]) == sorted(ids)  # type: ignore
    assert wait_for(lambda: relay.log().count(" status=deferred") >= tried + 2)
    common = os.path.commonprefix(ids)
    ambiguous = relay.queue("delete", common)
    assert ambiguous.returncode == 64 and all(i in ambiguous.stderr for i in ids)
    assert relay.queued() == sorted(ids)
    for bad in (["delete"], ["delete", ids[0], "--all"], ["requeue"], ["hold"]):
        refused = relay.queue(*bad)
        assert refused.returncode == 64 and "Traceback" not in refused.stderr, (bad, refused)
    assert ok(relay.queue("release", ids[0], "--json"))["messages"] == [
        {"queue_id": ids[0], "result": "not-held"}]
    assert relay.queued() == sorted(ids)
    assert ok(relay.queue("delete", "--deferred", "--json"))["live"] is True
    assert relay.queued() == []


def test_hosts_lists_a_dead_host_and_forget(world: World) -> None:
    """issue 15 B: `queue hosts` (exinext): the host delivery skips, why, since and until;
    `--forget HOST` tries it again."""
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)  # no sink: refused
    deferred(world, relay, "u@dest.test")
    (host,) = ok(relay.queue("hosts", "--json"))["hosts"]  # type: ignore[misc]
    assert host["address"] == world.ip(1) and host["until"] > host["since"]
    assert host["reply"]
    text = relay.queue("hosts")
    assert world.ip(1) in text.stdout and "until" in text.stdout
    forgot = ok(relay.queue("hosts", "--forget", world.ip(1), "--json"))
    assert forgot["forgotten"] == 1
    assert ok(relay.queue("hosts", "--json"))["hosts"] == []


def test_sendmail_q_flushes(world: World) -> None:
    """issue 15 B: `sendmail -q` is `queue flush`."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    deferred(world, relay, "u@dest.test")
    rcpt_script(sink, "u@dest.test", None)
    done = subprocess.run([sys.executable, "-m", "mxroute", "sendmail", "-q"], cwd=ROOT,
                          env=relay.env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: relay.queued() == [])
    for unsupported in (["-q30m"], ["-q", "u@dest.test"]):  # a queue-runner daemon; a mix-up
        refused = subprocess.run([sys.executable, "-m", "mxroute", "sendmail", *unsupported],
                                 cwd=ROOT, env=relay.env, capture_output=True, text=True,
                                 timeout=30, check=False)
        assert refused.returncode == 64, (unsupported, refused.stderr)


def test_without_serve_bounce_and_delete_act_on_the_files(world: World) -> None:
    """issue 15 A: no serve running: the same commands act on the spool files under the spool
    lock and say so; the DSN an offline bounce spooled goes out when serve starts again."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    rcpt_script(sink, "v@dest.test", "451 4.3.0 later")
    bounces = world.sink(9)
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    u_id, v_id = deferred(world, relay, "u@dest.test", "v@dest.test")
    assert relay.terminate() == 0
    assert not (relay.spool / "control.sock").exists()
    text = relay.queue("bounce", u_id, "--reason", "offline bounce")
    assert text.returncode == 0 and f"{u_id}: bounced to the sender" in text.stdout
    assert "no serve running" in text.stdout
    assert ok(relay.queue("hosts", "--json")) == {"live": False, "hosts": []}
    assert u_id not in relay.queued()
    reply = ok(relay.queue("delete", "--domain", "dest.test", "--json"))
    assert reply == {"action": "delete", "live": False,
                     "messages": [{"queue_id": v_id, "result": "deleted"}]}
    assert bounces.messages == []
    relay.start()
    assert wait_for(lambda: bounces.messages)
    assert b"offline bounce" in bounces.messages[0].data
    assert wait_for(lambda: relay.queued() == [])
