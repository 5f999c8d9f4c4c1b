"""docs/settings-reference.md is generated from the settings model (issue 15 D): every setting
with its type, default, environment variable and whether a reload (SIGHUP) applies it. This
fails when the committed file is stale, and says how to regenerate it.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT

REFERENCE = ROOT / "docs" / "settings-reference.md"
COMMAND = "python -m mxroute.settingsdoc docs/settings-reference.md"


def test_issue15_d_settings_reference_is_current() -> None:
    done = subprocess.run([sys.executable, "-m", "mxroute.settingsdoc"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert committed == done.stdout, f"{REFERENCE} is stale: regenerate it with `{COMMAND}`"


def test_issue15_d_settings_reference_names_every_setting() -> None:
    from mxroute.service.daemon import RESTART_ONLY
    from mxroute.settings import Settings

    text = REFERENCE.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`MXROUTE_{name.upper()}`" in text, name
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert ("restart" in row) == (name in RESTART_ONLY), row
