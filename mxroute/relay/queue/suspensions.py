"""Suspended recipient domains and destination sites (``mxroute queue suspend|resume``, issue
15 B, issue 18 §2). PURE: files only.

As KumoMTA's ``kcli suspend --domain D --duration --reason``: a suspended domain's recipients
stay queued, are not tried and get no attempt counted; they still expire at
``queue_lifetime_seconds``. The suspensions are the spool's ``suspended.json`` (one small
file, written to a temporary name, fsync'd and renamed: a crash leaves the old or the new one),
read when the queue's owner starts and by the offline tools (under the spool lock).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "suspended.json"
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Suspension:
    """One suspended domain: why, since when, until when (None: until resumed)."""

    domain: str
    reason: str | None
    since: float
    until: float | None

    def over(self, now: float) -> bool:
        return self.until is not None and self.until <= now


def domain_name(text: str) -> str:
    """``text`` as a domain to suspend (lower case, no trailing dot, IDNA for Unicode);
    ValueError naming it when it is not a domain name."""
    name = text.strip().rstrip(".").lower()
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(f"{text!r} is not a domain name") from None
    labels = ascii_name.split(".")
    if not name or len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a domain name (give the part after the @)")
    return name


_HOP = re.compile(r"^(\[[a-z0-9.:-]+\]|[a-z0-9.-]+):([0-9]{1,5})$")


def suspend_name(text: str) -> str:
    """``text`` as a recipient domain or a destination site to suspend (issue 18 §2): a site is
    its MX host names joined by commas (``mx1.example.net,mx2.example.net``, put in order) or a
    next hop's ``host:port``, as ``queue summary --by site`` and ``explain`` show it; a single
    name is both the domain and the one-host site of that name. ValueError naming it."""
    name = text.strip().lower()
    hop = _HOP.match(name)
    if hop:
        return name
    if "," in name:
        parts = sorted({domain_name(part) for part in name.split(",") if part.strip()})
        if not parts:
            raise ValueError(f"{text!r} is not a site")
        return ",".join(parts)
    return domain_name(text)


class Suspensions:
    """The spool's suspended domains, kept in ``path`` after every change."""

    def __init__(self, path: Path, entries: dict[str, Suspension] | None = None) -> None:
        self.path = path
        self.entries: dict[str, Suspension] = dict(entries or {})
        # issue 19: those another node of the fleet made (``shared_state``), kept in memory
        # only: in Redis until they end or are resumed
        self.shared: dict[str, Suspension] = {}

    def any(self) -> bool:
        """Is any suspension known (in force or not yet dropped)?"""
        return bool(self.entries or self.shared)

    @classmethod
    def load(cls, spool_root: Path) -> Suspensions:
        """The suspensions saved in ``spool_root`` (none when there is no file). A damaged file
        is a ValueError naming it: delivery must not resume silently."""
        path = Path(spool_root) / FILE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the suspended domains in {path}: {exc}") from None
        try:
            entries = {str(e["domain"]): Suspension(
                str(e["domain"]), str(e["reason"]) if e.get("reason") else None,
                float(e["since"]), float(e["until"]) if e.get("until") is not None else None)
                for e in data["suspensions"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot read the suspended domains in {path}: {exc!r}") from None
        return cls(path, entries)

    def save(self) -> None:
        """Write the file atomically and durably (temporary file, fsync, rename, directory
        fsync); with no suspension left the file is removed."""
        if not self.entries:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return
        else:
            tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
            body = json.dumps({"suspensions": [asdict(e) for e in self.entries.values()]},
                              ensure_ascii=False, indent=1)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body.encode("utf-8") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def current(self, now: float) -> list[Suspension]:
        """The suspensions in force at ``now``, by domain (those that ended are dropped)."""
        for entries in (self.entries, self.shared):
            for domain in [d for d, e in entries.items() if e.over(now)]:
                del entries[domain]
        merged = {**self.shared, **self.entries}
        return sorted(merged.values(), key=lambda e: e.domain)

    def until(self, domain: str, now: float) -> float | None:
        """When ``domain``'s suspension ends (``inf``: when resumed), None when not suspended."""
        ends: float | None = None
        for entry in (self.entries.get(domain), self.shared.get(domain)):
            if entry is not None and not entry.over(now):
                end = float("inf") if entry.until is None else entry.until
                ends = end if ends is None else max(ends, end)
        return ends

    def adopt(self, domain: str, reason: str, now: float, until: float) -> bool:
        """A suspension another node of the fleet made (issue 19), in force here until
        ``until``; False when one as long is already known (not new)."""
        known = self.until(domain, now)
        if known is not None and known >= until - 1.0:
            return False
        self.shared[domain] = Suspension(domain, reason, now, until)
        return True

    def suspend(self, domains: list[str], reason: str | None, now: float,
                duration: float | None) -> list[Suspension]:
        """Suspend ``domains`` from ``now`` (a suspended one gets the new reason and end)."""
        until = None if duration is None else now + duration
        made = [Suspension(d, reason, self.entries[d].since if d in self.entries else now,
                           until) for d in domains]
        self.entries.update((e.domain, e) for e in made)
        return made

    def resume(self, domains: list[str] | None, now: float) -> list[str]:
        """Lift ``domains`` (None: every one); the domains that were suspended, sorted."""
        self.current(now)
        known = self.entries.keys() | self.shared.keys()
        lifted = sorted(known if domains is None else [d for d in domains if d in known])
        for domain in lifted:
            self.entries.pop(domain, None)
            self.shared.pop(domain, None)
        return lifted


def to_json(entry: Suspension) -> dict[str, Any]:
    """One suspension as the control socket and ``--json`` give it."""
    return {"domain": entry.domain, "reason": entry.reason, "since": round(entry.since, 3),
            "until": None if entry.until is None else round(entry.until, 3)}


__all__ = ["FILE_NAME", "Suspension", "Suspensions", "domain_name", "suspend_name", "to_json"]
