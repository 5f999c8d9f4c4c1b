"""Retry schedule, expiry and bounces of the queue manager (checklist D: RTY, E: DSN, H: DUR-6/7).

The courier, the routing step and the DSN builder are replaced by recorders and
the clock by a number: the queue's decisions are tested without sockets.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mxroute.relay.envelope import Disposition, RecipientResult
from mxroute.relay.queue.manager import QueueManager
from mxroute.relay.queue.operator import Operator, Request
from mxroute.relay.queue.plans import PLAN_CACHE_SECONDS, PlanCache
from mxroute.relay.spool.format import DELIVERED, PENDING, MessageMeta, RecipientState
from mxroute.routing.plan import Decision, MxRecord, Plan, Verdict
from mxroute.routing.route import Route
from mxroute.text import safe_text
from mxroute.tls.policy import TlsPolicy
from tests.support.queuekit import DEFER, REJECT, Harness


def test_sec6_safe_text_neutralises_controls() -> None:
    assert safe_text("550 no\r\nRCPT TO:<x>\x1b[2J") == "550 no??RCPT TO:<x>?[2J"
    assert len(safe_text("x" * 1000, 50)) == 50


# --- the queue manager with a scripted courier (tests.support.queuekit) ----------------------


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    yield harness
    harness.spool.close()


def test_rty1_deferred_then_retried_after_backoff_and_delivered(h: Harness) -> None:
    """RTY-1/RTY-2: a 4xx keeps the recipient queued with a next try ≥ retry_min_seconds; then
    delivered."""
    h.courier.will("a@x.test", DEFER, (Disposition.DELIVERED, "2.0.0", "250 ok"))
    qid = h.submit("s@y.test", "a@x.test")
    h.run()
    (meta,) = h.queued()
    rcpt = meta.recipients[0]
    assert rcpt.state == PENDING and rcpt.attempts == 1 and rcpt.reply == "451 4.4.1 try later"
    assert h.now + 60 <= rcpt.next_try <= h.now + 600
    assert rcpt.hosts == {"mx.x.test[127.0.0.2]:25": "451 4.4.1 try later"}
    assert h.run() == 0  # not due yet
    h.now = rcpt.next_try
    assert h.run() == 1
    assert h.spool.ids() == [] and not h.dsns and len(h.courier.calls) == 2
    assert not h.spool.exists(qid)


def test_rty3_expiry_bounces_once_with_the_last_transient_reason(h: Harness) -> None:
    """RTY-3: past queue_lifetime_seconds the recipient fails with its last 4xx reason; exactly
    one DSN."""
    h.courier.will("a@x.test", DEFER)
    qid = h.submit("s@y.test", "a@x.test")
    tries = 0
    while h.spool.exists(qid) and tries < 30:
        tries += 1
        h.run()
        if h.spool.exists(qid):
            h.now = h.spool.load_meta(qid).recipients[0].next_try
    assert 3 <= tries < 30 and h.now - 1_000_000.0 >= 3600 - 600
    assert len(h.dsns) == 1
    (dsn,) = h.dsns
    assert dsn["action"] == "failed" and dsn["results"][0].status == "4.4.1"
    assert dsn["results"][0].reply == "451 4.4.1 try later"
    (queued,) = h.queued()
    assert queued.sender == "" and queued.recipients[0].address == "s@y.test"  # DSN-2: MAIL FROM:<>


def test_dsn1_dsn7_one_dsn_names_only_the_failed_recipients_across_domains(h: Harness) -> None:
    """DSN-1/DSN-7: a partial failure gives one DSN for the failed ones only; grouped per domain
    (one call each)."""
    h.courier.will("b@x.test", REJECT)
    h.courier.will("c@z.test", REJECT)
    qid = h.submit("s@y.test", "a@x.test", "b@x.test", "c@z.test")
    h.run()
    assert sorted(h.courier.calls) == [("x.test", ["a@x.test", "b@x.test"]),
                                       ("z.test", ["c@z.test"])]
    assert len(h.dsns) == 1
    assert sorted(r.recipient for r in h.dsns[0]["results"]) == ["b@x.test", "c@z.test"]
    assert not h.spool.exists(qid)
    (dsn,) = h.queued()
    assert dsn.bounce_of == {"queue_id": qid, "batch": 0, "recipients": ["b@x.test", "c@z.test"],
                             "action": "failed"}


def test_dsn3_null_sender_failure_is_never_bounced(h: Harness,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """DSN-3: a failed bounce is logged and removed, never bounced."""
    caplog.set_level("INFO", logger="mxroute.relay.queue.notices")
    h.courier.will("a@x.test", REJECT)
    h.submit("", "a@x.test")
    h.run()
    assert h.dsns == [] and h.spool.ids() == []
    assert any("no bounce for a bounce" in r.getMessage() for r in caplog.records)


def test_dsn8_notify_never_suppresses_the_dsn_but_not_the_failure(h: Harness) -> None:
    """DSN-8: NOTIFY=NEVER → no DSN; NOTIFY=SUCCESS only → no failure DSN either."""
    h.courier.will("a@x.test", REJECT)
    h.courier.will("b@x.test", REJECT)
    h.submit("s@y.test", RecipientState("a@x.test", ("NEVER",)),
             RecipientState("b@x.test", ("SUCCESS",)))
    h.run()
    assert h.dsns == [] and h.spool.ids() == []


def test_dur6_delivered_recipients_are_never_retried(h: Harness) -> None:
    """DUR-6: only pending recipients are retried; delivered ones are persisted as such."""
    h.courier.will("b@x.test", DEFER)
    qid = h.submit("s@y.test", "a@x.test", "b@x.test")
    h.run()
    meta = h.spool.load_meta(qid)
    assert [r.state for r in meta.recipients] == [DELIVERED, PENDING]
    h.now = meta.recipients[1].next_try
    h.qm = h.manager()  # a restart: the new manager knows only the spool
    h.qm.recover()
    h.run()
    assert h.courier.calls[-1] == ("x.test", ["b@x.test"])


def test_dsn12_crash_between_dsn_enqueue_and_marking_gives_exactly_one_dsn(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """DSN-12/DUR-7: the DSN is durable before the recipient is marked; recovery finishes the
    marking."""
    h.courier.will("a@x.test", REJECT)
    qid = h.submit("s@y.test", "a@x.test")

    async def crash(meta: MessageMeta) -> None:
        # the fault point: after the DSN's fsync, before the state append
        raise SystemExit("kill -9")

    monkeypatch.setattr(h.spool, "remove", crash)
    with pytest.raises(SystemExit):
        h.run()
    monkeypatch.undo()
    assert len(h.dsns) == 1 and len(h.spool.ids()) == 2  # original still pending + the DSN
    h.qm = h.manager()
    h.qm.recover()
    assert not h.spool.exists(qid)  # marked bounced by recovery: no second attempt, no second DSN
    h.run()
    assert len(h.dsns) == 1 and h.courier.calls.count(("x.test", ["a@x.test"])) == 1


def test_flush_makes_deferred_mail_due_now(h: Harness) -> None:
    """`mxroute queue flush` (issue 15 B: through the control socket's Operator): due now."""
    h.courier.will("a@x.test", DEFER, (Disposition.DELIVERED, "2.0.0", "250 ok"))
    qid = h.submit("s@y.test", "a@x.test")
    h.run()
    assert h.run() == 0
    operator = Operator(h.spool, h.qm.notices, h.qm, forget_hosts=h.qm.courier.forget_unreachable)
    done = asyncio.run(operator.act(Request("flush"), uid=0))
    assert done == [{"queue_id": qid, "result": "flushed"}]
    assert h.courier.forgotten == 1  # RTY-4: hosts skipped as unreachable are worth a try again
    assert h.run() == 1 and h.spool.ids() == []


def test_deleted_while_queued_is_dropped_quietly(h: Harness) -> None:
    """`mxroute queue delete`: the daemon notices when the message comes due."""
    qid = h.submit("s@y.test", "a@x.test")
    assert h.spool.remove_sync(qid)
    h.run()
    assert h.courier.calls == [] and h.spool.ids() == []


def test_dsn10_one_delay_warning_when_enabled(tmp_path: Path) -> None:
    """DSN-10: one `delayed` DSN after delay_warning_seconds, not a second one."""
    h = Harness(tmp_path, delay_warning_seconds=100)
    h.courier.will("a@x.test", DEFER)
    h.submit("s@y.test", "a@x.test")
    for _ in range(5):
        h.now += 700
        h.run()
    assert [d["action"] for d in h.dsns] == ["delayed"]
    assert h.dsns[0]["will_retry_until"] == pytest.approx(1_000_000.0 + 3600)
    h.spool.close()


def test_internal_courier_error_defers_not_loses(h: Harness) -> None:
    """A courier crash never loses a recipient: deferred with 4.3.0."""
    async def boom(*args: Any, **kwargs: Any) -> list[RecipientResult]:
        raise RuntimeError("bug")

    h.courier.deliver = boom  # type: ignore[method-assign]
    qid = h.submit("s@y.test", "a@x.test")
    h.run()
    rcpt = h.spool.load_meta(qid).recipients[0]
    assert rcpt.state == PENDING and rcpt.status == "4.3.0"


def test_dur4_state_write_failure_keeps_the_message_and_retries(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """DUR-4/DUR-6: the disk fails while recording a deferral: the message stays queued and comes
    due again."""
    h.courier.will("a@x.test", DEFER)
    qid = h.submit("s@y.test", "a@x.test")

    async def broken(meta: MessageMeta) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.spool, "update", broken)
    h.run()
    assert h.spool.exists(qid) and h.run() == 0
    monkeypatch.undo()
    h.now += h.settings.retry_min_seconds
    assert h.run() == 1
    # the first attempt's outcome was kept in memory while the disk refused it, then written with
    # the second
    assert h.spool.load_meta(qid).recipients[0].attempts == 2


def test_dur4_dur6_state_write_failure_does_not_redeliver_the_delivered(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """DUR-4/DUR-6: one recipient delivered, one deferred, and the state cannot be written
    (ENOSPC): the retries while the disk stays full send only to the deferred one (found by
    tests/faults/test_diskfull.py)."""
    h.courier.will("b@z.test", DEFER)
    qid = h.submit("s@y.test", "a@x.test", "b@z.test")

    async def broken(meta: MessageMeta) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.spool, "update", broken)
    for _ in range(3):
        h.run()
        h.now += h.settings.retry_max_seconds
    monkeypatch.undo()
    h.run()
    assert [c for c in h.courier.calls if c[0] == "x.test"] == [("x.test", ["a@x.test"])]
    states = {r.address: r.state for r in h.spool.load_meta(qid).recipients}
    assert states == {"a@x.test": DELIVERED, "b@z.test": PENDING}


def test_rty5_destination_concurrency_is_capped_and_idle_destinations_forgotten(
        tmp_path: Path) -> None:
    """RTY-5: 10 messages to one domain never run more than destination_concurrency transactions
    at once."""
    h = Harness(tmp_path, destination_concurrency=2, delivery_concurrency=10)
    active, peak = [0], [0]
    real = h.courier.deliver

    async def slow(*args: Any, **kwargs: Any) -> list[RecipientResult]:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.02)
        active[0] -= 1
        return await real(*args, **kwargs)

    h.courier.deliver = slow  # type: ignore[method-assign]
    for n in range(10):
        h.submit("s@y.test", f"r{n}@x.test")
    assert h.run() == 10
    assert peak[0] == 2 and h.spool.ids() == []
    assert h.qm.slots.in_use() == 0
    h.spool.close()


class Crash(BaseException):
    """kill -9 at a fault point: nothing after it runs, only the disk survives."""


@hsettings(max_examples=60, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_dur7_random_crashes_never_lose_mail_and_notify_once(
        tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """DUR-7/DSN-12: random replies and kill points during delivery and bounce; after recovery and
    enough retries every recipient was delivered (at least once) or named in exactly one DSN."""
    h = Harness(tmp_path_factory.mktemp("dur7"), queue_lifetime_seconds=10**6)
    outcomes = [(Disposition.DELIVERED, "2.0.0", "250 ok"), DEFER, REJECT]
    domains = data.draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=4))
    rcpts = {f"r{i}@{dom}.test" for i, dom in enumerate(domains)}
    for address in rcpts:
        h.courier.will(address,
                       *data.draw(st.lists(st.sampled_from(outcomes), min_size=1, max_size=3)))
    h.submit("s@y.test", *sorted(rcpts))
    for _ in range(12):
        point = data.draw(st.sampled_from([None, "update", "remove", "store"]))
        countdown = [data.draw(st.integers(0, 2))]
        if point is not None:
            real = getattr(h.spool, point)

            async def faulty(*args: Any, _real: Any = real,
                             _countdown: list[int] = countdown) -> Any:
                if _countdown[0] == 0:
                    raise Crash()
                _countdown[0] -= 1
                return await _real(*args)

            setattr(h.spool, point, faulty)
        try:
            h.run()
        except Crash:
            pass
        if point is not None:
            delattr(h.spool, point)  # back to the real method (an instance attribute shadowed it)
        h.qm = h.manager()  # restart: only the disk is known
        h.qm.recover()
        h.now += 10_000
        for address in rcpts:  # later attempts succeed, so the run ends
            if data.draw(st.booleans()):
                h.courier.will(address, (Disposition.DELIVERED, "2.0.0", "250 ok"))
    for address in rcpts:
        h.courier.will(address, (Disposition.DELIVERED, "2.0.0", "250 ok"))
    for _ in range(5):
        h.run()
        h.now += 10_000
    delivered = {a for _, batch in h.courier.calls for a in batch}
    originals = [m for m in h.queued() if m.sender]
    assert originals == []  # nothing stuck once every destination accepts
    # over DSNs enqueued (a DSN file re-sent after a crash is one notification)
    named: dict[str, int] = {}
    for meta, message in h.spool.stored:
        if meta.sender:
            continue
        assert meta.queue_id in h.courier.sent  # every DSN enqueued went out
        for line in message.decode().splitlines():
            if line.startswith("Final-Recipient: rfc822;"):
                named[line.split(";", 1)[1]] = named.get(line.split(";", 1)[1], 0) + 1
    for address in rcpts:
        assert named.get(address, 0) <= 1, f"{address} notified twice"
        assert address in delivered or named.get(address) == 1, f"{address} lost"
    h.spool.close()


# --- plan caching: a PlanCache the caller hands in ----------------------------------------

PLANS = {
    "steady.test": Plan("steady.test", Verdict.DELIVERABLE, "ok", "2.0.0",
                        mx=(MxRecord(10, "mx.steady.test", 300),)),
    "short.test": Plan("short.test", Verdict.DELIVERABLE, "ok", "2.0.0",
                       mx=(MxRecord(10, "mx.short.test", 0),)),  # TTL 0: never reused
    "shuffled.test": Plan("shuffled.test", Verdict.DELIVERABLE, "ok", "2.0.0",
                          decisions=(Decision("MX-3", "RFC 5321 §5.1", "shuffled"),)),
    "broken.test": Plan("broken.test", Verdict.TEMPORARY, "SERVFAIL", "4.4.3"),
}


class CountingRoute:
    """A route() stand-in answering from PLANS and counting what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, resolver: Any, domain: str, policy: Any, rng: random.Random,
                       settings: Any, sender: str = "") -> Route:
        self.asked.append(domain)
        return Route(PLANS[domain], TlsPolicy())


def routed_twice(tmp_path: Path, domain: str, plans: PlanCache | None, *, later: float = 0.0,
                 reconfigure: bool = False) -> list[str]:
    """Route ``domain``, then again ``later`` seconds on: the domains route() was asked for."""
    h = Harness(Path(tempfile.mkdtemp(dir=tmp_path)))
    clock = [0.0]
    if plans is not None:
        plans.clock = lambda: clock[0]
    ask = CountingRoute()
    qm = QueueManager(h.settings, h.spool, None, h.courier, route_fn=ask,  # type: ignore[arg-type]
                      plans=plans)
    asyncio.run(qm.dispatcher.route(domain, ""))
    clock[0] += later
    if reconfigure:  # SIGHUP: a new routing policy, so plans made under the old one are stale
        qm.reconfigure(h.settings)
    asyncio.run(qm.dispatcher.route(domain, ""))
    h.spool.close()
    return ask.asked


def test_without_a_plan_cache_every_delivery_is_routed_afresh(tmp_path: Path) -> None:
    assert routed_twice(tmp_path, "steady.test", None) == ["steady.test"] * 2


def test_a_plan_cache_reuses_a_steady_plan_for_its_lifetime_only(tmp_path: Path) -> None:
    """One route() for a burst; asked again once PLAN_CACHE_SECONDS (or the MX TTL) passed."""
    assert routed_twice(tmp_path, "steady.test", PlanCache()) == ["steady.test"]
    again = ["steady.test"] * 2
    assert routed_twice(tmp_path, "steady.test", PlanCache(), later=PLAN_CACHE_SECONDS) == again
    assert routed_twice(tmp_path, "short.test", PlanCache()) == ["short.test"] * 2
    assert routed_twice(tmp_path, "steady.test", PlanCache(), reconfigure=True) == again


def test_mx3_mx18_shuffled_or_undeliverable_plans_are_never_reused(tmp_path: Path) -> None:
    """MX-3: equal preferences are shuffled on every attempt; MX-18: a temporary verdict is
    asked again each time."""
    assert routed_twice(tmp_path, "shuffled.test", PlanCache()) == ["shuffled.test"] * 2
    assert routed_twice(tmp_path, "broken.test", PlanCache()) == ["broken.test"] * 2


def routed_per_sender(tmp_path: Path, routes: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Route steady.test for two senders and the first again: what route() was asked."""
    h = Harness(Path(tempfile.mkdtemp(dir=tmp_path)), routes=routes)
    asked: list[tuple[str, str]] = []

    async def ask(resolver: Any, domain: str, policy: Any, rng: random.Random,
                  settings: Any, sender: str = "") -> Route:
        asked.append((domain, sender))
        return Route(PLANS[domain], TlsPolicy())

    plans = PlanCache(clock=lambda: 0.0)
    qm = QueueManager(h.settings, h.spool, None, h.courier, route_fn=ask,  # type: ignore[arg-type]
                      plans=plans)
    for sender in ("a@one.test", "b@vip.test", "a@one.test"):
        asyncio.run(qm.dispatcher.route("steady.test", sender))
    h.spool.close()
    return asked


def test_plan_cache_keys_on_the_sender_when_routes_name_senders(tmp_path: Path) -> None:
    """issue 16: with a sender-dependent ``routes`` rule a plan made for one sender is never
    reused for another (Postfix sender_dependent_relayhost_maps); without one, per domain."""
    rules = [{"match": "*", "sender": "@vip.test", "next_hop": "[hub.test]"}]
    assert routed_per_sender(tmp_path, rules) == [
        ("steady.test", "a@one.test"), ("steady.test", "b@vip.test")]
    plain = [{"match": "*", "next_hop": "[hub.test]"}]
    assert routed_per_sender(tmp_path, plain) == [("steady.test", "a@one.test")]


def test_dispatch_routes_with_the_envelope_sender(h: Harness) -> None:
    """issue 16: the queue hands route() the message's envelope sender ("" for a bounce)."""
    asked: list[str] = []

    async def ask(resolver: Any, domain: str, policy: Any, rng: random.Random,
                  settings: Any, sender: str = "") -> Route:
        asked.append(sender)
        return Route(Plan(domain, Verdict.DELIVERABLE, "ok", "2.0.0"), TlsPolicy())

    h.qm.route_fn = ask
    h.courier.will("a@x.test", (Disposition.DELIVERED, "2.0.0", "250 ok"))
    h.submit("s@y.test", "a@x.test")
    h.run()
    assert asked == ["s@y.test"]


def test_due_recipients_bring_their_domains_other_pending_recipients() -> None:
    """issue 15 C4: a@ due, b@ of the same domain due a moment later: both now; c@ of another
    domain waits for its own time; a flush takes everyone."""
    from mxroute.relay.queue.dispatch import due_recipients
    from mxroute.relay.spool.format import RecipientState

    a, b, c = (RecipientState(address=addr) for addr in ("a@d.test", "b@D.test", "c@e.test"))
    a.next_try, b.next_try, c.next_try = 100.0, 108.0, 150.0
    assert due_recipients([a, b, c], 100.0) == [a, b]
    assert due_recipients([a, b, c], 99.0) == []
    assert due_recipients([a, b, c], 99.0, force=True) == [a, b, c]
    assert due_recipients([a, b, c], 150.0) == [a, b, c]


def test_dur3_restarted_delivery_recovery_leaves_a_young_file_for_settle_seconds(
        h: Harness) -> None:
    """Issue 21 (DUR-3): a delivery process restarted while the intake runs recovers with
    ``settle``: a file written in the last ``settle`` seconds may be inside its rename ->
    directory fsync window, so it is tried only ``settle`` seconds later; a first start
    (``settle`` 0) tries it at once."""
    h.courier.will("a@x.test", (Disposition.DELIVERED, "2.0.0", "250 ok"))
    h.courier.will("b@x.test", (Disposition.DELIVERED, "2.0.0", "250 ok"))
    young = h.submit("s@y.test", "a@x.test")
    h.qm = h.manager()
    assert h.qm.recover(settle=10.0) == 1
    assert h.run() == 0 and h.spool.exists(young)  # inside the window: not tried
    h.now += 10.0
    assert h.run() == 1 and not h.spool.exists(young)
    other = h.submit("s@y.test", "b@x.test")
    h.qm = h.manager()
    assert h.qm.recover() == 1
    assert h.run() == 1 and not h.spool.exists(other)


def test_dur7_recovery_beside_a_listening_intake_leaves_its_new_files_to_the_notices(
        h: Harness) -> None:
    """Issue 23 (DUR-7, DUR-3): the first delivery process recovers while the intake already
    listens. A message queued before (ID made before ``since``) is recovered and due now; one
    the new intake committed (ID made at or after ``since``) is not read by the recovery: its
    notice makes it due at once, the recovery's backstop entry ``settle`` s later is the same
    timetable entry (one per ID), and each is delivered once."""
    h.courier.will("a@x.test", (Disposition.DELIVERED, "2.0.0", "250 ok"))
    h.courier.will("b@x.test", (Disposition.DELIVERED, "2.0.0", "250 ok"))
    old = h.submit("s@y.test", "a@x.test")
    h.now += 5.0
    new = h.submit("s@y.test", "b@x.test")
    h.qm = h.manager()
    assert h.qm.recover(settle=10.0, since=h.now - 1.0) == 2
    assert h.run() == 1 and not h.spool.exists(old) and h.spool.exists(new)
    h.qm.add_id(new)  # the intake's notice, read once the recovery is done
    assert len(h.qm.timetable) == 1
    assert h.run() == 1 and not h.spool.exists(new)
    h.now += 10.0
    assert h.run() == 0  # the backstop entry went with the notice's: nothing is tried twice
    assert h.courier.calls == [("x.test", ["a@x.test"]), ("x.test", ["b@x.test"])]
