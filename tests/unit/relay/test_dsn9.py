"""DSN-9 in the queue: a `relayed` DSN when NOTIFY=SUCCESS and the next hop took the mail without
DSN; none when the hop advertised DSN (it got NOTIFY/ORCPT and is responsible, RFC 3461 §5.2).
Also the NOTIFY=NEVER / FAILURE / DELAY cases that decide bounces and delay warnings (DSN-8/10).
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from mxroute.relay.dsn import build_dsn
from mxroute.relay.envelope import Disposition, Envelope, Recipient, RecipientResult, Times
from mxroute.relay.spool.format import RecipientState
from mxroute.routing.plan import Plan
from mxroute.routing.shaping import Shape
from mxroute.tls.policy import TlsPolicy
from tests.support.queuekit import DEFER, REJECT, FakeCourier, Harness


class HopCourier(FakeCourier):
    """FakeCourier whose next hop advertises DSN (or not) for delivered recipients."""

    def __init__(self, dsn: bool) -> None:
        super().__init__()
        self.dsn = dsn

    async def deliver(self, plan: Plan, envelope: Envelope, recipients: list[Recipient],
                      message_bytes: bytes, *, tls: TlsPolicy, queue_id: str,
                      times: Times | None = None,
                      shape: Shape | None = None) -> list[RecipientResult]:
        results = await super().deliver(plan, envelope, recipients, message_bytes, tls=tls,
                                        queue_id=queue_id)
        for result in results:
            if result.disposition is Disposition.DELIVERED:
                result.next_hop_dsn = self.dsn
        return results


def harness(tmp_path: Path, *, dsn: bool, **overrides: Any) -> Harness:
    h = Harness(tmp_path, **overrides)
    h.courier = HopCourier(dsn)
    h.qm = h.manager()
    return h


@pytest.fixture
def plain_hop(tmp_path: Path) -> Any:
    h = harness(tmp_path, dsn=False)
    yield h
    h.spool.close()


@pytest.fixture
def dsn_hop(tmp_path: Path) -> Any:
    h = harness(tmp_path, dsn=True)
    yield h
    h.spool.close()


def test_dsn9_success_to_a_hop_without_dsn_gives_one_relayed_dsn(plain_hop: Harness) -> None:
    h = plain_hop
    qid = h.submit("s@y.test", RecipientState("a@x.test", ("SUCCESS", "FAILURE")),
                   RecipientState("b@x.test", ("SUCCESS",)), RecipientState("c@x.test"))
    h.run()
    [dsn] = h.dsns
    assert dsn["action"] == "relayed"
    # c did not ask (default FAILURE)
    assert [r.recipient for r in dsn["results"]] == ["a@x.test", "b@x.test"]
    assert [r.address for r in dsn["recipients"]] == ["a@x.test", "b@x.test"]
    [(meta, _)] = [(m, b) for m, b in h.spool.stored if m.bounce_of]
    assert meta.sender == "" and [r.address for r in meta.recipients] == ["s@y.test"]
    assert meta.bounce_of == {"queue_id": qid, "batch": 0, "recipients": [], "action": "relayed"}
    assert not h.spool.exists(qid)  # all delivered: the original is done


def test_dsn9_success_to_a_dsn_capable_hop_gives_no_local_dsn(dsn_hop: Harness) -> None:
    dsn_hop.submit("s@y.test", RecipientState("a@x.test", ("SUCCESS", "FAILURE")))
    dsn_hop.run()
    assert dsn_hop.dsns == [] and dsn_hop.spool.ids() == []


def test_dsn9_no_relayed_dsn_for_a_null_sender_or_without_success(plain_hop: Harness) -> None:
    plain_hop.submit("", RecipientState("a@x.test", ("SUCCESS",)))  # DSN-3: nothing about a bounce
    plain_hop.submit("s@y.test", RecipientState("b@x.test", ("FAILURE", "DELAY")),
                     RecipientState("c@x.test", ("NEVER",)))
    plain_hop.run()
    assert plain_hop.dsns == [] and plain_hop.spool.ids() == []


def test_dsn9_failure_and_relayed_in_one_attempt_are_two_reports(plain_hop: Harness) -> None:
    h = plain_hop
    h.courier.will("bad@x.test", REJECT)
    qid = h.submit("s@y.test", RecipientState("ok@x.test", ("SUCCESS", "FAILURE")),
                   RecipientState("bad@x.test"))
    h.run()
    assert [(d["action"], [r.recipient for r in d["results"]]) for d in h.dsns] == [
        ("failed", ["bad@x.test"]), ("relayed", ["ok@x.test"])]
    ids = sorted(m.queue_id for m, _ in h.spool.stored if m.bounce_of)
    assert ids == [f"{qid}B0", f"{qid}B1"]


def test_dsn9_relayed_only_once_the_handoff_succeeds(plain_hop: Harness) -> None:
    h = plain_hop
    h.courier.will("a@x.test", DEFER, (Disposition.DELIVERED, "2.0.0", "250 2.0.0 ok"))
    qid = h.submit("s@y.test", RecipientState("a@x.test", ("SUCCESS",)))
    h.run()
    assert h.dsns == []  # deferred: SUCCESS only, so no failure/delay notice either
    h.now = h.spool.load_meta(qid).recipients[0].next_try
    h.run()
    assert [d["action"] for d in h.dsns] == ["relayed"]


def test_dsn8_notify_never_no_bounce_on_failure(plain_hop: Harness) -> None:
    plain_hop.courier.will("a@x.test", REJECT)
    plain_hop.submit("s@y.test", RecipientState("a@x.test", ("NEVER",)))
    plain_hop.run()
    assert plain_hop.dsns == [] and plain_hop.spool.ids() == []


@pytest.mark.parametrize(("notify", "warned"), [
    ((), True), (("DELAY",), True), (("FAILURE",), False), (("SUCCESS", "FAILURE"), False),
    (("NEVER",), False)])
def test_dsn10_notify_delay_governs_delay_warnings(tmp_path: Path, notify: tuple[str, ...],
                                                   warned: bool) -> None:
    h = harness(tmp_path, dsn=False, delay_warning_seconds=100)
    h.courier.will("a@x.test", DEFER)
    h.submit("s@y.test", RecipientState("a@x.test", notify))
    for _ in range(3):
        h.now += 700
        h.run()
    assert [d["action"] for d in h.dsns] == (["delayed"] if warned else [])
    h.spool.close()


def test_dsn9_relayed_report_fields() -> None:
    """RFC 3464 §2.3.3: Action relayed, Status 2.0.0, the hop that took it, and the original's
    headers."""
    rcpt = Recipient("a@x.test", ("SUCCESS",), orcpt="rfc822;A@x.test")
    env = Envelope("s@y.test", [rcpt], envid="E42")
    result = RecipientResult("a@x.test", Disposition.DELIVERED, "2.0.0",
                             "250 2.0.0 Ok: queued as S1",
                             "mx1.x.test[192.0.2.1]:25", remote_reply=True)
    raw = build_dsn(reporting_mta="relay.test", envelope=env,
                    message=b"Subject: hi\r\n\r\nbody\r\n", results=[result],
                    action="relayed", arrival=0.0, recipients=[rcpt])
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg["Subject"] == "Successful Mail Delivery Report" and msg["To"] == "<s@y.test>"
    text, report, original = msg.get_payload()
    assert "relayed to a destination that does not send" in text.get_payload()
    per_message, per_rcpt = report.get_payload()
    assert per_message["Original-Envelope-Id"] == "E42"
    assert dict(per_rcpt.items()) | {"Last-Attempt-Date": "-"} == {
        "Original-Recipient": "rfc822;A@x.test", "Final-Recipient": "rfc822; a@x.test",
        "Action": "relayed", "Status": "2.0.0", "Remote-MTA": "dns; mx1.x.test",
        "Diagnostic-Code": "smtp; 250 2.0.0 Ok: queued as S1",
        "Last-Attempt-Date": "-"}
    assert original.get_content_type() == "text/rfc822-headers"
    assert original["Content-Description"] == "Message Headers"
