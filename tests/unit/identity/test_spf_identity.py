"""SPF-10, SPF-12: the sending-identity self-check (warning codes, fixes, text), `mxroute spf`."""

from __future__ import annotations

import asyncio
import json

import pytest

from mxroute.cli.identity import render_identity, render_spf
from mxroute.cli.spf import spf_command
from mxroute.dns.resolver import Resolver
from mxroute.dns.zonefile import ZoneData, ZoneTransport
from mxroute.errors import EX_OK, EX_TEMPFAIL, EX_USAGE
from mxroute.identity.findings import IdentityReport, check_identity
from mxroute.identity.spf.evaluate import check_host

IP = "198.51.100.7"
GOOD = """$ORIGIN .
$TTL 300
example.com.               IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
relay.example.com.         IN TXT "v=spf1 a -all"
relay.example.com.         IN A 198.51.100.7
7.100.51.198.in-addr.arpa. IN PTR relay.example.com.
"""


def resolver(text: str = GOOD, *, fail: tuple[str, str, str | None] | None = None) -> Resolver:
    data = ZoneData()
    data.load_text(text)
    if fail:
        data.fail(*fail)
    return Resolver(ZoneTransport(data))


def report(text: str = GOOD, sender: str | None = "user@example.com",
           helo: str = "relay.example.com",
           fail: tuple[str, str, str | None] | None = None) -> IdentityReport:
    (first,) = asyncio.run(
        check_identity(resolver(text, fail=fail), sender=sender, egress_ips=[IP], helo=helo)
    )
    return first


def test_spf12_clean_identity_has_no_warnings() -> None:
    result = report()
    assert result.ok and result.spf.result == "pass"
    assert result.ptr.forward_confirmed and result.ptr.helo_matches
    assert result.helo_spf is not None and result.helo_spf.result == "pass"
    assert "ok:" in render_identity([result])


MATRIX = [
    # (zone edit: old -> new, sender, helo, expected codes, expected fix fragment)
    (("ip4:198.51.100.0/24 -all", "ip4:192.0.2.0/24 -all"), "user@example.com", "relay.example.com",
     ["spf-fail"], "add ip4:198.51.100.7 to example.com's SPF record"),
    (("ip4:198.51.100.0/24 -all", "ip4:192.0.2.0/24 ~all"), "user@example.com", "relay.example.com",
     ["spf-softfail"], "add ip4:198.51.100.7 to example.com's SPF record"),
    (("ip4:198.51.100.0/24 -all", "ip4:192.0.2.0/24"), "user@example.com", "relay.example.com",
     ["spf-neutral"], "add ip4:198.51.100.7"),
    (('example.com.               IN TXT "v=spf1 ip4:198.51.100.0/24 -all"', ""),
     "user@example.com", "relay.example.com",
     ["spf-none"], 'publish TXT "v=spf1 ip4:198.51.100.7 ~all" at example.com'),
    (("ip4:198.51.100.0/24 -all", "ip4:198.51.100.0/33"), "user@example.com", "relay.example.com",
     ["spf-permerror"], "fix example.com's SPF record"),
    (("7.100.51.198.in-addr.arpa. IN PTR relay.example.com.", ""),
     "user@example.com", "relay.example.com",
     ["ptr-missing"], "set PTR of 198.51.100.7 to relay.example.com"),
    (("IN PTR relay.example.com.", "IN PTR mail.example.net."),
     "user@example.com", "relay.example.com",
     ["ptr-unconfirmed"], "set PTR of 198.51.100.7 to relay.example.com"),
    (("relay.example.com.         IN A 198.51.100.7",
      ("relay.example.com.         IN A 198.51.100.8\n"
       "other.example.com. IN A 198.51.100.7\n"
       "7.100.51.198.in-addr.arpa. IN PTR other.example.com.")),
     "user@example.com", "relay.example.com",
     ["helo-spf-fail", "helo-no-address", "helo-ptr-mismatch"],
     "set PTR of 198.51.100.7 to relay.example.com"),
    (("relay.example.com.         IN TXT \"v=spf1 a -all\"", ""),
     "user@example.com", "relay.example.com",
     ["helo-spf-none"], 'publish TXT "v=spf1 ip4:198.51.100.7 ~all" at relay.example.com'),
]


@pytest.mark.parametrize(
    ("edit", "sender", "helo", "codes", "fix"), MATRIX, ids=[",".join(m[3]) for m in MATRIX]
)
def test_spf12_each_misconfiguration_has_its_warning_code(
    edit: tuple[str, str], sender: str, helo: str, codes: list[str], fix: str
) -> None:
    text = GOOD.replace(*edit)
    assert text != GOOD
    result = report(text, sender, helo)
    assert result.codes == codes
    assert any(fix in finding.fix for finding in result.findings), [f.fix for f in result.findings]
    rendered = render_identity([result])
    for code in codes:
        assert f"warning {code}:" in rendered
    assert "fix: " in rendered


def test_spf12_temperror_codes() -> None:
    result = report(fail=("example.com", "SERVFAIL", "TXT"))
    assert result.codes == ["spf-temperror"]
    result = report(fail=("7.100.51.198.in-addr.arpa", "TIMEOUT", None))
    assert result.codes == ["ptr-temperror"]


def test_spf10_null_sender_uses_helo_identity() -> None:
    """§2.4: with MAIL FROM <>, the HELO identity is the one receivers check."""
    result = report(sender=None)
    assert result.sender is None and result.spf.domain == "relay.example.com"
    assert result.spf.sender == "postmaster@relay.example.com" and result.helo_spf is None
    bad = report(GOOD.replace('"v=spf1 a -all"', '"v=spf1 -all"'), sender="")
    assert bad.codes == ["helo-spf-fail"]


def test_identity_json_carries_contract_objects() -> None:
    body = json.loads(json.dumps(report().to_json()))
    assert {"result", "sender", "ip", "trace"} <= set(body["spf"])
    assert {"ip", "names", "forward_confirmed", "helo_matches"} <= set(body["ptr"])
    assert body["warnings"] == [] and body["egress_ip"] == IP


def test_render_spf_shows_result_reason_and_every_lookup() -> None:
    outcome = asyncio.run(
        check_host(resolver(), IP, "example.com", "user@example.com", helo="relay.example.com")
    )
    text = render_spf(outcome)
    assert text.splitlines()[0].split() == ["result", "pass"]
    assert "TXT example.com -> " in text and "ip4:198.51.100.0/24" in text


# --- mxroute spf ---------------------------------------------------------------------------


def run_cmd(
    ip: str, sender: str, helo: str | None = None, as_json: bool = False, **kw: object
) -> int:
    return asyncio.run(spf_command(resolver(**kw), ip, sender, helo, as_json))  # type: ignore[arg-type]


def test_spf_command_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cmd(IP, "user@example.com") == EX_OK
    out = capsys.readouterr().out
    assert "result" in out and "pass" in out and "trace:" in out
    assert run_cmd("192.0.2.1", "user@example.com", as_json=True) == EX_OK
    body = json.loads(capsys.readouterr().out)
    assert (body["result"], body["ip"], body["sender"]) == ("fail", "192.0.2.1", "user@example.com")
    assert body["trace"] and body["explanation"]


def test_spf_command_null_sender_and_bare_domain(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cmd(IP, "<>", helo="relay.example.com", as_json=True) == EX_OK
    assert json.loads(capsys.readouterr().out)["sender"] == "postmaster@relay.example.com"
    assert run_cmd(IP, "example.com", as_json=True) == EX_OK
    assert json.loads(capsys.readouterr().out)["sender"] == "postmaster@example.com"


def test_spf_command_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """Contract: 64 bad arguments; 75 temporary failure (temperror); 0 any other verdict."""
    assert run_cmd("1.2.3", "user@example.com") == EX_USAGE
    assert run_cmd(IP, "user@exam\x01ple.com") == EX_USAGE  # no SMTP command carries it
    assert run_cmd(IP, "<>") == EX_USAGE  # a null sender needs --helo
    assert run_cmd(IP, "user@example.com", fail=("example.com", "SERVFAIL", None)) == EX_TEMPFAIL
    assert run_cmd(IP, "user@nx.example.org") == EX_OK  # none is a verdict
    assert "not an IP address" in capsys.readouterr().err


@pytest.mark.parametrize(("sender", "helo", "why"), [
    ("x@A" + "1" * 63 + ".example.com", None, "label longer than 63 octets"),
    ("x@A...example.com", None, "empty label"),
    ("foo@[1.2.3.5]", "OEMCOMPUTER", "a domain literal"),
    ("<>", "[1.2.3.5]", "a domain literal"),
    ("", "A2345678", "not a multi-label domain name"),
    ("user@exa mple.com", None, None),  # looked up, as escaped octets: NXDOMAIN is none (§4.3)
])
def test_spf_command_malformed_domain_is_none_not_a_usage_error(
    sender: str, helo: str | None, why: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16 part 3, SPF-1: RFC 7208 §4.3 makes a malformed domain check_host()'s ``none``;
    the CLI evaluates it (exit 0) instead of refusing the argument (64)."""
    assert run_cmd(IP, sender, helo=helo, as_json=True) == EX_OK
    body = json.loads(capsys.readouterr().out)
    assert body["result"] == "none"
    if why is not None:
        assert why in body["reason"] and "§4.3" in body["reason"]
