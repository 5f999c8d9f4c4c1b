"""The schedule snapshot's bytes (issue 23, DUR-7): ``mxroute.relay.spool.schedule``, pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxroute.relay.spool.format import new_queue_id
from mxroute.relay.spool.schedule import ScheduleError, decode, encode

IDS = [new_queue_id() for _ in range(3)]


def test_round_trip_sorted_with_context() -> None:
    """Issue 23: every entry comes back (by ID), with the context it was written under."""
    entries = [(IDS[2], 2400, 1_800_000_000.25), (IDS[0], 100, 0.0), (IDS[1], 7, 5.5)]
    data = encode(entries, "-")
    assert data.startswith(b"MXS1 3 ")
    body = data.split(b"\n")[1:-1]
    assert [line.split(b" ")[0].decode() for line in body] == sorted(IDS)
    got, context = decode(data)
    assert context == "-"
    assert set(got) == set(IDS)
    assert got[IDS[0]] == (100, 0.0) and got[IDS[1]][0] == 7 and got[IDS[2]][0] == 2400


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_a_due_time_never_comes_back_later(due: float) -> None:
    """Issue 23: a stale or rounded snapshot may only make a message due earlier, never later;
    at most 2 ms earlier from rounding."""
    (_size, back), = decode(encode([(IDS[0], 1, due)], "c0ffee"))[0].values()
    assert back <= due and due - back < 0.0021 + due * 1e-15


def test_empty_snapshot() -> None:
    assert decode(encode([], "-")) == ({}, "-")


@pytest.mark.parametrize("damage", [
    lambda d: d[:-3],  # torn
    lambda d: d[:5],  # torn in the header
    lambda d: b"",  # empty
    lambda d: d.replace(b"MXS1", b"MXS9", 1),  # another version
    lambda d: d[:-10] + bytes([d[-10] ^ 1]) + d[-9:],  # a flipped bit in the body
    lambda d: d.replace(b" 2 ", b" 3 ", 1),  # the count does not match
    lambda d: d + b"extra 1 2\n",  # a line the checksum does not cover
])
def test_a_damaged_snapshot_is_refused_whole(damage: object) -> None:
    """Issue 23: a torn, damaged or foreign snapshot is not used at all (every file is read)."""
    data = encode([(IDS[0], 10, 20.0), (IDS[1], 11, 21.0)], "-")
    with pytest.raises(ScheduleError):
        decode(damage(data))  # type: ignore[operator]


def test_bad_entries_are_refused() -> None:
    """Issue 23: an entry that is no queue ID, or a negative size, fails the snapshot."""
    import zlib

    for body in (b"../etc 1 2\n", IDS[0].encode() + b" -1 2\n", IDS[0].encode() + b" 1\n"):
        data = b"MXS1 1 %08x -\n" % zlib.crc32(body) + body
        with pytest.raises(ScheduleError):
            decode(data)
    with pytest.raises(ValueError):
        encode([], "two words")
