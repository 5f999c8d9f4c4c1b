"""The intake's RCPT address checks as a pure function, shared with ``explain`` (issue 16 §2;
SEC-3, MX-13, DSN-13)."""

from __future__ import annotations

import pytest

from mxroute.address import parse_address
from mxroute.relay.intake.params import Reply
from mxroute.relay.intake.recipient import RCPT_OK, Verdict, accept_recipient, rcpt_verdict


def test_mx13_literal_refused_550_5_1_2_naming_the_setting_unless_allowed() -> None:
    """MX-13, issue 16 §2: a literal is 550 5.1.2 with allow_address_literals as the way out."""
    with pytest.raises(Reply) as refused:
        accept_recipient("<u@[192.0.2.5]>", allow_address_literals=False, smtp_utf8=False)
    assert refused.value.text == "550 5.1.2 Address literals are not accepted here"
    assert refused.value.setting == "allow_address_literals = true"
    address = accept_recipient("<u@[192.0.2.5]>", allow_address_literals=True, smtp_utf8=False)
    assert address.literal is not None


@pytest.mark.parametrize("path", ["<u%x@demo.example>", "<ext.test!u@demo.example>",
                                  "<@relay.test:u@demo.example>", '<"u@x"@demo.example>'])
def test_sec3_percent_bang_and_source_routes_are_not_routing(path: str) -> None:
    """SEC-3: % and ! are local-part characters, a source route is dropped: the address goes to
    its own domain, and an allowed client gets 250."""
    address = accept_recipient(path, allow_address_literals=False, smtp_utf8=False)
    assert address.domain == "demo.example"


@pytest.mark.parametrize(("path", "reply"), [
    ("<>", "501 5.1.3 Null recipient not allowed"),
    ("<u@192.0.2.1>", "501 5.1.3"),  # DSN-13: a numeric last label is no host name
    ("<ü@demo.example>", "553 5.6.7 Non-ASCII address needs SMTPUTF8"),
])
def test_refusals_without_a_setting(path: str, reply: str) -> None:
    with pytest.raises(Reply) as refused:
        accept_recipient(path, allow_address_literals=True, smtp_utf8=False)
    assert refused.value.text.startswith(reply) and refused.value.setting is None


def test_rcpt_verdict_as_explain_reports_it() -> None:
    """Issue 16 §2: the verdict as data: code, enhanced status, text, the setting."""
    refused = rcpt_verdict(parse_address("user@[192.0.2.5]"), allow_address_literals=False)
    assert (refused.accepted, refused.code, refused.status, refused.text, refused.setting) == (
        False, 550, "5.1.2", "Address literals are not accepted here",
        "allow_address_literals = true")
    assert rcpt_verdict(parse_address("u%x@demo.example"),
                        allow_address_literals=False) == Verdict(RCPT_OK)
    # SMTPUTF8 is assumed declared: the address is judged, not the client
    assert rcpt_verdict(parse_address("ü@demo.example"), allow_address_literals=False).accepted
    numeric = rcpt_verdict(parse_address("u@192.0.2.1"), allow_address_literals=True)
    assert (numeric.code, numeric.status) == (501, "5.1.3")


def test_verdict_without_enhanced_status() -> None:
    verdict = Verdict("550 no such thing")
    assert (verdict.status, verdict.text, verdict.to_json()["accepted"]) == (
        None, "no such thing", False)
