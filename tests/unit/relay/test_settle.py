"""The queue's pure decisions after an attempt (relay.queue.settle): no spool, no event loop.

Checklist D (RTY-1..5; there is no RTY-6), E (DSN-1, DSN-3, DSN-8..10) and H (DUR-6/7): what
becomes of a recipient, given its state, the result, the sender, the clock and the random source.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxroute.relay.envelope import Disposition, RecipientResult
from mxroute.relay.queue.settle import (
    JITTER,
    Next,
    Settlement,
    Timing,
    retry_delay,
    settle,
    warning_due,
)
from mxroute.relay.spool.format import RecipientState

ARRIVAL = 1_000_000.0
HOUR = 3600.0
TIMING = Timing(retry_min=300, retry_max=3600, queue_lifetime=5 * 86400, bounce_lifetime=86400,
                delay_warning=4 * HOUR)


def tried(attempts: int = 1, notify: tuple[str, ...] = (), warned: bool = False,
          reply: str = "451 4.4.1 try later") -> RecipientState:
    """A recipient whose state already counts the attempt just made."""
    return RecipientState("a@x.test", notify, attempts=attempts, reply=reply, warned=warned)


def result(disposition: Disposition, *, hop_dsn: bool = False) -> RecipientResult:
    status = {Disposition.DELIVERED: "2.0.0", Disposition.BOUNCED: "5.1.1"}.get(disposition,
                                                                                "4.4.1")
    reply = RecipientResult("a@x.test", disposition, status, f"{status} reply", "mx.x.test[::1]:25",
                            remote_reply=True)
    reply.next_hop_dsn = hop_dsn
    return reply


def decide(rcpt: RecipientState, disposition: Disposition, *, age: float = 60.0,
           sender: str = "s@y.test", rng: random.Random | None = None, timing: Timing = TIMING,
           hop_dsn: bool = False) -> Settlement:
    return settle(rcpt, result(disposition, hop_dsn=hop_dsn), sender=sender, arrival=ARRIVAL,
                  now=ARRIVAL + age, timing=timing, rng=rng or random.Random(1))


def test_rty1_rty2_a_transient_failure_is_retried_later_within_the_schedule() -> None:
    """RTY-1: kept, to be retried; RTY-2: the next try ≥ retry_min after now, ≤ retry_max."""
    decision = decide(tried(attempts=1), Disposition.DEFERRED)
    assert decision.next is Next.RETRY and not decision.failed
    assert decision.wait == 300 and decision.next_try == ARRIVAL + 60 + decision.wait
    assert decision.why == "deferred (451 4.4.1 try later); attempt 2 in 300s"
    later = decide(tried(attempts=4), Disposition.DEFERRED)
    assert 2400 * (1 - JITTER) <= later.wait <= 2400  # 300 * 2**3, the top quarter random


def test_rty2_the_rng_decides_the_jitter_and_only_for_a_retry() -> None:
    """RTY-2: the same seed gives the same time; delivered, bounced or expired draw nothing."""
    same = [decide(tried(attempts=5), Disposition.DEFERRED, rng=random.Random(9)).next_try
            for _ in range(2)]
    assert same[0] == same[1]
    rng = random.Random(3)
    state = rng.getstate()
    decide(tried(), Disposition.DELIVERED, rng=rng)
    decide(tried(), Disposition.BOUNCED, rng=rng)
    decide(tried(), Disposition.DEFERRED, rng=rng, age=6 * 86400)
    assert rng.getstate() == state


@given(st.integers(min_value=0, max_value=10_000), st.integers(1, 10_000),
       st.integers(0, 100_000), st.randoms())
def test_rty2_delay_always_within_min_and_max(attempts: int, minimum: int, extra: int,
                                              rng: random.Random) -> None:
    maximum = minimum + extra
    delay = retry_delay(attempts, minimum, maximum, rng)
    assert minimum <= delay <= maximum


def test_rty2_backoff_doubles_then_caps_with_bounded_jitter() -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, 300, 3600, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, 1):
        base = min(3600, 300 * 2 ** (n - 1))
        assert max(300, base * (1 - JITTER)) <= delay <= base
    assert delays[-1] > 3600 * (1 - JITTER) - 1e-9  # capped at retry_max_seconds


def test_rty2_jitter_spreads_retries_but_is_reproducible_with_a_seed() -> None:
    spread = {round(retry_delay(4, 300, 3600, random.Random(seed)), 3) for seed in range(50)}
    assert len(spread) > 40
    seeded = [retry_delay(4, 300, 3600, random.Random(1)) for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_rty3_past_the_lifetime_the_recipient_expires_with_its_last_reason() -> None:
    """RTY-3: at ≥ 5 days (the default) a transient failure fails; a notice is owed (DSN-1)."""
    decision = decide(tried(attempts=30), Disposition.DEFERRED, age=5 * 86400)
    assert decision.next is Next.EXPIRED and decision.failed
    assert decision.why == "expired after 5.0 days in the queue" and decision.age == 5 * 86400
    assert decide(tried(), Disposition.DEFERRED, age=5 * 86400 - 1).next is Next.RETRY


def test_rty3_a_bounce_has_the_shorter_bounce_lifetime() -> None:
    """RTY-3 MAY: mail from the null reverse-path gives up after bounce_lifetime."""
    assert decide(tried(), Disposition.DEFERRED, age=86400, sender="").next is Next.EXPIRED
    assert decide(tried(), Disposition.DEFERRED, age=86400).next is Next.RETRY
    assert TIMING.lifetime("") == 86400 and TIMING.lifetime("s@y.test") == 5 * 86400


def test_rty3_expiry_comes_only_after_a_transient_failure() -> None:
    """RTY-3: a delivery or a permanent failure past the lifetime is just that, not an expiry."""
    assert decide(tried(), Disposition.DELIVERED, age=10 * 86400).next is Next.DELIVERED
    assert decide(tried(), Disposition.BOUNCED, age=10 * 86400).next is Next.BOUNCED


def test_dsn1_a_permanent_failure_bounces_at_once() -> None:
    """DSN-1: a 5xx fails the recipient on its first attempt; a notice is owed."""
    decision = decide(tried(attempts=1), Disposition.BOUNCED)
    assert decision.next is Next.BOUNCED and decision.failed and decision.why == "permanent failure"


@pytest.mark.parametrize(("notify", "hop_dsn", "relayed"), [
    (("SUCCESS",), False, True), (("SUCCESS", "FAILURE"), False, True),
    (("SUCCESS",), True, False), ((), False, False), (("NEVER",), False, False)])
def test_dsn9_delivered_owes_a_relayed_notice_only_for_success_to_a_hop_without_dsn(
        notify: tuple[str, ...], hop_dsn: bool, relayed: bool) -> None:
    """DSN-9 (RFC 3461 §5.2.3): NOTIFY=SUCCESS and a next hop without DSN → ``relayed``."""
    decision = decide(tried(notify=notify), Disposition.DELIVERED, hop_dsn=hop_dsn)
    assert decision.next is Next.DELIVERED and decision.why is None
    assert decision.relayed is relayed and not decision.failed and not decision.warn


@pytest.mark.parametrize(("notify", "warned", "sender", "age", "due"), [
    ((), False, "s@y.test", 4 * HOUR, True),  # DSN-10: the default NOTIFY includes DELAY
    (("DELAY",), False, "s@y.test", 5 * HOUR, True),
    ((), False, "s@y.test", 4 * HOUR - 1, False),  # not yet
    ((), True, "s@y.test", 8 * HOUR, False),  # at most one warning
    (("FAILURE",), False, "s@y.test", 5 * HOUR, False),  # DSN-8: NOTIFY without DELAY
    (("NEVER",), False, "s@y.test", 5 * HOUR, False),
    ((), False, "", 5 * HOUR, False),  # DSN-3: nothing about a bounce
])
def test_dsn10_a_delay_warning_is_due_once_when_asked_and_not_for_a_bounce(
        notify: tuple[str, ...], warned: bool, sender: str, age: float, due: bool) -> None:
    rcpt = tried(notify=notify, warned=warned)
    now = ARRIVAL + age
    assert warning_due(rcpt, sender=sender, arrival=ARRIVAL, now=now, timing=TIMING) is due
    decision = decide(rcpt, Disposition.DEFERRED, age=age, sender=sender)
    assert decision.next is Next.RETRY and decision.warn is due


def test_dsn10_zero_disables_delay_warnings_and_retry_until_is_the_lifetime() -> None:
    """DSN-10: delay_warning 0 → never; Will-Retry-Until is arrival + queue lifetime (DSN-6)."""
    off = Timing(300, 3600, 5 * 86400, 86400, 0)
    assert not decide(tried(), Disposition.DEFERRED, age=4 * 86400, timing=off).warn
    assert TIMING.retry_until(ARRIVAL) == ARRIVAL + 5 * 86400


@given(st.sampled_from(list(Disposition)), st.integers(1, 50), st.floats(0, 10 * 86400),
       st.sampled_from(["", "s@y.test"]), st.randoms())
def test_dur6_dur7_every_outcome_gets_exactly_one_decision_and_none_is_lost(
        disposition: Disposition, attempts: int, age: float, sender: str,
        rng: random.Random) -> None:
    """DUR-6/DUR-7: each result ends delivered, failed with a notice owed, or retried at a
    recorded time in the future; a recipient never just vanishes."""
    decision = decide(tried(attempts=attempts), disposition, age=age, sender=sender, rng=rng)
    now = ARRIVAL + age
    if disposition is Disposition.DELIVERED:
        assert decision.next is Next.DELIVERED
    elif disposition is Disposition.BOUNCED or age >= TIMING.lifetime(sender):
        assert decision.failed and decision.why
    else:
        assert decision.next is Next.RETRY and decision.why
        assert now + TIMING.retry_min <= decision.next_try <= now + TIMING.retry_max
    assert decision.failed is (decision.next in (Next.BOUNCED, Next.EXPIRED))
