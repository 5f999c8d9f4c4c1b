"""The MAIL FROM domain check as a pure function of the MX answer (SPF-13, DSN-13; RFC 7505
§4.2)."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mxroute.dns.answer import Answer, Outcome
from mxroute.relay.intake.sendercheck import judge
from mxroute.routing.plan import is_null_mx, mx_records


def mx(*records: str, outcome: Outcome = Outcome.RECORDS, detail: str = "") -> Answer:
    rrs = tuple(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.MX, r) for r in records)
    return Answer("s.test", "MX", outcome, rrs, 300, detail=detail)


NULL_MX = mx("0 .")
TEMPORARY = [
    mx(outcome=Outcome.SERVFAIL, detail="server answered SERVFAIL"),
    mx(outcome=Outcome.TIMEOUT),
    mx(outcome=Outcome.CNAME_LOOP),
    None,
]  # None: no answer within the wait


@pytest.mark.parametrize("mode", ["reject", "strict"])
def test_spf13_null_mx_sender_is_550_5727_in_both_modes(mode: str) -> None:
    """SPF-13: RFC 7505 §4.2 — 550 with enhanced status 5.7.27 ("Sender address has null MX")."""
    verdict = judge("s.test", NULL_MX, mode)
    assert verdict.reply is not None and verdict.reply.startswith(
        "550 5.7.27 Sender address has null MX"
    )
    assert "s.test" in verdict.reply and "\r" not in verdict.reply and "\n" not in verdict.reply


def test_spf13_null_mx_recognised_as_plan_does() -> None:
    """The same rule as delivery (MX-10): one MX record whose exchange is "."; beside others it is
    ignored."""
    assert is_null_mx(mx_records(mx("0 .")))
    assert not is_null_mx(mx_records(mx("0 .", "10 mx.s.test.")))
    assert not is_null_mx(mx_records(mx("10 mx.s.test.")))
    assert judge("s.test", mx("0 .", "10 mx.s.test."), "strict").reply is None


@pytest.mark.parametrize("answer", [mx("10 mx.s.test."), mx(outcome=Outcome.NODATA)])
@pytest.mark.parametrize("mode", ["reject", "strict"])
def test_spf13_a_domain_that_takes_mail_passes_silently(answer: Answer, mode: str) -> None:
    """MX records, or none at all (implicit MX, RFC 5321 §5.1): accepted, nothing to log."""
    verdict = judge("s.test", answer, mode)
    assert verdict.reply is None and verdict.note is None


@pytest.mark.parametrize("answer", TEMPORARY)
def test_spf13_dns_trouble_default_accepts_and_notes_it(answer: Answer | None) -> None:
    """Default (reject): a temporary DNS failure never refuses a client (DUR-9); it is logged."""
    verdict = judge("s.test", answer, "reject")
    assert verdict.reply is None
    assert verdict.note is not None and "s.test" in verdict.note and "accepted" in verdict.note


@pytest.mark.parametrize("answer", TEMPORARY)
def test_spf13_dns_trouble_strict_is_451_443(answer: Answer | None) -> None:
    """strict: the check must be able to run; a temporary DNS failure is 451 4.4.3 (the client
    retries)."""
    verdict = judge("s.test", answer, "strict")
    assert verdict.reply is not None and verdict.reply.startswith("451 4.4.3 ")
    assert "s.test" in verdict.reply


def test_spf13_nxdomain_default_accepts_with_a_note_strict_refuses_518() -> None:
    """NXDOMAIN: accepted by default (local programs send as user@host.internal); strict: 550
    5.1.8."""
    nxdomain = mx(outcome=Outcome.NXDOMAIN)
    lenient = judge("s.test", nxdomain, "reject")
    assert lenient.reply is None and lenient.note is not None and "NXDOMAIN" in lenient.note
    strict = judge("s.test", nxdomain, "strict")
    assert strict.reply is not None and strict.reply.startswith("550 5.1.8 ")


def test_spf13_off_judges_nothing() -> None:
    for answer in [NULL_MX, mx(outcome=Outcome.NXDOMAIN), *TEMPORARY]:
        verdict = judge("s.test", answer, "off")
        assert verdict.reply is None and verdict.note is None


def test_spf13_accepted_anyway_notes_once_a_minute_per_domain_refusals_every_time(
        caplog: pytest.LogCaptureFixture) -> None:
    """The benchmark's sender (REFUSED) must not cost a log line per message: one note per domain
    per NOTE_INTERVAL; every refusal is logged with the client and the sender. DNS here is the
    zone-file backend in process (the same ``Transport`` the ``--zone`` option uses)."""
    import asyncio

    from mxroute.address import parse_path
    from mxroute.dns.resolver import Resolver
    from mxroute.dns.zonefile import ZoneData, ZoneTransport
    from mxroute.relay.intake.sendercheck import NOTE_INTERVAL, SenderCheck

    data = ZoneData()
    data.load_text(
        "$ORIGIN test.\n$TTL 300\n@ IN SOA ns.test. h.test. 1 3600 600 86400 60\nnull IN MX 0 .\n"
    )
    data.fail("sick.test", "SERVFAIL")
    now = [0.0]
    check = SenderCheck(Resolver(ZoneTransport(data), clock=lambda: now[0]), clock=lambda: now[0])

    async def mail(sender: str) -> str | None:
        address = parse_path(sender)
        assert address is not None
        return await check.refusal(address, "reject", "192.0.2.7")

    caplog.set_level("INFO", logger="mxroute.relay.intake")
    for _ in range(3):
        assert asyncio.run(mail("<a@sick.test>")) is None
        now[0] += 10
    assert len([r for r in caplog.records if "sender check: sick.test" in r.getMessage()]) == 1
    now[0] += NOTE_INTERVAL
    assert asyncio.run(mail("<a@sick.test>")) is None
    assert len([r for r in caplog.records if "sender check: sick.test" in r.getMessage()]) == 2
    for _ in range(2):
        # type: ignore[union-attr]
        assert asyncio.run(mail("<u@null.test>")).startswith("550 5.7.27")
    refusals = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("reject: MAIL from 192.0.2.7")
    ]
    assert len(refusals) == 2 and all("from=<u@null.test>" in line for line in refusals)
    assert asyncio.run(mail("<a@[192.0.2.1]>")) is None  # a literal is not looked up


def test_issue16_refusals_name_the_setting_that_would_change_them() -> None:
    """Issue 16 §2: explain shows which null_mx_sender value would let the sender through."""
    assert judge("s.test", NULL_MX, "reject").setting == "null_mx_sender = off"
    assert judge("s.test", mx(outcome=Outcome.NXDOMAIN), "strict").setting == \
        "null_mx_sender = reject"
    assert judge("s.test", None, "strict").setting == "null_mx_sender = reject"
    assert judge("s.test", mx("10 mx.s.test."), "strict").setting is None
