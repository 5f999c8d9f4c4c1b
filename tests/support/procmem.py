"""Resident memory of a process and its children, from /proc (issue 22: tests and bench/).

``family(pid)``: the PID and its direct children (``serve`` and its delivery process);
``vm(pid, "VmHWM")``: a /proc/PID/status figure in bytes (VmHWM: the peak resident set since
start, VmRSS: now), 0 once the process is gone. Linux only, as the relay's CI.
"""

from __future__ import annotations

from pathlib import Path


def vm(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field in bytes (0 when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def family(pid: int) -> list[int]:
    """``pid`` and its direct children."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def total(pids: list[int], field: str) -> int:
    """``vm(pid, field)`` summed over ``pids``."""
    return sum(vm(pid, field) for pid in pids)
