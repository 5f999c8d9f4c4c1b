"""Shared fixtures: the loopback DNS server and its resolver, the relay world, the OpenDKIM peer."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxroute.dns.resolver import NetworkTransport, Resolver, Server
from tests.support import opendkim
from tests.support.dnsserver import DNSServer
from tests.support.redisserver import RedisServer, start_redis
from tests.support.relay import World

_hosts = itertools.cycle(f"127.0.53.{n}" for n in range(1, 250))


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """A real authoritative DNS server on its own 127.0.53.x address; set_zone() sets its zone."""
    with DNSServer(host=next(_hosts)) as server:
        yield server


def resolver_for(server: DNSServer, timeout: float = 0.5) -> Resolver:
    """A resolver that asks only ``server`` (one attempt, short timeout: tests stay fast)."""
    return Resolver(
        NetworkTransport([Server(server.host, server.port)], timeout=timeout, attempts=1)
    )


@pytest.fixture
def world(tmp_path: Path, dns_server: DNSServer) -> Iterator[World]:
    with World.running(tmp_path, dns_server) as w:
        w.zone(
            f"dest IN MX 10 mx1.dest.test.\nmx1.dest IN A {w.ip(1)}\n"
            f"sender IN MX 10 mx.sender.test.\nmx.sender IN A {w.ip(9)}\n"
        )
        yield w


@pytest.fixture(scope="module")
def dkim_peer_running() -> Iterator[opendkim.DkimPeer]:
    """One OpenDKIM-verifying Postfix per test module (tests/support/opendkim.py); skipped when
    opendkim or Postfix is missing (or not root), a failure instead under CI=true."""
    why = opendkim.unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"interop test cannot run in CI: {why}")
        pytest.skip(why)
    with opendkim.running_peer() as peer:
        yield peer


@pytest.fixture
def dkim_peer(dkim_peer_running: opendkim.DkimPeer) -> Iterator[opendkim.DkimPeer]:
    """The module's OpenDKIM peer with no held mail and only the MX of interop.test published."""
    dkim_peer_running.clear()
    dkim_peer_running.publish("")
    yield dkim_peer_running
    dkim_peer_running.clear()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on 127.0.19.1 (issue 19), stopped by PID after the test."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()
