"""SEC-14: the dependency floor, checked on what is declared and on what is installed.

aiosmtpd below 1.4.6 has CVE-2024-27305 (SMTP smuggling: a bare LF ends DATA) and
CVE-2024-34083 (STARTTLS does not discard pipelined plaintext, TLS-4); aiosmtplib
is held at the release the project was built and audited against (5.1.3). The
checklist suggests pip-audit/OSV in CI; CI's machine reaches only the package
index, not a vulnerability database, so this table is the enforced part.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version

import pytest

from tests.support.paths import ROOT

FLOORS = {"aiosmtpd": (1, 4, 6), "aiosmtplib": (5, 1, 3), "dnspython": (2, 6),
          "pydantic-settings": (2, 3),
          # CVE-2023-28858/28859: a cancelled asyncio command could leave its reply to the next
          "redis": (4, 5, 4)}


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for spec in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", spec.split(";")[0].strip())
        assert match, f"{spec!r}: every runtime dependency needs a >= floor (SEC-14)"
        out[match.group(1).lower()] = match.group(2)
    return out


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_sec14_declared_floor_excludes_vulnerable_releases(name: str) -> None:
    declared = _declared()
    assert name in declared
    assert _tuple(declared[name]) >= FLOORS[name], (
        f"pyproject allows {name} {declared[name]} < {FLOORS[name]}")


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_sec14_installed_release_is_at_or_above_the_floor(name: str) -> None:
    assert _tuple(version(name)) >= FLOORS[name], f"{name} {version(name)} installed"
