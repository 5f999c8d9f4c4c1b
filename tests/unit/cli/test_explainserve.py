"""What explain says serve would do, from the intake's verdicts and the route (issue 16 §2)."""

from __future__ import annotations

from pathlib import Path

from mxroute.cli.explainserve import IntakeVerdicts, relay_policy
from mxroute.relay.intake.recipient import RCPT_OK, Verdict
from mxroute.routing.plan import Plan
from mxroute.routing.plan import Verdict as Status
from mxroute.settings import Settings

ROUTED = Plan("d.test", Status.DELIVERABLE, "1 address to try", "2.0.0")
LITERAL = Verdict("550 5.1.2 Address literals are not accepted here",
                  "allow_address_literals = true")
NULL_MX = Verdict("550 5.7.27 Sender address has null MX: n.test accepts no mail",
                  "null_mx_sender = off")


def test_an_intake_refusal_decides_before_routing_mail_first() -> None:
    """Issue 16 §2: a refused RCPT is permanent-failure with the reply and the setting; a refused
    MAIL comes first; accepted by both, the route decides."""
    rcpt_only = IntakeVerdicts("u@[192.0.2.5]", LITERAL)
    status, reason, dsn = rcpt_only.status(ROUTED)
    assert (status, dsn) == (Status.PERMANENT, "5.1.2")
    assert reason == ("the intake refuses RCPT TO:<u@[192.0.2.5]>: 550 5.1.2 Address literals "
                      "are not accepted here (allow_address_literals = true would change it)")
    both = IntakeVerdicts("u@[192.0.2.5]", LITERAL, "app@n.test", NULL_MX)
    assert both.status(ROUTED)[2] == "5.7.27" and "MAIL FROM:<app@n.test>" in both.status(
        ROUTED)[1]
    accepted = IntakeVerdicts("u@d.test", Verdict(RCPT_OK), "a@d.test", Verdict("250 2.1.0 Ok"))
    assert accepted.status(ROUTED) == (Status.DELIVERABLE, "1 address to try", "2.0.0")
    later = IntakeVerdicts("u@d.test", Verdict(RCPT_OK), "a@s.test",
                           Verdict("451 4.4.3 Sender address rejected: try again later"))
    assert later.status(ROUTED)[0] is Status.TEMPORARY
    body = both.to_json(ROUTED)
    assert body["route_verdict"]["status"] == "deliverable"
    assert body["mail"]["sender"] == "app@n.test" and body["rcpt"]["setting"] == \
        "allow_address_literals = true"


def test_mx11_helo_and_egress_ips_are_this_relay() -> None:
    """MX-11, issue 16 §2: --helo and --egress-ip replace helo_name and egress_ips as this
    relay's names and addresses; a listen address on smtp_port stays one."""
    settings = Settings(helo_name="relay.test", egress_ips=["192.0.2.1"],
                        listen=["127.0.0.5:25"], spool_dir=Path("/nonexistent"))
    policy = relay_policy(settings, "Other.Test", ["198.51.100.7"])
    assert policy.self_names == frozenset({"other.test"})
    assert policy.self_addresses == frozenset({"198.51.100.7", "127.0.0.5"})
