"""``mxroute dkim keygen`` and ``mxroute dkim check`` (docs/dkim.md)."""

from __future__ import annotations

import asyncio
import grp
import json
import sys
from pathlib import Path
from typing import Any

from mxroute.errors import EX_CANTCREAT, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from mxroute.text import terminal_safe


def keygen(domain: str, selector: str, algorithm: str, bits: int, directory: str,
           group: str | None, as_json: bool) -> int:
    """Write a new key to ``DIR/DOMAIN.SELECTOR.pem`` and print its DNS record."""
    from mxroute.identity.dkim.keys import MIN_RSA_BITS, generate, write_key
    from mxroute.identity.dkim.record import build_txt, dns_name, zone_line
    from mxroute.settings import DkimKey

    try:
        entry = DkimKey(domain=domain, selector=selector, key_file=Path(directory))
    except ValueError as exc:
        print(f"mxroute: dkim keygen: {_first(exc)}", file=sys.stderr)
        return EX_USAGE
    if entry.domain == "*":
        print("mxroute: dkim keygen: a key needs a real domain, not *", file=sys.stderr)
        return EX_USAGE
    if algorithm == "rsa" and bits < MIN_RSA_BITS:
        print(f"mxroute: dkim keygen: --bits {bits} is under {MIN_RSA_BITS}", file=sys.stderr)
        return EX_USAGE
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            print(f"mxroute: dkim keygen: no group {group!r}", file=sys.stderr)
            return EX_USAGE
    path = Path(directory) / f"{entry.domain}.{entry.selector}.pem"
    key = generate(algorithm, bits)
    try:
        write_key(key, path, group=gid)
    except FileExistsError:
        print(f"mxroute: dkim keygen: {path} exists; not overwritten", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"mxroute: dkim keygen: cannot write {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return EX_CANTCREAT
    from mxroute.identity.dkim.keys import load_key

    loaded = load_key(path, allowed_group=gid)
    txt = build_txt(loaded.algorithm, loaded.public_b64())
    if as_json:
        print(json.dumps({"key_file": str(path), "dns_name": dns_name(entry.selector,
                                                                        entry.domain),
                          "txt": txt}))
    else:
        print(f"; private key: {path}")
        print(zone_line(entry.selector, entry.domain, txt))
    return EX_OK


def _first(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)


def check_configured(settings: Any, resolver: Any) -> list[Any]:
    """``dkim check`` of every configured key (``KeyCheck``s), its warnings on stderr.

    The catch-all key has no DNS name of its own: it is said so and left out.
    """
    from mxroute.identity.dkim.check import check_key, load_or_problem

    group = _mxroute_gid()
    entries = []
    for entry in settings.dkim_keys:
        if entry.domain == "*":  # signs as the From domain: no DNS name of its own to check
            print(f"mxroute: dkim check: the catch-all key (domain *, selector {entry.selector})"
                  " has no DNS name of its own; check each domain it signs for", file=sys.stderr)
            continue
        key = load_or_problem(entry.key_file, group)
        for warning in getattr(key, "warnings", ()):
            print(f"mxroute: warning: {warning}", file=sys.stderr)
        entries.append((entry, key))

    async def run() -> list[Any]:
        return [await check_key(resolver, entry.domain, entry.selector, key)
                for entry, key in entries]

    return asyncio.run(run()) if entries else []


def check_line(result: Any) -> str:
    """One key as ``dkim check`` prints it: name, status, algorithm-bits, testing, detail."""
    kind = f"{result.algorithm}-{result.bits}" if result.algorithm else "-"
    test = " testing" if result.testing else ""
    detail = f"  {terminal_safe(result.detail)}" if result.detail else ""
    return f"{result.dns_name:<40} {result.status:<18} {kind}{test}{detail}"


def check(settings: Any, resolver: Any, as_json: bool) -> int:
    """Check every configured key against DNS: exit 0 all ok, 69 any problem, 75 DNS trouble."""
    from mxroute.identity.dkim.check import PROBLEMS

    if not settings.dkim_keys:
        if as_json:
            print("[]")
        else:
            print("no DKIM keys configured (dkim_keys)")
        return EX_OK
    results = check_configured(settings, resolver)
    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            print(check_line(r))
    if any(r.status in PROBLEMS for r in results):
        return EX_UNAVAILABLE
    if any(r.status == "temporary-failure" for r in results):
        return EX_TEMPFAIL
    return EX_OK


def _mxroute_gid() -> int | None:
    try:
        return grp.getgrnam("mxroute").gr_gid
    except KeyError:
        return None
