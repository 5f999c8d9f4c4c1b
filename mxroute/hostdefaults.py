"""Defaults that come from the host: where the spool is, and this host's name (the ground:
read by ``mxroute.settings`` for ``spool_dir`` and ``helo_name``, and by the queue tools)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from mxroute.address import is_local_name

# where systemd/mxroute.service's StateDirectory=mxroute puts the spool
SYSTEM_SPOOL = Path("/var/lib/mxroute")


def default_spool(
    environ: Mapping[str, str] = os.environ, system: Path = SYSTEM_SPOOL
) -> tuple[Path, str]:
    """The default ``spool_dir`` and why it is that one.

    systemd's ``$STATE_DIRECTORY`` (the service itself); else ``system`` when it exists (the
    unit's ``StateDirectory=``: the CLI run by an operator finds the service's spool); else
    ``./spool`` (a checkout), made absolute.
    """
    state = environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]), "$STATE_DIRECTORY, systemd's StateDirectory="
    if system.is_dir():
        return system, f"{system}, systemd's StateDirectory= of mxroute.service"
    return Path("spool").absolute(), f"./spool, as there is no $STATE_DIRECTORY and no {system}"


def spool_default() -> Path:
    """``$STATE_DIRECTORY`` (systemd), else ``/var/lib/mxroute`` when it exists, else ``./spool``
    in the current directory."""
    return default_spool()[0]


def pick_host_name(host: str, canonical: list[str]) -> str:
    """``helo_name``'s default from the host name and its canonical names, as Postfix finds
    ``myhostname``: ``host`` when it has a dot, else the first canonical name with a dot that
    is not a localhost name, else ``host`` itself (``check-config`` and ``serve`` warn)."""
    if "." in host:
        return host
    for name in canonical:
        if "." in name and not is_local_name(name):
            return name.rstrip(".")
    return host


def host_name() -> str:
    """This host's name: ``gethostname()``, completed by its canonical name (getaddrinfo
    ``AI_CANONNAME``, as ``hostname --fqdn``). Not ``getfqdn()``: its reverse lookup turns a
    host whose 127.0.0.1 is named ``localhost`` in /etc/hosts into ``localhost``."""
    host = socket.gethostname()
    if "." in host:
        return host
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        return host
    return pick_host_name(host, [info[3] for info in infos if info[3]])


__all__ = ["SYSTEM_SPOOL", "default_spool", "host_name", "pick_host_name", "spool_default"]


# --- the default max_inflight_bytes (issue 22) ----------------------------------------------------

AUTO_FRACTION = 4  # a quarter of the machine's (or the cgroup's) memory ...
AUTO_CAP = 1 << 30  # ... at most 1 GiB ...
AUTO_FLOOR_MESSAGES = 2  # ... and at least two messages of max_message_size
FALLBACK_MEMORY = 2 << 30  # when no memory figure can be read


def memory_limit(meminfo: str, cgroup_max: str | None) -> int:
    """The memory this service may use: MemTotal from ``/proc/meminfo``'s text, or the cgroup v2
    ``memory.max`` when lower (``max``: no limit); ``FALLBACK_MEMORY`` without either."""
    total = FALLBACK_MEMORY
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            break
    if cgroup_max is not None and cgroup_max.strip().isdigit():
        total = min(total, int(cgroup_max.strip()))
    return total


def machine_memory() -> int:
    """``memory_limit`` of this host, read from /proc and /sys/fs/cgroup."""
    texts: list[str | None] = []
    for path in ("/proc/meminfo", "/sys/fs/cgroup/memory.max"):
        try:
            texts.append(Path(path).read_text())
        except OSError:
            texts.append(None)
    return memory_limit(texts[0] or "", texts[1])


def auto_budget(memory: int, max_message_size: int) -> int:
    """The default ``max_inflight_bytes``: a quarter of ``memory``, at most 1 GiB, at least two
    messages of ``max_message_size``."""
    return max(AUTO_FLOOR_MESSAGES * max_message_size, min(memory // AUTO_FRACTION, AUTO_CAP))


def delivery_share(budget: int, max_message_size: int) -> int:
    """The part of ``budget`` for the messages the delivery side holds during attempts: a
    quarter, at least one message of ``max_message_size``; the intake has the rest."""
    return max(max_message_size, budget // 4)
