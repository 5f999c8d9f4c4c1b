"""The pure parts of the read-only queue tools (issue 15 B): states, filters, durations, age
buckets, the summary's rows and the queue-ID prefix lookup."""

from __future__ import annotations

import pytest

from mxroute.errors import EX_NOINPUT, EX_USAGE
from mxroute.relay.spool.format import DELIVERED, MessageMeta, RecipientState
from mxroute.relay.spool.listing import (
    BUCKET_LABELS,
    MESSAGE_STATES,
    Filter,
    Summary,
    bucket,
    entry,
    message_state,
    parse_duration,
    recipient_state,
)
from mxroute.relay.spool.lookup import NoSuchMessage, QueueIdError, resolve_id

NOW = 1_000_000.0


def meta(queue_id: str = "0A00000001", age: float = 0.0, size: int = 100,
         *recipients: RecipientState) -> MessageMeta:
    return MessageMeta(queue_id=queue_id, sender="a@s.test", arrival=NOW - age,
                       recipients=list(recipients) or [RecipientState("u@d.test")], size=size)


def waiting(address: str, seconds: float, reply: str = "451 4.3.0 later") -> RecipientState:
    return RecipientState(address, attempts=1, next_try=NOW + seconds, reply=reply)


def test_recipient_and_message_states() -> None:
    """issue 15 B: never tried or due = active; waiting for its retry time = deferred; done
    recipients keep their end state; a message is active when any recipient is due."""
    assert recipient_state(RecipientState("u@d.test"), NOW) == "active"
    assert recipient_state(waiting("u@d.test", -1), NOW) == "active"
    assert recipient_state(waiting("u@d.test", 60), NOW) == "deferred"
    assert recipient_state(waiting("u@D.test", 60), NOW, suspended={"d.test"}) == "suspended"
    assert recipient_state(waiting("u@d.test", 60), NOW, True, {"d.test"}) == "hold"
    assert recipient_state(RecipientState("u@e.test"), NOW, suspended={"d.test"}) == "active"
    assert recipient_state(RecipientState("u@d.test", state=DELIVERED), NOW) == "delivered"
    assert message_state(meta("0A00000001", 0, 1, waiting("a@d.test", 60),
                              waiting("b@d.test", 0)), NOW) == "active"
    assert message_state(meta("0A00000001", 0, 1, waiting("a@d.test", 60)), NOW) == "deferred"
    assert list(MESSAGE_STATES) == ["hold", "active", "deferred"]
    held = meta("0A00000001", 0, 1, waiting("a@d.test", -1))
    held.held = True
    assert message_state(held, NOW) == "hold"
    assert recipient_state(held.recipients[0], NOW, held.held) == "hold"


def test_filters_combine() -> None:
    """issue 15 B: --domain (pending recipients, any case), --state, --older-than."""
    old = meta("0A00000001", 7200, 1, waiting("a@Dest.test", 60),
               RecipientState("b@other.test", state=DELIVERED))
    assert Filter().matches(old, NOW)
    assert Filter(domain="dest.TEST.").matches(old, NOW)
    assert not Filter(domain="other.test").matches(old, NOW)  # delivered there already
    assert Filter(state="deferred", older_than=3600).matches(old, NOW)
    assert not Filter(state="active").matches(old, NOW)
    assert not Filter(older_than=7201).matches(old, NOW)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1w", 604800),
    ("1h30m", 5400), ("2H", 7200)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "h", "-1h", "1h 30m", "1.5h", "1hh"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_age_buckets_are_qshapes() -> None:
    assert BUCKET_LABELS[0] == "5m" and BUCKET_LABELS[-1] == "1280m+"
    assert [bucket(s * 60) for s in (0, 4.9, 5, 9, 10, 639, 640, 1279, 1280, 10**6)] == \
        [0, 0, 1, 1, 2, 7, 8, 8, 9, 9]


def test_summary_counts_each_message_once_per_domain() -> None:
    """issue 15 B summary: messages, recipients, volume, oldest and newest per domain, most
    messages first, top N, and a total counting each message once."""
    summary = Summary(NOW)
    summary.add(meta("0A00000001", 60, 1000, waiting("a@x.test", 5), waiting("b@x.test", 5),
                     waiting("c@y.test", 5)))
    summary.add(meta("0A00000002", 7200, 500, waiting("d@y.test", 5)))
    summary.add(meta("0A00000003", 30, 10, RecipientState("e@z.test", state=DELIVERED)))
    x, y = (r.to_json() for r in sorted(summary.rows(), key=lambda r: r.domain))
    assert [r.domain for r in summary.rows()] == ["y.test", "x.test"]
    assert (x["messages"], x["recipients"], x["volume"]) == (1, 2, 1000)
    assert (y["messages"], y["recipients"], y["volume"]) == (2, 2, 1500)
    assert (y["oldest"], y["newest"]) == (NOW - 7200, NOW - 60)
    assert y["buckets"][0] == 1 and y["buckets"][5] == 1  # < 5 min, 80-160 min
    total = summary.total.to_json()
    assert (total["messages"], total["recipients"], total["volume"]) == (2, 4, 1500)
    assert [r["domain"] for r in summary.to_json(top=1)["domains"]] == ["y.test"]


def test_entry_lists_every_recipient_with_state_and_reason() -> None:
    """issue 15 B list --json: CONTRACT's one object per message, with its recipients, their
    states and last replies."""
    data = entry(meta("0A00000001", 10, 7, waiting("a@x.test", 60),
                      RecipientState("b@x.test")), NOW)
    assert data["state"] == "active" and data["pending"] == 2 and data["size"] == 7
    a, b = data["recipients"]
    assert (a["state"], a["reason"], a["next_try"]) == ("deferred", "451 4.3.0 later", NOW + 60)
    assert (b["state"], b["reason"], b["next_try"]) == ("active", None, None)


IDS = ["0A0000000000000001", "0B0000000000000002", "0B0000000000000003", "0B00"]


def test_a_unique_prefix_names_a_message() -> None:
    """issue 15 B: a unique prefix (any case) is the ID; an exact ID wins over longer ones."""
    assert resolve_id("0a", IDS) == "0A0000000000000001"
    assert resolve_id("0B0000000000000003", IDS) == "0B0000000000000003"
    assert resolve_id("0b00", IDS) == "0B00"


def test_ambiguous_unknown_and_bad_ids() -> None:
    with pytest.raises(QueueIdError, match="ambiguous.*0B0000000000000002, 0B0000000000000003"
                       ) as ambiguous:
        resolve_id("0B0", IDS)
    assert ambiguous.value.exit_code == EX_USAGE
    with pytest.raises(NoSuchMessage) as unknown:
        resolve_id("0F", IDS)
    assert unknown.value.exit_code == EX_NOINPUT
    for bad in ("", "../etc", "0A-", "x" * 65):
        with pytest.raises(QueueIdError, match="is not a queue ID"):
            resolve_id(bad, IDS)
    many = [f"0C{n:08d}" for n in range(25)]
    with pytest.raises(QueueIdError, match="and 15 more"):
        resolve_id("0C", many)


def test_message_bytes_are_printable_lines() -> None:
    """issue 15 B cat, SEC-6: LF or CRLF ends a line, tabs stay, every other control (ESC, BEL,
    a lone CR, C1 CSI) and invalid UTF-8 is shown as \\xNN."""
    from mxroute.text import printable_lines

    data = (b"Subject: \x1b]0;t\x07x\r\n\tfolded\r\nA: caf\xc3\xa9 \xff\r\nB: \xc2\x9b2J a\rb\n"
            b"\r\nbody\r\n")
    assert printable_lines(data) == [
        "Subject: \\x1b]0;t\\x07x", "\tfolded", "A: caf\u00e9 \\xff", "B: \\x9b2J a\\x0db", "",
        "body"]
    assert printable_lines(b"") == [] and printable_lines(b"no newline") == ["no newline"]
