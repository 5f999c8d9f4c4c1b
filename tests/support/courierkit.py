"""What the courier tests share: a message and settings with short, RFC-shaped timeouts."""

from __future__ import annotations

from typing import Any

from mxroute.settings import Settings

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
