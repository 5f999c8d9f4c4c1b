"""Issue 18 §1: config/mxroute.toml's commented ``[[shaping]]`` example is valid, and the docs
name the setting."""

from __future__ import annotations

import tomllib

from mxroute.settings import Settings
from tests.support.paths import ROOT


def test_config_example_shaping_loads() -> None:
    text = (ROOT / "config" / "mxroute.toml").read_text()
    section = text[text.index("# --- traffic shaping"):]
    lines = [line[2:] for line in section.splitlines()
             if line.startswith("# ") and not line.startswith("# shaping = []")]
    start = next(i for i, line in enumerate(lines) if line == "[[shaping]]")
    first, second = Settings(shaping=tomllib.loads("\n".join(lines[start:]))["shaping"]).shaping
    assert first.match == "mx:*.example.net" and first.connection_limit == 5
    assert second.match == "domain:example.org" and second.message_burst == 10
    assert "`shaping`" in (ROOT / "docs" / "settings.md").read_text()
    assert "docs/shaping.md" in (ROOT / "config" / "mxroute.toml").read_text()
