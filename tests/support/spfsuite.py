"""The OpenSPF suites (``$MXROUTE_SPF_SUITE``, default ``../shared/conformance/spf/``) as
cases and zones the loopback DNSServer serves: what the library and CLI conformance tests share.

Serving rules follow ../shared/conformance/spf/README.md (SPF-to-TXT rule, TIMEOUT ordering,
case-insensitive owners). One adaptation: a TXT RR with zero strings (``SPF: []`` in test
``null-text``) cannot exist on the wire for dnspython, which rejects it on both ends, so it is
served as one empty string; the test's point (a non-SPF TXT beside the record must not crash)
is unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
import yaml

from mxroute.dns.zonefile import ZoneData
from tests.support.paths import ROOT

SUITE_DIR = Path(
    os.environ.get("MXROUTE_SPF_SUITE", ROOT.parent / "shared" / "conformance" / "spf")
)
QTYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")


@dataclass(frozen=True)
class Case:
    """One suite test: its file, scenario (YAML document index), name and body."""

    file: str
    scenario: int
    name: str
    test: dict[str, Any]

    @property
    def expected(self) -> list[str]:
        result = self.test["result"]
        return [result] if isinstance(result, str) else list(result)


def _txt_presentation(strings: list[str]) -> str:
    """One TXT RR as zone text: characters become UTF-8 octets, odd octets \\DDD.

    See the suite README, "Non-ASCII".
    """
    if not strings:
        strings = [""]  # see module docstring: a zero-string TXT RR cannot be served
    parts = []
    for text in strings:
        raw = text.encode("utf-8")
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        for chunk in chunks:
            body = "".join(
                chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}"
                for b in chunk
            )
            parts.append(f'"{body}"')
    return " ".join(parts)


def _fqdn(name: str) -> str:
    """Absolute presentation form, special characters escaped (owners like ``a b.example.com``)."""
    return dns.name.from_text(name or ".").to_text()


def build_zone(zonedata: dict[str, list[Any]]) -> ZoneData:
    """A scenario's ``zonedata`` as ZoneData (README: SPF-to-TXT rule, TIMEOUT rule).

    Records go in as zone-file text: ``ZoneData.add`` relativizes rdata names
    (MX, PTR, CNAME targets) to the root, which then cannot be put on the wire.
    """
    zone = ZoneData()
    lines = ["$ORIGIN ."]
    failures: list[tuple[str, str | None]] = []
    for owner, entries in (zonedata or {}).items():
        name = _fqdn(owner)
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        seen: set[str] = set()
        timeout_types: set[str] = set()
        for entry in entries:
            if entry == "TIMEOUT":
                timeout_types |= set(QTYPES) - seen
                continue
            ((rtype, value),) = entry.items()
            if rtype == "TXT" and value == "NONE":
                # suppresses SPF-to-TXT only; it answers nothing, so a later TIMEOUT still applies
                continue
            seen.add(rtype)
            if rtype in ("TXT", "SPF"):
                text = _txt_presentation([value] if isinstance(value, str) else list(value))
                lines.append(f"{name} 300 IN {rtype} {text}")
                if rtype == "SPF" and not has_txt:
                    lines.append(f"{name} 300 IN TXT {text}")
            elif rtype == "MX":
                lines.append(f"{name} 300 IN MX {value[0]} {_fqdn(str(value[1]))}")
            elif rtype in ("PTR", "CNAME"):
                lines.append(f"{name} 300 IN {rtype} {_fqdn(str(value))}")
            else:
                lines.append(f"{name} 300 IN {rtype} {value}")
        if timeout_types >= set(QTYPES):
            failures.append((name, None))
        else:
            # TXT records made from SPF entries count as coming after everything else.
            if "TXT" not in seen and "SPF" in seen and timeout_types:
                timeout_types.add("TXT")
            failures.extend((name, qtype) for qtype in sorted(timeout_types))
    zone.load_text("\n".join(lines) + "\n", "zonedata")
    for name, qtype in failures:
        zone.fail(name, "TIMEOUT", qtype)
    return zone


def load_suite(path: Path) -> list[tuple[str, ZoneData, list[Case]]]:
    """(description, zone, cases) per scenario."""
    scenarios = []
    with path.open(encoding="utf-8") as handle:
        for index, doc in enumerate(yaml.safe_load_all(handle)):
            if not doc:
                continue
            cases = [Case(path.name, index, name, test) for name, test in doc["tests"].items()]
            scenarios.append((doc["description"], build_zone(doc.get("zonedata") or {}), cases))
    return scenarios
