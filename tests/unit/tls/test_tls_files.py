"""Issue 21: the inbound certificate and key permission rule (mxroute/tls/files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxroute.tls.files import file_warnings, mode_problem


@pytest.mark.parametrize(("mode", "group", "key", "word"), [
    (0o600, "root", True, None), (0o640, "mxroute", True, None), (0o400, "root", True, None),
    (0o640, "root", True, "group root"), (0o644, "mxroute", True, "readable by others"),
    (0o660, "mxroute", True, "writable by its group"), (0o666, "mxroute", True, "by others"),
    (0o644, "root", False, None), (0o664, "root", False, "writable by its group"),
    (0o646, "root", False, "writable by others"),
])
def test_key_and_certificate_modes(mode: int, group: str, key: bool, word: str | None) -> None:
    """Issue 21: keys root:mxroute 0640 or the owner's only; certificates written by none but
    their owner."""
    problem = mode_problem(0o100000 | mode, group, key=key)
    assert (problem is None) if word is None else (word in (problem or "")), problem


def test_file_warnings_read_the_files(tmp_path: Path) -> None:
    """Issue 21: a 0644 key is named with the setting and the fix; a missing file is left to
    loading it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("c")
    key.write_text("k")
    cert.chmod(0o644)
    key.chmod(0o644)
    found = file_warnings(cert, key)
    assert len(found) == 1 and found[0].startswith(f"tls_key_file {key} is readable by others")
    assert "root:mxroute 0640" in found[0]
    key.chmod(0o600)
    assert file_warnings(cert, key) == []
    assert file_warnings(tmp_path / "none.pem", None) == []
