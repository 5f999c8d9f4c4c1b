"""The lint and type gate CI runs: ``ruff check mxroute tests bench`` and ``mypy mxroute`` (strict).

Both run from this interpreter's environment (the ``test`` extra pins their minor versions, so a
new release with new rules cannot break CI overnight) with the settings in pyproject.toml, and
must report nothing. mypy runs cold, with its cache in a temporary directory: CI has none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ruff_reports_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", "--output-format", "concise", "mxroute", "tests",
                  "bench")
    assert (result.returncode == 0
            and "All checks passed!" in result.stdout), result.stdout + result.stderr


def test_mypy_strict_reports_nothing(tmp_path: Path) -> None:
    result = _run("mypy", "--config-file", "pyproject.toml", "--cache-dir", str(tmp_path),
                  "mxroute")
    modules = len(list((ROOT / "mxroute").rglob("*.py")))
    # the summary line proves every module was checked, not an empty or mistyped target
    expected = f"Success: no issues found in {modules} source files"
    assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr
