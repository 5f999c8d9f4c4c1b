"""The systemd unit: `systemd-analyze verify` clean, `security` exposure at most 2.0 (issue 5)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None and os.environ.get("CI") != "true",
    reason="systemd-analyze is not installed (apt-get install systemd)",
)


def unit_copy(tmp_path: Path, name: str = "mxroute.service") -> Path:
    """The unit with ExecStart pointing at this environment's mxroute, so verify can check it."""
    executable = Path(sys.executable).with_name("mxroute")
    if not executable.exists():
        executable = Path(shutil.which("mxroute") or "/bin/true")
    text = (ROOT / "systemd" / name).read_text()
    text = text.replace("/opt/mxroute/bin/mxroute", str(executable))
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_analyze
def test_unit_verifies_clean(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    result = subprocess.run([ANALYZE or "systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "mxroute" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@needs_analyze
def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    result = subprocess.run(
        [ANALYZE or "systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= 2.0


def test_unit_has_the_promised_settings() -> None:
    text = (ROOT / "systemd" / "mxroute.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "StateDirectory=mxroute", "ConfigurationDirectory=mxroute",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "SystemCallFilter=@system-service"):
        assert line in text.splitlines(), line
    assert "u mxroute" in (ROOT / "systemd" / "mxroute.sysusers").read_text()
