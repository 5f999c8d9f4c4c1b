"""The ``dkim_keys`` setting (issue 14 §2): TOML ``[[dkim_keys]]``, env JSON, normalised domains."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxroute.errors import ConfigError
from mxroute.settings import load_settings
from tests.support.paths import ROOT


def test_toml_array_of_tables_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MXROUTE_DKIM_KEYS", raising=False)
    config = tmp_path / "m.toml"
    config.write_text('[[dkim_keys]]\ndomain = "Bücher.Example."\nselector = "S2026.Mail"\n'
                      'key_file = "/k1.pem"\n\n[[dkim_keys]]\ndomain = "*"\nselector = "x"\n'
                      'key_file = "/k2.pem"\n')
    keys = load_settings(str(config)).dkim_keys
    assert [(k.domain, k.selector, str(k.key_file)) for k in keys] == [
        ("xn--bcher-kva.example", "s2026.mail", "/k1.pem"), ("*", "x", "/k2.pem")]


@pytest.mark.parametrize("entry", [
    '{"domain": "example.com", "selector": "-bad", "key_file": "/k"}',
    '{"domain": "example.com", "selector": "a..b", "key_file": "/k"}',
    '{"domain": "exa mple.com", "selector": "s", "key_file": "/k"}',
    '{"domain": ".example.com", "selector": "s", "key_file": "/k"}',
    '{"domain": "example.com", "selector": "s"}',
    '{"domain": "example.com", "selector": "s", "key_file": "/k", "senderz": 1}',
])
def test_bad_entry_is_one_line(entry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXROUTE_DKIM_KEYS", f"[{entry}]")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    message = caught.value.message
    assert "\n" not in message and "dkim_keys" in message, message


def test_config_file_documents_dkim_keys() -> None:
    text = (ROOT / "config" / "mxroute.toml").read_text()
    assert "# [[dkim_keys]]" in text
    assert "`dkim_keys`" in (ROOT / "docs" / "settings.md").read_text()


def test_senders_networks_and_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 §1: ``senders`` holds client networks (an address is its /32 or /128) and AUTH
    user names; unset means every client allowed to relay."""
    monkeypatch.setenv("MXROUTE_DKIM_KEYS", '[{"domain": "example.com", "selector": "s", '
                       '"key_file": "/k", "senders": ["192.0.2.7", "2001:db8::/32", "alice", '
                       '"bob@example.com"]}, {"domain": "x.test", "selector": "s", '
                       '"key_file": "/k"}]')
    first, second = load_settings(None).dkim_keys
    assert [str(n) for n in first.sender_networks()] == ["192.0.2.7/32", "2001:db8::/32"]
    assert first.sender_users() == {"alice", "bob@example.com"}
    assert second.senders is None and second.sender_networks() == []


@pytest.mark.parametrize("senders", ['["10.0.0.0/33"]', '[""]', '"alice"'])
def test_bad_senders_is_one_line(senders: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXROUTE_DKIM_KEYS", '[{"domain": "example.com", "selector": "s", '
                       f'"key_file": "/k", "senders": {senders}}}]')
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert "\n" not in caught.value.message and "dkim_keys" in caught.value.message


def test_dkim_expiry_must_outlive_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """dkim_expire_seconds < queue_lifetime_seconds + one day: refused, naming both settings."""
    monkeypatch.setenv("MXROUTE_QUEUE_LIFETIME_SECONDS", "3600")
    monkeypatch.setenv("MXROUTE_DKIM_EXPIRE_SECONDS", str(3600 + 86399))
    with pytest.raises(ConfigError, match="dkim_expire_seconds .* queue_lifetime_seconds"):
        load_settings(None)
    monkeypatch.setenv("MXROUTE_DKIM_EXPIRE_SECONDS", str(3600 + 86400))
    assert load_settings(None).dkim_expire_seconds == 3600 + 86400
    monkeypatch.delenv("MXROUTE_DKIM_EXPIRE_SECONDS")
    assert load_settings(None).dkim_required is False
