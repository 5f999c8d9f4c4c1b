"""Issue 21, SEC-8/SEC-10: the intake's pure abuse bounds (mxroute/relay/intake/caps.py)."""

from __future__ import annotations

import pytest

from mxroute.relay.intake.caps import (
    JUNK_COMMANDS,
    SESSION_TOO_LONG,
    TOO_MANY_JUNK,
    AuthFailures,
    SessionCaps,
)


def test_junk_commands_are_capped_and_a_transaction_starts_the_count_again() -> None:
    """Issue 21: the limit's worth of junk runs, one more is refused; MAIL/RCPT/DATA are not
    junk; a completed transaction resets the count."""
    caps = SessionCaps(started=0.0, max_seconds=100.0, junk_limit=3)
    assert [caps.refusal(c, 1.0) for c in ("EHLO", "NOOP", "MAIL", "RCPT", "DATA", "RSET")] == \
        [None] * 6
    assert caps.refusal("VRFY", 1.0) == TOO_MANY_JUNK
    caps.transaction_done()
    assert [caps.refusal("NOOP", 2.0) for _ in range(3)] == [None] * 3
    assert caps.refusal("HELP", 2.0) == TOO_MANY_JUNK
    assert caps.refusal("QUIT", 2.0) is None  # QUIT always ends politely


@pytest.mark.parametrize("command", sorted(JUNK_COMMANDS | {"MAIL", "RCPT", "DATA", "AUTH"}))
def test_a_session_past_its_life_gets_421_for_any_command_but_quit(command: str) -> None:
    """Issue 21, SEC-10: the session's age is checked at every command."""
    caps = SessionCaps(started=10.0, max_seconds=5.0, junk_limit=100)
    assert caps.refusal(command, 14.9) is None
    assert caps.refusal(command, 15.0) == SESSION_TOO_LONG
    assert caps.refusal("QUIT", 99.0) is None
    assert SESSION_TOO_LONG.startswith("421 4.7.0 ")


def test_auth_failures_count_per_address_within_the_window() -> None:
    """Issue 21, SEC-8: the limit's failures block the address until the oldest leaves the
    window; other addresses are not affected; a success forgets (and reports) the count."""
    table = AuthFailures(limit=3, window=60.0)
    assert [table.failed("192.0.2.1", t) for t in (0.0, 10.0, 20.0)] == [1, 2, 3]
    assert table.blocked("192.0.2.1", 30.0) and not table.blocked("192.0.2.2", 30.0)
    assert not table.blocked("192.0.2.1", 60.0)  # the first failure left the window
    assert table.count("192.0.2.1", 60.0) == 2
    assert table.succeeded("192.0.2.1", 61.0) == 2
    assert table.count("192.0.2.1", 61.0) == 0 and len(table) == 0
    assert table.succeeded("192.0.2.9", 61.0) == 0


def test_auth_failure_table_is_bounded_with_many_addresses() -> None:
    """Issue 21: 100,000 guessing addresses never grow the table past its capacity; the most
    recently failing are the ones remembered."""
    table = AuthFailures(limit=2, window=600.0, capacity=1000)
    for n in range(100_000):
        table.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", float(n) / 1000)
        assert len(table) <= 1000
    assert table.count("10.1.134.159", 100.0) == 1  # the last one (n = 99,999)
    assert table.count("10.0.0.0", 100.0) == 0  # long forgotten
    table.failed("10.1.134.159", 100.0)
    assert table.blocked("10.1.134.159", 100.0)


def test_auth_failures_reconfigured_keeps_counts() -> None:
    """Issue 21: a reload's new limit applies to what was counted."""
    table = AuthFailures(limit=5, window=60.0)
    for t in range(3):
        table.failed("198.51.100.7", float(t))
    assert not table.blocked("198.51.100.7", 5.0)
    table.configure(3, 60.0)
    assert table.blocked("198.51.100.7", 5.0)
