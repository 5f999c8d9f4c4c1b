"""Shared fixtures: the loopback DNS server and its resolver."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from mxroute.resolver import NetworkTransport, Resolver, Server
from tests.support.dnsserver import DNSServer

_hosts = itertools.cycle(f"127.0.53.{n}" for n in range(1, 250))


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """A real authoritative DNS server on its own 127.0.53.x address; set its zone with set_zone()."""
    with DNSServer(host=next(_hosts)) as server:
        yield server


def resolver_for(server: DNSServer, timeout: float = 0.5) -> Resolver:
    """A resolver that asks only ``server`` (one attempt, short timeout: tests stay fast)."""
    return Resolver(NetworkTransport([Server(server.host, server.port)], timeout=timeout, attempts=1))
