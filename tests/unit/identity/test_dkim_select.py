"""Which keys sign a From: domain (issue 14 §1): most specific domain wins, "*" catches the rest."""

from pathlib import Path

from mxroute.identity.dkim.select import signing_keys
from mxroute.settings import DkimKey


def key(domain: str, selector: str = "s1") -> DkimKey:
    return DkimKey(domain=domain, selector=selector, key_file=Path(f"/k/{domain}.{selector}"))


KEYS = [key("*", "any"), key("example.com"), key("example.com", "ed"), key("mail.example.com"),
        key("example.org")]


def test_exact_domain_signs_with_every_key_for_it() -> None:
    assert [(k.domain, k.selector) for k in signing_keys(KEYS, "example.com")] == [
        ("example.com", "s1"), ("example.com", "ed")]


def test_subdomain_uses_parent_key_and_most_specific_wins() -> None:
    assert [k.domain for k in signing_keys(KEYS, "news.example.com")] == ["example.com"] * 2
    assert [k.domain for k in signing_keys(KEYS, "a.mail.example.com")] == ["mail.example.com"]
    assert [k.domain for k in signing_keys(KEYS, "MAIL.Example.COM.")] == ["mail.example.com"]


def test_label_boundary_is_respected() -> None:
    assert [k.selector for k in signing_keys(KEYS, "badexample.com")] == ["any"]


def test_catch_all_only_when_nothing_else_matches() -> None:
    assert [k.selector for k in signing_keys(KEYS, "other.net")] == ["any"]
    assert signing_keys(KEYS[1:], "other.net") == []
