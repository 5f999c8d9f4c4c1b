"""Issue 18 §1: config/mxroute.toml's commented ``[[shaping]]`` example is valid, and the docs
name the setting."""

from __future__ import annotations

from mxroute.settings import Settings
from tests.support.configexample import commented_tables
from tests.support.paths import ROOT


def test_config_example_shaping_loads() -> None:
    first, second = Settings(
        shaping=commented_tables("traffic shaping", "shaping")).shaping
    assert first.match == "mx:*.example.net" and first.connection_limit == 5
    assert second.match == "domain:example.org" and second.message_burst == 10
    assert "`shaping`" in (ROOT / "docs" / "settings.md").read_text()
    assert "docs/shaping.md" in (ROOT / "config" / "mxroute.toml").read_text()


def test_config_example_reply_patterns_load() -> None:
    """Issue 18 §2: the commented ``[[reply_patterns]]`` example is valid and throttles."""
    from mxroute.relay.courier.patterns import configured, match

    rules = commented_tables("reply patterns", "reply_patterns")
    [rule] = Settings(reply_patterns=rules).reply_patterns
    found = match(configured([rule]), "421 4.7.1 you are sending too many messages")
    assert found is not None and found.name == "example-rate" and found.message_rate == 0.2
    assert "`reply_patterns`" in (ROOT / "docs" / "settings.md").read_text()
