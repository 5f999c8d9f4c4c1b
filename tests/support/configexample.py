"""The commented ``[[table]]`` examples of config/mxroute.toml, read back as TOML (issues 16, 18):
the tests that load them prove the shipped examples are valid settings."""

from __future__ import annotations

import tomllib
from typing import Any

from tests.support.paths import ROOT


def commented_tables(heading: str, table: str) -> list[dict[str, Any]]:
    """The ``[[table]]`` entries commented out under ``# --- heading`` (up to the next
    ``# --- `` section), uncommented and parsed."""
    text = (ROOT / "config" / "mxroute.toml").read_text()
    section = text[text.index(f"# --- {heading}"):]
    end = section.find("\n# --- ")
    section = section if end < 0 else section[:end]
    lines = [line[2:] for line in section.splitlines()
             if line.startswith("# ") and not line.startswith(f"# {table} = []")]
    start = next(i for i, line in enumerate(lines) if line == f"[[{table}]]")
    entries: list[dict[str, Any]] = tomllib.loads("\n".join(lines[start:]))[table]
    return entries
