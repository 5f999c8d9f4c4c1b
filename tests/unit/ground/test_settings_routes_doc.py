"""Issue 16 §1: config/mxroute.toml's commented ``[[routes]]`` example is valid, and the docs
name the setting."""

from __future__ import annotations

import tomllib

from mxroute.settings import Settings
from tests.support.paths import ROOT


def test_config_example_routes_load() -> None:
    text = (ROOT / "config" / "mxroute.toml").read_text()
    section = text[text.index("# --- next-hop rules"):]
    end = section.find("\n# --- ")  # the next section (traffic shaping) is not this one
    section = section if end < 0 else section[:end]
    lines = [line[2:] for line in section.splitlines()
             if line.startswith("# ") and not line.startswith("# routes = []")]
    start = next(i for i, line in enumerate(lines) if line == "[[routes]]")
    rules = tomllib.loads("\n".join(lines[start:]))["routes"]
    first, second = Settings(routes=rules).routes
    assert first.match == ".corp.example" and first.next_hop.mx and first.next_hop.port == 25
    assert second.match == "*" and not second.next_hop.mx and second.next_hop.port == 587
    assert second.auth is not None and second.auth.username == "relay@example.com"
    assert "`routes`" in (ROOT / "docs" / "settings.md").read_text()
    assert "docs/routes.md" in (ROOT / "README.md").read_text()
