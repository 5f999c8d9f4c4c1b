"""``check-config``'s look at ``shared_state`` (issue 19, docs/fleets.md): the URL's form (the
settings refuse a bad one: exit 78 naming it), the password file, then one connection: PING and
the server's version (``INFO server``). A server older than ``MIN_VERSION`` lacks what the
fleet's scripts need, and a refused password is a configuration error: exit 78. A Redis that
does not answer is advice only (exit 0): ``serve`` runs alone, on local limits, until it does.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mxroute.cli.config import service_owned
from mxroute.errors import ConfigError
from mxroute.settings import Settings

MIN_VERSION = (5, 0)  # Lua with redis.call('TIME') replicated by effects, PX, UNLINK ...
TIMEOUT = 3.0  # seconds for the whole check


def check_shared_state(settings: Settings) -> dict[str, Any] | None:
    """What ``check-config`` reports of ``shared_state`` (None when unset): ``url``
    (redacted), ``reachable``, ``version``, ``problem`` (why not reachable). ConfigError
    naming the setting for what would keep a fleet from sharing on these settings."""
    if not settings.shared_state:
        return None
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    from mxroute.relay.fleet.connection import SharedStateError, from_settings, shown

    url = shown(settings)
    try:
        redis = from_settings(settings)
    except SharedStateError as exc:
        path = settings.shared_state_password_file
        if path is not None and path.is_file() and not os.access(path, os.R_OK) \
                and service_owned(path):
            return {"url": url, "reachable": None, "version": None,
                    "problem": f"{path} is the service user's: not checked from here"}
        raise ConfigError(f"setting shared_state_password_file (from "
                          f"{settings.origin('shared_state_password_file')}): {exc}") from None
    assert redis is not None

    async def ask() -> str:
        try:
            await redis.ping()
            info = await redis.info("server")
        finally:
            await redis.aclose()
        return str(info.get("redis_version", "0"))

    try:
        version = asyncio.run(asyncio.wait_for(ask(), TIMEOUT))
    except (AuthenticationError, ResponseError) as exc:
        text = str(exc)
        if isinstance(exc, AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
            raise ConfigError(f"setting shared_state (from {settings.origin('shared_state')}): "
                              f"{url} refused us: {text}") from None
        raise ConfigError(f"setting shared_state (from {settings.origin('shared_state')}): "
                          f"{url}: {text}") from None
    except (RedisError, OSError, TimeoutError) as exc:
        return {"url": url, "reachable": False, "version": None,
                "problem": str(exc) or type(exc).__name__}
    if _version(version) < MIN_VERSION:
        raise ConfigError(f"setting shared_state (from {settings.origin('shared_state')}): "
                          f"{url} is Redis {version}; the fleet's scripts need Redis "
                          f"{'.'.join(map(str, MIN_VERSION))} or later")
    return {"url": url, "reachable": True, "version": version, "problem": None}


def line(found: dict[str, Any]) -> str:
    """``check_shared_state``'s answer as one line of ``check-config``'s text."""
    if found["reachable"]:
        return f"shared_state {found['url']}: reachable, Redis {found['version']}: ok"
    if found["reachable"] is None:
        return f"shared_state {found['url']}: {found['problem']}"
    return (f"shared_state {found['url']}: not reachable ({found['problem']}): serve would run "
            "alone, on local limits, until it answers")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


__all__ = ["MIN_VERSION", "check_shared_state", "line"]
