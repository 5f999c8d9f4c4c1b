"""Issue 19: the ``shared_state`` connection against a real redis-server on 127.0.19.x: the ACL
user from the URL, the password from its file (never the URL), short timeouts when it is away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.exceptions

from mxroute.relay.fleet.connection import SharedStateError, client, from_settings, shown
from mxroute.settings import Settings
from mxroute.sharedstate import parse_shared_state
from tests.support.redisserver import RedisServer, start_redis
from tests.support.tlsca import TestCA


async def ping(settings: Settings) -> bool:
    """PING through the client ``settings`` make, closed after."""
    conn = from_settings(settings)
    assert conn is not None
    try:
        return bool(await conn.ping())
    finally:
        await conn.aclose()


def test_issue19_connects_with_settings(redis_server: RedisServer) -> None:
    """issue 19: the client made from the settings talks to the server named by shared_state."""
    settings = Settings(shared_state=redis_server.url)
    assert shown(settings) == redis_server.url

    assert asyncio.run(ping(settings))
    assert from_settings(Settings()) is None and shown(Settings()) is None


def test_issue19_acl_user_and_password_file(tmp_path: Path) -> None:
    """issue 19: an ACL user in the URL, its password read from shared_state_password_file;
    without it the server refuses."""
    server = start_redis(tmp_path / "redis", user="mxfleet", password="s3cret-pw")
    try:
        secret = tmp_path / "redis.secret"
        secret.write_text("s3cret-pw\n")
        url = parse_shared_state(server.url)

        async def whoami(password_file: Path | None) -> str:
            conn = client(url, password_file=password_file)
            try:
                return str(await conn.acl_whoami())
            finally:
                await conn.aclose()

        assert asyncio.run(whoami(secret)) == "mxfleet"
        with pytest.raises(redis.exceptions.AuthenticationError):
            asyncio.run(whoami(None))
    finally:
        server.stop()


def test_issue19_unreadable_password_file_names_the_setting(tmp_path: Path) -> None:
    """issue 19: a password file that cannot be read is a clear error naming the setting."""
    with pytest.raises(SharedStateError, match="shared_state_password_file .*cannot read"):
        client(parse_shared_state("redis://127.0.19.1:1/0"),
               password_file=tmp_path / "missing")


def test_issue19_unreachable_server_is_an_error_not_a_wait(tmp_path: Path) -> None:
    """issue 19: nobody listening: the client raises (no retry loop of its own), so callers can
    fall back to local limits."""
    server = start_redis(tmp_path / "redis")
    server.stop()

    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(ping(Settings(shared_state=server.url)))


def test_issue19_rediss_verified_with_tls_ca_file(tmp_path: Path) -> None:
    """issue 19: rediss:// talks TLS, verifying the server's certificate against tls_ca_file;
    a server the CA did not sign is refused (then the limiter counts locally)."""
    ca = TestCA(tmp_path / "ca")
    server = start_redis(tmp_path / "redis", tls=ca.leaf_files("127.0.19.1"))
    try:
        assert server.url.startswith("rediss://")
        settings = Settings(shared_state=server.url, tls_ca_file=ca.ca_file)

        assert asyncio.run(ping(settings))
        other = TestCA(tmp_path / "other", name="another CA")
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            asyncio.run(ping(Settings(shared_state=server.url, tls_ca_file=other.ca_file)))
    finally:
        server.stop()
