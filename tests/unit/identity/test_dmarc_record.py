"""The DMARC record parser (RFC 7489 §6.3, §6.4, §6.6.3), the organizational domain (§3.2) and
the From: domain of a message (§3.1, §6.6.1): issue 14 §3."""

from __future__ import annotations

from email.utils import getaddresses

import pytest

from mxroute.identity.dmarc.author import author_domain
from mxroute.identity.dmarc.orgdomain import aligned, org_domain
from mxroute.identity.dmarc.record import RecordError, is_dmarc, parse_record


def test_full_record() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=50; "
                          "rua=mailto:a@example.com,mailto:b@example.net!10m; "
                          "ruf=mailto:f@example.com; fo=1:d; rf=afrf; ri=3600")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf) == (
        "reject", "quarantine", "s", "s")
    assert (record.pct, record.fo, record.rf, record.ri) == (50, ("1", "d"), ("afrf",), 3600)
    assert record.rua == ("mailto:a@example.com", "mailto:b@example.net!10m")
    assert record.ruf == ("mailto:f@example.com",) and record.notes == ()


def test_defaults() -> None:
    record = parse_record("v=DMARC1;p=none")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf, record.pct) == (
        "none", None, "r", "r", 100)
    assert record.effective_policy(subdomain=True) == "none"


def test_sp_applies_to_subdomains_only() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=none")
    assert record.effective_policy(subdomain=False) == "reject"
    assert record.effective_policy(subdomain=True) == "none"


@pytest.mark.parametrize("text", ["v=DMARC1; p=reject", "v = DMARC1 ; p = reject ;",
                                  "V=DMARC1; P=REJECT", "v=DMARC1\t;\tp=Reject"])
def test_whitespace_and_case(text: str) -> None:
    assert parse_record(text).policy == "reject"


@pytest.mark.parametrize("text", ["p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=dmarc1; p=none",
                                  "v=spf1 -all", "", "v=DMARC1x; p=none"])
def test_v_dmarc1_first_and_exact(text: str) -> None:
    """§6.3: v= must be first; DMARC1 is case-sensitive (§6.4 ABNF %x44...)."""
    assert not is_dmarc(text)
    with pytest.raises(RecordError):
        parse_record(text)


def test_unknown_tags_ignored() -> None:
    record = parse_record("v=DMARC1; p=quarantine; np=reject; psd=n; t=y; zz=1")
    assert record.policy == "quarantine" and record.notes == ()


def test_bad_values_fall_back_to_defaults_with_a_note() -> None:
    """§6.3: syntax errors in the remainder are discarded in favour of the defaults."""
    record = parse_record("v=DMARC1; p=reject; adkim=x; aspf=; pct=150; fo=9; ri=soon; junk")
    assert (record.adkim, record.aspf, record.pct, record.fo, record.ri) == (
        "r", "r", 100, ("0",), 86400)
    assert len(record.notes) == 6


@pytest.mark.parametrize("text", ["v=DMARC1", "v=DMARC1; p=block", "v=DMARC1; p=reject; sp=x",
                                  "v=DMARC1; p=; rua=not-a-uri"])
def test_bad_policy_without_rua_is_no_record(text: str) -> None:
    """§6.6.3 step 5: no valid p= (or a bad sp=) and no valid rua=: no DMARC."""
    with pytest.raises(RecordError, match="rua"):
        parse_record(text)


def test_bad_policy_with_rua_is_p_none() -> None:
    """§6.6.3 step 5.1: with a valid rua=, act as if p=none was published."""
    record = parse_record("v=DMARC1; p=block; sp=x; rua=mailto:r@example.com")
    assert (record.policy, record.subdomain_policy) == ("none", None)
    assert "treated as p=none" in record.notes[-1]


def test_duplicate_tag_makes_the_record_invalid() -> None:
    """§6.3 follows RFC 6376 §3.2: a tag twice invalidates the whole tag-list."""
    with pytest.raises(RecordError, match="twice"):
        parse_record("v=DMARC1; p=none; p=reject")
    with pytest.raises(RecordError, match="twice"):
        parse_record("v=DMARC1; v=DMARC1; p=none")


def test_org_domain_by_the_public_suffix_list() -> None:
    assert org_domain("mail.example.com") == "example.com"
    assert org_domain("a.b.example.co.uk") == "example.co.uk"
    assert org_domain("Mail.Example.COM.") == "example.com"
    assert org_domain("co.uk") == "co.uk"  # a public suffix is its own
    assert org_domain("x.y.example.test") == "example.test"  # unlisted: the default rule *
    assert org_domain("someone.github.io") == "someone.github.io"  # the private section


def test_alignment_modes() -> None:
    assert aligned("mail.example.com", "example.com", strict=False)
    assert not aligned("mail.example.com", "example.com", strict=True)
    assert aligned("EXAMPLE.com", "example.com.", strict=True)
    assert not aligned("example.net", "example.com", strict=False)
    assert not aligned("a.example.co.uk", "b.other.co.uk", strict=False)


@pytest.mark.parametrize(("message", "domain"), [
    (b"From: a@Example.COM\r\nTo: b@x\r\n\r\nFrom: c@evil.test\r\n", "example.com"),
    (b"To: x\r\nfrom :\r\n \"Doe, John\" (comment) <j@mail.example.com>\r\n\r\n",
     "mail.example.com"),
    (b'From: "x@evil.test" <a@good.test>\r\n\r\n', "good.test"),
    (b"From: =?utf-8?q?x=40evil.test?= <a@good.test>\r\n\r\n", "good.test"),
    (b"From: a@good.test, b@GOOD.test\r\n\r\n", "good.test"),
    (b"From: a@b\xc3\xa9.test\r\n\r\n", "xn--b-bga.test"),
    (b"From: a@good.test\n\nbody", "good.test"),
])
def test_author_domain(message: bytes, domain: str) -> None:
    assert author_domain(message) == domain


@pytest.mark.parametrize("message", [
    b"Subject: no from\r\n\r\n",
    b"From: a@one.test\r\nFrom: b@two.test\r\n\r\n",
    b"From: a@one.test, b@two.test\r\n\r\n",
    b"From: nobody\r\n\r\n",
    b"From: a@[192.0.2.1]\r\n\r\n",
    b"From: a@bad_domain!.test\r\n\r\n",
    b"\r\nFrom: a@body.test\r\n",
    b"Resent-From: a@r.test\r\n\r\n",
])
def test_no_single_author_domain(message: bytes) -> None:
    assert author_domain(message) is None


@pytest.mark.parametrize("value", [
    "a@b.test", "<a@b.test>", "Some One <a@b.test>", '"Some One" <a@b.test>',
    '"x@evil.test"   <a@good.test>', "=?utf-8?q?x=40evil.test?= <a@good.test>",
    "a@b.test (comment)", '"Doe, John" <j@b.test>', "x <a@b.test>, y <c@d.test>",
    "a@b.test <c@d.test>", "undisclosed-recipients:;", "Name\t<a@B.Test>",
])
def test_fast_path_agrees_with_the_full_parser(value: str) -> None:
    """The common From: shapes are read without email.utils; the answer is the same."""
    domains = {address.rpartition("@")[2].lower() for _, address in getaddresses([value])
               if "@" in address}
    expected = domains.pop() if len(domains) == 1 else None
    assert author_domain(f"From: {value}\r\n\r\n".encode()) == expected
