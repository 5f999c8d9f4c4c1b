"""What the courier tests share: a message, settings with short, RFC-shaped timeouts, plans to
loopback sinks, and results by recipient."""

from __future__ import annotations

from typing import Any

from mxroute.relay.envelope import RecipientResult
from mxroute.routing.plan import Plan, Target, Verdict
from mxroute.settings import Settings
from tests.support.smtpsink import ClosedPort, RawSink, Sink

MESSAGE = b"From: s@src.test\r\nTo: a@dest.test\r\nSubject: hello\r\n\r\nHello.\r\n"


def courier_settings(**overrides: Any) -> Settings:
    """Settings for a courier talking to loopback sinks: client timeouts 2 s, HELO relay.test."""
    values: dict[str, Any] = {
        "helo_name": "relay.test",
        "connect_timeout": 2.0,
        "greeting_timeout": 2.0,
        "mail_timeout": 2.0,
        "rcpt_timeout": 2.0,
        "data_init_timeout": 2.0,
        "data_block_timeout": 2.0,
        "data_done_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


def target(n: int, server: Sink | RawSink | ClosedPort, preference: int | None = None) -> Target:
    """The n-th MX host of dest.test (preference 10 n unless given), at the server's address."""
    return Target(
        f"mx{n}.dest.test",
        preference if preference is not None else 10 * n,
        server.host,
        4,
        server.port,
    )


def plan(*targets: Target) -> Plan:
    """A deliverable plan for dest.test over these targets, in order."""
    return Plan(
        "dest.test",
        Verdict.DELIVERABLE,
        f"{len(targets)} address(es) to try",
        "2.0.0",
        targets=targets,
    )


def by(results: list[RecipientResult]) -> dict[str, RecipientResult]:
    """The results keyed by recipient address."""
    return {r.recipient: r for r in results}
