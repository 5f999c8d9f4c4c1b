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
