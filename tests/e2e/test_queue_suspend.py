"""``mxroute queue suspend|resume`` through the real CLI and ``serve`` (issue 15 B; CONTRACT
``queue ... suspend|resume``; modelled on KumoMTA's ``kcli suspend --domain``).

A suspended recipient domain is not tried (no attempt counted) while the other recipients of
the same message go; the suspensions live in the spool (``suspended.json``), so a restart and
an offline ``suspend`` before ``serve`` starts keep them; ``--for`` ends them by themselves;
``resume`` makes those recipients due now.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.support.relay import MSG, Relay, World, rcpt_script, wait_for


def ok(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    reply: dict[str, object] = json.loads(done.stdout)
    return reply


def two_domains(world: World) -> None:
    """dest.test and other.test, both at sink 1."""
    world.zone(
        f"dest IN MX 10 mx1.dest.test.\nother IN MX 10 mx1.dest.test.\n"
        f"mx1.dest IN A {world.ip(1)}\n"
        f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {world.ip(9)}\n"
    )


def delivered_to(sink: object) -> list[str]:
    return sorted(r for m in sink.messages for r in m.rcpt_to)  # type: ignore[attr-defined]


def attempts(relay: Relay, qid: str, address: str) -> int:
    shown = json.loads(relay.queue("show", qid, "--json").stdout)
    [rcpt] = [r for r in shown["recipients"] if r["address"] == address]
    return int(rcpt.get("attempts", 0))


@pytest.mark.parametrize("processes", [1, 0])
def test_suspended_domain_waits_other_goes_resume_delivers(world: World, processes: int) -> None:
    """issue 15 B: `queue suspend other.test` on a running serve: other.test's recipient stays
    queued and untried while dest.test's recipient of the same message is delivered; the
    suspension is logged with the uid and reason, listed, survives a restart; `resume` sends.
    With a delivery process and without one (serve owns the queue)."""
    two_domains(world)
    sink = world.sink(1)
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600,
                        delivery_processes=processes)
    reply = ok(relay.queue("suspend", "Other.Test", "--reason", "their MX is down", "--json"))
    assert reply["action"] == "suspend" and reply["live"] is True
    [entry] = reply["suspensions"]  # type: ignore[misc]
    assert entry["domain"] == "other.test" and entry["reason"] == "their MX is down"
    assert entry["until"] is None and entry["since"] <= time.time()
    assert relay.logged(f"operator: suspend other.test by uid {os.getuid()} (their MX is down)")
    relay.send("a@sender.test", ["u@dest.test", "v@other.test"], MSG)
    assert wait_for(lambda: delivered_to(sink) == ["u@dest.test"])
    (qid,) = relay.queued()
    time.sleep(1.5)
    assert delivered_to(sink) == ["u@dest.test"] and relay.queued() == [qid]
    assert attempts(relay, qid, "v@other.test") == 0
    [listed_json] = [json.loads(x) for x in relay.queue("list", "--json").stdout.splitlines()]
    assert {r["address"]: r["state"] for r in listed_json["recipients"]} == {
        "u@dest.test": "delivered", "v@other.test": "suspended"}
    listed = relay.queue("suspend")
    assert listed.returncode == 0 and "other.test" in listed.stdout
    assert "their MX is down" in listed.stdout
    assert relay.terminate() == 0
    relay.start()
    time.sleep(1.5)
    assert delivered_to(sink) == ["u@dest.test"]
    assert [s["domain"] for s in ok(relay.queue("suspend", "--json"))["suspensions"]] == [
        "other.test"]  # type: ignore[union-attr]
    resumed = ok(relay.queue("resume", "other.test", "--json"))
    assert resumed["resumed"] == ["other.test"] and resumed["live"] is True
    assert relay.logged(f"operator: resume other.test by uid {os.getuid()}")
    assert wait_for(lambda: delivered_to(sink) == ["u@dest.test", "v@other.test"])
    assert wait_for(lambda: relay.queued() == [])
    assert ok(relay.queue("suspend", "--json"))["suspensions"] == []


def test_suspend_for_ends_by_itself(world: World) -> None:
    """issue 15 B: `suspend D --for 4s` lifts itself: the mail goes without a resume."""
    sink = world.sink(1)
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600)
    reply = ok(relay.queue("suspend", "dest.test", "--for", "4s", "--json"))
    [entry] = reply["suspensions"]  # type: ignore[misc]
    assert entry["until"] is not None and abs(entry["until"] - entry["since"] - 4) < 0.01
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    time.sleep(0.5)
    if time.time() < entry["until"] - 0.5:  # still suspended (a loaded machine may be slower)
        assert sink.messages == []
    assert wait_for(lambda: delivered_to(sink) == ["u@dest.test"], timeout=15)
    assert ok(relay.queue("suspend", "--json"))["suspensions"] == []


def test_offline_suspend_is_honoured_when_serve_starts(world: World) -> None:
    """issue 15 B: suspend without a serve writes the spool's suspensions under the spool
    lock; the next serve honours them; offline `resume --all` lifts every one."""
    sink = world.sink(1)
    rcpt_script(sink, "u@dest.test", "451 4.3.0 later")
    relay = world.relay(retry_min_seconds=1, retry_max_seconds=1)
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: "status=deferred" in relay.log())
    assert relay.terminate() == 0
    rcpt_script(sink, "u@dest.test", None)
    offline = ok(relay.queue("suspend", "dest.test", "--json"))
    assert offline["live"] is False
    relay.start()
    time.sleep(2.5)  # retries every second: a tried message would have gone by now
    assert sink.messages == [] and len(relay.queued()) == 1
    assert relay.terminate() == 0
    lifted = ok(relay.queue("resume", "--all", "--json"))
    assert lifted["live"] is False and lifted["resumed"] == ["dest.test"]
    relay.start()
    assert wait_for(lambda: delivered_to(sink) == ["u@dest.test"])


def test_usage_errors(world: World) -> None:
    """issue 15 B: bad suspend/resume arguments are usage errors (64) and change nothing."""
    relay = world.relay()
    for args in (("resume",), ("resume", "a.test", "--all"), ("suspend", "a.test", "--for", "soon"),
                 ("suspend", "--for", "2s"), ("suspend", "not a domain"),
                 ("suspend", "u@dest.test")):
        done = relay.queue(*args)
        assert done.returncode == 64, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("mxroute: "), done.stderr
    assert ok(relay.queue("suspend", "--json"))["suspensions"] == []
    assert not (relay.spool / "suspended.json").exists()


def test_suspended_mail_still_expires_and_is_bounced(world: World) -> None:
    """issue 15 B: a suspension does not stop the clock: at queue_lifetime_seconds the
    suspended recipient is bounced to the sender (a DSN), never tried."""
    sink = world.sink(1)
    bounces = world.sink(9)
    relay = world.relay(retry_min_seconds=300, retry_max_seconds=600, queue_lifetime_seconds=3)
    ok(relay.queue("suspend", "dest.test", "--json"))
    relay.send("a@sender.test", ["u@dest.test"], MSG)
    assert wait_for(lambda: bounces.messages, timeout=15)
    assert wait_for(lambda: relay.queued() == [])
    assert sink.messages == []
    assert b"suspended" in bounces.messages[0].data
