"""`mxroute check-config`'s settings part (issue 15 C3, D): the effective settings as a TOML file
that loads back to the same settings, each value not a default followed by where it came from;
``--non-default`` (Postfix's ``postconf -n``); and what would stop ``serve`` at start (an
address it cannot listen on, a spool it cannot make, a ``routes`` rule's ``password_file`` that
gives no secret), checked as ``serve`` uses them, leaving nothing behind.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from mxroute.errors import ConfigError
from mxroute.relay.courier.upstream import unusable_secrets
from mxroute.settings import Settings
from mxroute.settingsdoc import toml_line


def _shown(settings: Settings, non_default: bool) -> list[str]:
    """The names to print: every setting, or only those set somewhere (not ``"default"``)."""
    return [name for name in type(settings).model_fields
            if not non_default or settings.origin(name) != "default"]


def settings_lines(settings: Settings, non_default: bool = False) -> list[str]:
    """``name = value`` lines (TOML), ``# from ORIGIN`` after each value that is not a default."""
    values = settings.model_dump(mode="json")
    lines = []
    for name in _shown(settings, non_default):
        origin = settings.origin(name)
        line = toml_line(name, values[name])
        lines.append(line if origin == "default" else f"{line}  # from {origin}")
    return lines


def settings_json(settings: Settings, non_default: bool = False) -> dict[str, Any]:
    """The values by name, and ``origins``: where each came from."""
    values = settings.model_dump(mode="json")
    names = _shown(settings, non_default)
    out: dict[str, Any] = {name: values[name] for name in names}
    out["origins"] = {name: settings.origin(name) for name in names}
    return out


def check_startup(settings: Settings) -> None:
    """ConfigError naming the setting when ``serve`` could not start on ``settings``."""
    for item, (host, port) in zip(settings.listen, settings.listen_addresses(), strict=True):
        problem = _listen_problem(host)
        if problem:
            raise ConfigError(f"setting listen (from {settings.origin('listen')}): cannot listen "
                              f"on {item}: {problem}")
    problem = _spool_problem(settings.spool_dir)
    if problem:
        raise ConfigError(f"setting spool_dir (from {settings.origin('spool_dir')}): "
                          f"{settings.spool_dir}: {problem}")
    problem = _routes_problem(settings)
    if problem:
        raise ConfigError(f"setting routes (from {settings.origin('routes')}): {problem}")


def _routes_problem(settings: Settings) -> str | None:
    """A rule whose AUTH ``password_file`` gives no secret (issue 16: its mail would only be
    deferred), unless only the service user may read it (we cannot tell then). Never the
    secret itself."""
    for problem, path in unusable_secrets(settings.routes):
        unreadable_to_us = path.is_file() and not os.access(path, os.R_OK)
        if not (unreadable_to_us and service_owned(path)):
            return problem
    return None


def _listen_problem(host: str) -> str | None:
    """Why this host cannot be bound, found by binding each of its addresses to a free port
    (the port itself may be the running ``serve``'s)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return str(exc)
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _spool_problem(spool: Path) -> str | None:
    """Why ``serve`` could not make or write ``spool``: a directory is made and removed in the
    deepest one that exists (its ``tmp``, itself, or the parent it would be made in)."""
    for place in (spool / "tmp", spool, *spool.parents):
        if not os.path.lexists(place):
            continue
        if not place.is_dir():
            return f"{place} is not a directory"
        if place in (spool, spool / "tmp") and place.stat().st_mode & 0o022:
            return f"{place} is writable by group or others: serve refuses it (chmod 700 it)"
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".mxroute-check-", dir=place))
        except OSError as exc:
            if isinstance(exc, PermissionError) and service_owned(place):
                return None  # the service user's directory: it can, we cannot tell
            what = "files" if place in (spool, spool / "tmp") else "it"
            return f"cannot create {what} in {place}: {exc.strerror or exc}"
        return None
    return "no directory on its path exists"


def service_owned(place: Path) -> bool:
    """Whether ``place`` belongs to another user, not root, while we are not root: the service
    user's directory (``StateDirectory=``), which an operator's check cannot judge."""
    try:
        owner = place.stat().st_uid
    except OSError:
        return False
    return os.geteuid() != 0 and owner not in (0, os.geteuid())

