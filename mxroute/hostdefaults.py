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
