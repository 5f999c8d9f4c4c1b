"""The inbound certificate and key files' permissions, checked at start (issue 21).

The documented arrangement (docs/operators.md): the key ``root:mxroute`` mode 0640 (or the
service user's own, 0600). ``mode_problem`` is the rule; ``file_warnings`` reads the files.
Warnings only: ``serve`` logs them, ``check-config`` prints them.

May import: the ground.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

SERVICE_GROUP = "mxroute"


def mode_problem(mode: int, group: str, *, key: bool) -> str | None:
    """What is wrong with a file of ``mode`` in ``group``, or None. A key: others may not touch
    it, its group not write it, and only the ``mxroute`` group read it; a certificate (public):
    nobody but its owner may write it."""
    mode &= 0o777
    if mode & 0o022:
        return f"is writable by {'others' if mode & 0o002 else 'its group'} (mode {mode:o})"
    if key and mode & 0o007:
        return f"is readable by others (mode {mode:o})"
    if key and mode & 0o070 and group != SERVICE_GROUP:
        return f"is readable by group {group} (mode {mode:o}), not only {SERVICE_GROUP}"
    return None


def file_warnings(cert: Path | None, key: Path | None) -> list[str]:
    """One line per certificate or key file whose permissions are unsafe (a file that cannot be
    read is left to loading it, which says why)."""
    found = []
    for setting, path, is_key in (("tls_cert_file", cert, False), ("tls_key_file", key, True)):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        problem = mode_problem(st.st_mode, group, key=is_key)
        if problem is not None:
            found.append(f"{setting} {path} {problem}: make it root:{SERVICE_GROUP} "
                         f"{'0640' if is_key else '0644'} (or the service user's own, "
                         f"{'0600' if is_key else '0644'})")
    return found
