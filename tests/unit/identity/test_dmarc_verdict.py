"""The pure DMARC verdict (issue 14 §3; RFC 7489 §3.1 alignment, §6.6.3): facts in, verdict,
reason, bulk-sender readiness and fixes out."""

from __future__ import annotations

from mxroute.identity.dmarc.record import parse_record
from mxroute.identity.dmarc.verdict import (
    FOUND,
    NONE,
    TEMPORARY,
    Discovery,
    Facts,
    KeyStatus,
    SpfCheck,
    judge,
)

IP = "192.0.2.10"
ADD_IP = f"add ip4:{IP} to example.com's SPF record"


def found(text: str, domain: str = "example.com", at: str = "example.com") -> Discovery:
    return Discovery(domain, "example.com", FOUND, parse_record(text), f"_dmarc.{at}", text)


def key(status: str = "ok", domain: str = "example.com", testing: bool = False) -> KeyStatus:
    return KeyStatus(domain, "s2026", f"s2026._domainkey.{domain}", status, "rsa", testing)


SPF_PASS = (SpfCheck(IP, "pass"),)
SPF_FAIL = (SpfCheck(IP, "fail", ADD_IP),)


def test_pass_by_dkim_only_not_bulk_ready() -> None:
    verdict = judge(Facts(found("v=DMARC1; p=reject"), "example.com", SPF_FAIL, (key(),)))
    assert (verdict.verdict, verdict.dkim_aligned, verdict.spf_aligned) == ("pass", True, False)
    assert verdict.policy == "reject" and verdict.reason.startswith("DKIM aligned")
    assert not verdict.bulk_sender_ready and verdict.fixes == (ADD_IP,)


def test_pass_by_both_is_bulk_ready_even_with_p_none() -> None:
    verdict = judge(Facts(found("v=DMARC1; p=none"), "example.com", SPF_PASS, (key(),)))
    assert verdict.verdict == "pass" and verdict.bulk_sender_ready and verdict.fixes == ()
    assert verdict.to_json()["bulk_sender_ready"] is True


def test_spf_must_pass_for_every_egress_ip() -> None:
    spf = (SpfCheck(IP, "pass"), SpfCheck("192.0.2.11", "softfail", "add ip4:192.0.2.11 ..."))
    verdict = judge(Facts(found("v=DMARC1; p=reject"), "example.com", spf, ()))
    assert (verdict.verdict, verdict.spf_aligned) == ("fail", False)
    assert "softfail for 192.0.2.11" in verdict.reason and "add ip4:192.0.2.11 ..." in verdict.fixes


def test_fail_names_every_fix() -> None:
    verdict = judge(Facts(found("v=DMARC1; p=quarantine"), "example.com", SPF_FAIL,
                          (key("missing"),)))
    assert verdict.verdict == "fail" and verdict.reason.endswith("receivers apply p=quarantine")
    assert verdict.fixes == ("publish the key for s2026._domainkey.example.com", ADD_IP)


def test_pct_is_said() -> None:
    verdict = judge(Facts(found("v=DMARC1; p=reject; pct=25"), "example.com", SPF_FAIL, ()))
    assert verdict.reason.endswith("receivers apply p=reject to 25% of it (pct=25)")


def test_key_fixes_per_status() -> None:
    keys = (key("mismatch"), key("revoked"), key("invalid"), key("ok", testing=True))
    verdict = judge(Facts(found("v=DMARC1; p=reject"), "example.com", SPF_FAIL, keys))
    assert verdict.verdict == "fail" and not verdict.dkim_aligned  # t=y: as unsigned
    assert [fix.split(" ")[0] for fix in verdict.fixes] == ["publish", "publish", "fix",
                                                            "remove", "add"]


def test_relaxed_and_strict_spf_alignment() -> None:
    sub = found("v=DMARC1; p=reject", domain="news.example.com")
    assert judge(Facts(sub, "bounce.example.com", SPF_PASS, ())).spf_aligned
    strict = found("v=DMARC1; p=reject; aspf=s", domain="news.example.com")
    verdict = judge(Facts(strict, "bounce.example.com", SPF_PASS, ()))
    assert (verdict.verdict, verdict.spf_aligned) == ("fail", False)
    assert ("send with an envelope sender (MAIL FROM) at news.example.com itself (aspf=s)"
            in verdict.fixes)
    other = judge(Facts(found("v=DMARC1; p=reject"), "example.net", SPF_PASS, ()))
    assert not other.spf_aligned and "aspf=r" in other.reason


def test_strict_dkim_alignment_with_a_subdomain_from() -> None:
    sub = found("v=DMARC1; p=reject; adkim=s", domain="mail.example.com")
    verdict = judge(Facts(sub, "mail.example.com", (), (key(),)))
    assert (verdict.verdict, verdict.dkim_aligned) == ("fail", False)
    assert "adkim=s" in verdict.reason
    assert any(fix.startswith("add a key for mail.example.com") for fix in verdict.fixes)
    relaxed = found("v=DMARC1; p=reject", domain="mail.example.com")
    assert judge(Facts(relaxed, "mail.example.com", (), (key(),))).dkim_aligned


def test_organizational_record_applies_sp_to_a_subdomain() -> None:
    org = found("v=DMARC1; p=reject; sp=none", domain="mail.example.com")
    assert judge(Facts(org, "mail.example.com", SPF_PASS, ())).policy == "none"
    own = found("v=DMARC1; p=reject; sp=none", domain="mail.example.com",
                at="mail.example.com")
    assert judge(Facts(own, "mail.example.com", SPF_PASS, ())).policy == "reject"


def test_no_record_is_none_with_the_record_to_publish() -> None:
    nothing = Discovery("mail.example.com", "example.com", NONE,
                        reason="no DMARC record at _dmarc.mail.example.com or _dmarc.example.com")
    verdict = judge(Facts(nothing, "mail.example.com", SPF_PASS, (key(),)))
    assert (verdict.verdict, verdict.policy, verdict.record) == ("none", None, None)
    assert verdict.spf_aligned and verdict.dkim_aligned and not verdict.bulk_sender_ready
    assert verdict.fixes == ('publish TXT "v=DMARC1; p=none" at _dmarc.example.com',)


def test_several_records_and_unusable_record() -> None:
    several = Discovery("example.com", "example.com", NONE, name="_dmarc.example.com",
                        reason="2 DMARC records at _dmarc.example.com")
    assert judge(Facts(several, "example.com", SPF_PASS, ())).fixes[0] == (
        "keep a single DMARC record at _dmarc.example.com")
    bad = Discovery("example.com", "example.com", NONE, name="_dmarc.example.com",
                    text="v=DMARC1; p=block", reason="the DMARC record at _dmarc.example.com is "
                    "not usable: p=block is not none|quarantine|reject, and no valid rua=")
    verdict = judge(Facts(bad, "example.com", SPF_PASS, ()))
    assert verdict.record == "v=DMARC1; p=block" and verdict.verdict == "none"
    assert verdict.fixes[0].startswith("fix the DMARC record at _dmarc.example.com: p=block")


def test_temporary_failures() -> None:
    trouble = Discovery("example.com", "example.com", TEMPORARY, name="_dmarc.example.com",
                        reason="DNS trouble: TXT _dmarc.example.com SERVFAIL")
    verdict = judge(Facts(trouble, "example.com", SPF_PASS, (key(),)))
    assert verdict.verdict == "temporary-failure" and "SERVFAIL" in verdict.reason
    # neither aligns, and one of them could not be told: not a fail
    spf_trouble = (SpfCheck(IP, "temperror", "check ..."),)
    assert judge(Facts(found("v=DMARC1; p=reject"), "example.com", spf_trouble,
                       (key("missing"),))).verdict == "temporary-failure"
    # one aligns: trouble elsewhere does not matter
    assert judge(Facts(found("v=DMARC1; p=reject"), "example.com", SPF_PASS,
                       (key("temporary-failure"),))).verdict == "pass"


def test_unsigned_and_unjudged() -> None:
    verdict = judge(Facts(found("v=DMARC1; p=reject"), "example.com", (), ()))
    assert verdict.verdict == "fail"
    assert verdict.fixes[0].startswith("sign for example.com: mxroute dkim keygen example.com")
    assert verdict.fixes[1].startswith("set egress_ips")
