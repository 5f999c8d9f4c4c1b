"""Next-hop rules (issue 16 §1): the ``routes`` setting's syntax and which rule wins.

Pure: ``mxroute.address.parse_next_hop``, ``mxroute.settingsrules.RouteRule`` and
``mxroute.routing.rules.choose``; delivery through a rule is tested end to end in tests/e2e.
"""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from mxroute.address import parse_next_hop
from mxroute.routing.rules import choose, domain_matches, sender_dependent, sender_matches
from mxroute.settings import Settings
from mxroute.settingsrules import RouteRule


@pytest.mark.parametrize(
    ("text", "host", "port", "mx", "implicit", "shown"),
    [
        ("[relay.example.com]:587", "relay.example.com", 587, False, False,
         "[relay.example.com]:587"),
        ("[relay.example.com]", "relay.example.com", 25, False, False, "[relay.example.com]:25"),
        ("relay.example.com", "relay.example.com", 25, True, False, "relay.example.com:25"),
        ("Relay.Example.COM:2525", "relay.example.com", 2525, True, False,
         "relay.example.com:2525"),
        ("smtps://smtp.example.net", "smtp.example.net", 465, False, True,
         "smtps://smtp.example.net:465"),
        ("smtps://[127.0.0.1]:4650", "127.0.0.1", 4650, False, True, "smtps://127.0.0.1:4650"),
        ("127.0.0.1:2525", "127.0.0.1", 2525, False, False, "[127.0.0.1]:2525"),
        ("[::1]:2525", "::1", 2525, False, False, "[::1]:2525"),
        ("[IPv6:2001:db8::1]", "2001:db8::1", 25, False, False, "[2001:db8::1]:25"),
        ("bücher.example", "xn--bcher-kva.example", 25, True, False,
         "xn--bcher-kva.example:25"),
    ],
)
def test_next_hop_forms(
    text: str, host: str, port: int, mx: bool, implicit: bool, shown: str
) -> None:
    """Postfix's brackets: ``[host]`` is dialled directly, ``host`` is looked up in MX; an IP is
    never looked up in MX; ``smtps://`` is implicit TLS on 465 (RFC 8314 §3.3)."""
    hop = parse_next_hop(text)
    assert (hop.host, hop.port, hop.mx, hop.implicit_tls) == (host, port, mx, implicit)
    assert str(hop) == shown
    assert parse_next_hop(str(hop)) == hop  # what explain shows reads back the same


def test_next_hop_literal_is_an_ip() -> None:
    assert parse_next_hop("[::1]:25").literal == ipaddress.ip_address("::1")
    assert parse_next_hop("relay.example.com").literal is None


@pytest.mark.parametrize(
    "text",
    ["http://relay.example.com", "smtps://relay.example.com/x", "relay.example.com:0",
     "relay.example.com:99999", "relay.example.com:smtp", "[a..b]", "", "[]:25",
     "relay.example.com."],
)
def test_bad_next_hops_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="next hop"):
        parse_next_hop(text)


def _rules(*entries: dict[str, object]) -> list[RouteRule]:
    return Settings(routes=list(entries)).routes


def test_first_matching_rule_wins() -> None:
    rules = _rules(
        {"match": "partner.example", "next_hop": "[gw.partner.example]"},
        {"match": ".corp.example", "next_hop": "[hub.corp.example]:2525"},
        {"match": "*", "next_hop": "relay.example.net"},
    )
    assert choose(rules, "partner.example", "a@b.example").number == 1  # type: ignore[union-attr]
    assert choose(rules, "x.corp.example", "a@b.example").number == 2  # type: ignore[union-attr]
    # ".corp.example" is its subdomains only, as in tls_policy_domains
    assert choose(rules, "corp.example", "a@b.example").number == 3  # type: ignore[union-attr]
    assert choose(rules, "[192.0.2.1]", "").number == 3  # type: ignore[union-attr]
    assert choose(rules[:2], "gmail.com", "a@b.example") is None


def test_sender_dependent_rules() -> None:
    """Postfix's sender_dependent_relayhost_maps: the address, then its @domain, and ``<>``."""
    rules = _rules(
        {"match": "*", "next_hop": "[a.example]", "sender": "Alerts@App.Example"},
        {"match": "*", "next_hop": "[b.example]", "sender": "@app.example"},
        {"match": "*", "next_hop": "[c.example]", "sender": "<>"},
        {"match": "*", "next_hop": "[d.example]"},
    )
    assert sender_dependent(rules) and not sender_dependent(rules[3:])
    number = {s: choose(rules, "gmail.com", s).number for s in  # type: ignore[union-attr]
              ("alerts@app.example", "ALERTS@APP.EXAMPLE", "other@app.example", "", "x@y.example")}
    assert number == {"alerts@app.example": 1, "ALERTS@APP.EXAMPLE": 1, "other@app.example": 2,
                      "": 3, "x@y.example": 4}


def test_match_helpers() -> None:
    assert domain_matches("*", "[192.0.2.1]")
    assert domain_matches(".example.com", "a.b.example.com")
    assert not domain_matches(".example.com", "example.com")
    assert not domain_matches(".example.com", "badexample.com")
    assert not domain_matches("example.com", "a.example.com")
    assert sender_matches(None, "")
    assert not sender_matches("@app.example", "")
    assert not sender_matches("<>", "a@b")


def test_tls_level_of_a_rule() -> None:
    """A rule with AUTH or smtps:// verifies by default; its ``tls`` wins; else tls_policy."""
    secret = {"username": "relay", "password_file": "/etc/mxroute/upstream.secret"}
    rules = _rules(
        {"match": "a.example", "next_hop": "[up.example]:587", "auth": secret},
        {"match": "b.example", "next_hop": "smtps://up.example"},
        {"match": "c.example", "next_hop": "[up.example]:587", "auth": secret, "tls": "encrypt"},
        {"match": "d.example", "next_hop": "[hub.example]"},
    )
    levels = [choose(rules, d, "").tls_level for d in  # type: ignore[union-attr]
              ("a.example", "b.example", "c.example", "d.example")]
    assert levels == ["verify", "verify", "encrypt", None]


def test_auth_without_tls_is_a_configuration_error() -> None:
    """RFC 4954 §4: the password is never sent in clear text."""
    with pytest.raises(ValidationError, match="AUTH only after TLS"):
        _rules({"match": "*", "next_hop": "[up.example]:587", "tls": "none",
                "auth": {"username": "u", "password_file": "/x"}})


@pytest.mark.parametrize(
    "entry",
    [
        {"match": "*", "next_hop": "[up.example]", "auth": {"username": "", "password_file": "/x"}},
        {"match": "*", "next_hop": "[up.example]", "auth": {"username": "u", "password": "p"}},
        {"match": "*", "next_hop": "[up.example]", "tls": "sometimes"},
        {"match": "*", "next_hop": "[up.example]", "sender": "not an address"},
        {"match": "a..b", "next_hop": "[up.example]"},
        {"next_hop": "[up.example]"},
        {"match": "*", "next_hop": "[up.example]", "transport": "lmtp"},
    ],
)
def test_bad_rules_are_refused(entry: dict[str, object]) -> None:
    """A typo is an error naming the setting, never a rule that silently does something else."""
    with pytest.raises(ValidationError):
        _rules(entry)


def test_describe_never_shows_the_secret() -> None:
    rule = _rules({"match": "*", "next_hop": "[up.example]:587",
                   "auth": {"username": "relay", "password_file": "/etc/mxroute/up.secret"}})
    chosen = choose(rule, "x.example", "")
    assert chosen is not None
    assert chosen.describe() == "rule 1 (*) → [up.example]:587, AUTH as relay"
    assert chosen.to_json() == {
        "rule": 1, "match": "*", "sender": None, "next_hop": "[up.example]:587",
        "mx_lookup": False, "implicit_tls": False, "auth": True, "tls": "verify",
    }
    assert "up.secret" not in chosen.describe() + str(chosen.to_json())


def test_may_with_auth_is_encrypt_for_explain_and_delivery_alike() -> None:
    """RFC 4954 §4: AUTH only over TLS, so a rule's ``tls = "may"`` with AUTH is ``encrypt``;
    the level lives in the rule, read by explain and the courier alike."""
    rule = _rules({"match": "*", "next_hop": "[up.example]:587", "tls": "may",
                   "auth": {"username": "u", "password_file": "/x"}})
    chosen = choose(rule, "x.example", "")
    assert chosen is not None and chosen.tls_level == "encrypt"
