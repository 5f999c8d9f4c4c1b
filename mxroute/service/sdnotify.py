"""The systemd service protocols, without a library: sd_notify(3) and sd_listen_fds(3).

``notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (a path, or an
abstract socket when it starts with "@"); outside systemd it does nothing.
``listen_fds()`` returns the sockets systemd passed (``LISTEN_FDS``/``LISTEN_PID``).
``reloading()`` is the first half of a reload (``RELOADING=1`` with ``MONOTONIC_USEC``,
systemd.service(5) ``Type=notify-reload``); ``READY=1`` is the second.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3


def notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1", "STATUS=...") to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def enabled() -> bool:
    """Whether a service manager listens (``$NOTIFY_SOCKET`` is set)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def reloading() -> bool:
    """Tell systemd a reload has started; send ``READY=1`` when it is done (or failed)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec`` in seconds when systemd asks this process for pings, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def listen_fds() -> list[socket.socket]:
    """Listening sockets passed by systemd socket activation, if any (consumed once)."""
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not count or (pid and pid != str(os.getpid())):
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
