"""Issue 22: the in-flight budget's counting and the default max_inflight_bytes' sizing."""

from __future__ import annotations

import pytest

from mxroute.errors import ConfigError
from mxroute.hostdefaults import (
    AUTO_CAP,
    FALLBACK_MEMORY,
    auto_budget,
    delivery_share,
    memory_limit,
)
from mxroute.relay.budget import Budget
from mxroute.settings import load_settings

MIB = 1 << 20


def test_take_refuses_past_the_limit_and_counts_the_refusal() -> None:
    """Issue 22: a take that does not fit changes nothing but the refusal count."""
    budget = Budget(10)
    assert budget.take(6) and budget.used == 6 and budget.free == 4
    assert not budget.take(5) and budget.used == 6 and budget.refused == 1
    assert budget.take(4) and budget.free == 0
    budget.give(10)
    assert budget.used == 0 and budget.peak == 10
    assert budget.take(25) and budget.used == 25  # an empty budget takes anything: no livelock
    assert not budget.fits(1)


def test_force_may_exceed_and_give_never_goes_below_zero() -> None:
    """Issue 22: force() counts a message larger than the share; giving back more is a bug."""
    budget = Budget(10)
    budget.force(25)
    assert budget.used == 25 and not budget.fits(1) and budget.refused == 0
    with pytest.raises(ValueError):
        budget.give(26)


def test_memory_limit_is_meminfo_or_a_lower_cgroup_limit() -> None:
    """Issue 22: MemTotal, unless the cgroup's memory.max is lower ("max": no limit)."""
    meminfo = "MemTotal:        2048000 kB\nMemFree:  100 kB\n"
    assert memory_limit(meminfo, None) == 2048000 * 1024
    assert memory_limit(meminfo, "max\n") == 2048000 * 1024
    assert memory_limit(meminfo, "536870912\n") == 536870912
    assert memory_limit("", None) == FALLBACK_MEMORY


def test_auto_budget_quarter_capped_and_floored() -> None:
    """Issue 22: a quarter of memory, at most 1 GiB, at least two largest messages."""
    assert auto_budget(2048 * MIB, 35 * MIB) == 512 * MIB
    assert auto_budget(64 * 1024 * MIB, 35 * MIB) == AUTO_CAP
    assert auto_budget(128 * MIB, 35 * MIB) == 70 * MIB
    assert delivery_share(512 * MIB, 35 * MIB) == 128 * MIB
    assert delivery_share(70 * MIB, 35 * MIB) == 35 * MIB


def test_explicit_budget_below_two_messages_is_a_config_error() -> None:
    """Issue 22: max_inflight_bytes must hold one message received and one delivered."""
    with pytest.raises(ConfigError, match="max_inflight_bytes"):
        load_settings(None, max_message_size=10 * MIB, max_inflight_bytes=15 * MIB)
    settings = load_settings(None, max_message_size=10 * MIB, max_inflight_bytes=20 * MIB)
    assert settings.inflight_budget() == 20 * MIB
    assert load_settings(None).inflight_budget() >= 2 * load_settings(None).max_message_size
