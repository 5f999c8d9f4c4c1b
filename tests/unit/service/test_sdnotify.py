"""sd_notify(3) and sd_listen_fds(3) as mxroute.service.sdnotify speaks them, over real AF_UNIX
sockets."""

from __future__ import annotations

import os
import socket
import time

import pytest

from mxroute.service import sdnotify


def test_notify_to_an_abstract_socket_and_the_reload_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """"@name" is the abstract namespace; RELOADING=1 carries MONOTONIC_USEC of CLOCK_MONOTONIC."""
    name = f"mxroute-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.enabled()
        assert sdnotify.notify("READY=1\nSTATUS=queue: 0 active, 0 deferred; 0 connections")
        assert sock.recv(4096) == b"READY=1\nSTATUS=queue: 0 active, 0 deferred; 0 connections"
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert sdnotify.reloading()
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))
        assert fields["RELOADING"] == "1"
        assert (
            before
            <= int(fields["MONOTONIC_USEC"])
            <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )


def test_notify_outside_systemd_or_to_a_dead_socket_is_a_quiet_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.enabled() and not sdnotify.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert not sdnotify.notify("READY=1")


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert sdnotify.watchdog_interval() is None


def test_listen_fds_for_another_pid_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """LISTEN_PID names another process (the variables leaked to a child): nothing is taken."""
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert sdnotify.listen_fds() == []
    monkeypatch.delenv("LISTEN_FDS")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    assert sdnotify.listen_fds() == []
