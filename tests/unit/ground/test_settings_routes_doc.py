"""Issue 16 §1: config/mxroute.toml's commented ``[[routes]]`` example is valid, and the docs
name the setting."""

from __future__ import annotations

from mxroute.settings import Settings
from tests.support.configexample import commented_tables
from tests.support.paths import ROOT


def test_config_example_routes_load() -> None:
    rules = commented_tables("next-hop rules", "routes")
    first, second = Settings(routes=rules).routes
    assert first.match == ".corp.example" and first.next_hop.mx and first.next_hop.port == 25
    assert second.match == "*" and not second.next_hop.mx and second.next_hop.port == 587
    assert second.auth is not None and second.auth.username == "relay@example.com"
    assert "`routes`" in (ROOT / "docs" / "settings.md").read_text()
    assert "docs/routes.md" in (ROOT / "README.md").read_text()
