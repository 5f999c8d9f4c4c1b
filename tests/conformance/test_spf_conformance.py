"""SPF-1: the OpenSPF RFC 7208 suite through check_host() and the real resolver, over the wire.

Each scenario's ``zonedata`` is served by the loopback DNSServer (UDP+TCP on
127.0.53.x); ``TIMEOUT`` entries are dropped queries. The suite lives in
``$MXROUTE_SPF_SUITE`` (default ``../shared/conformance/spf/`` beside the repo);
when it is missing the tests skip, except under ``CI=true`` where that fails.

Serving rules and the one adaptation (``null-text``) are in tests/support/spfsuite.py.

The RFC 4408 file is run too: its tests are checked against the same code, and
the few whose expected result RFC 7208 changed are listed in KNOWN_DEVIATIONS.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from mxroute.dns.resolver import NetworkTransport, Resolver, Server
from mxroute.dns.zonefile import ZoneData
from mxroute.identity.spf.evaluate import SPFOptions, check_sender
from tests.support.dnsserver import DNSServer
from tests.support.spfsuite import SUITE_DIR, Case, load_suite

FILES = ("rfc7208-tests.yml", "rfc4408-tests.yml")
QTYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")

# (file, test) -> why the expected result cannot be met. Only the RFC 4408 file has entries:
# there RFC 7208 changed the required result and mxroute follows RFC 7208.
KNOWN_DEVIATIONS: dict[tuple[str, str], str] = {}


def _collect() -> tuple[list[Any], dict[tuple[str, int], ZoneData]]:
    params: list[Any] = []
    zones: dict[tuple[str, int], ZoneData] = {}
    for filename in FILES:
        path = SUITE_DIR / filename
        if not path.is_file():
            params.append(pytest.param(None, id=f"{filename}-missing"))
            continue
        for _description, zone, cases in load_suite(path):
            for case in cases:
                zones[(case.file, case.scenario)] = zone
                marks = []
                reason = KNOWN_DEVIATIONS.get((case.file, case.name))
                if reason:
                    marks.append(pytest.mark.xfail(reason=reason, strict=True))
                case_id = f"{filename.split('-')[0]}-{case.name}"
                params.append(pytest.param(case, id=case_id, marks=marks))
    return params, zones


PARAMS, ZONES = _collect()


@pytest.fixture(scope="module")
def suite_server() -> Iterator[DNSServer]:
    with DNSServer(host="127.0.53.250") as server:
        yield server


def run_case(resolver: Resolver, case: Case) -> tuple[str, str | None]:
    """check_host() as the suite's runner does.

    MAIL FROM, or postmaster@HELO for a null sender; the default explanation is "DEFAULT".
    """
    test = case.test
    options = SPFOptions(default_explanation="DEFAULT", timeout=20.0)

    async def go() -> tuple[str, str | None]:
        result = await check_sender(
            resolver, test["host"], test["mailfrom"], test["helo"], options=options
        )
        return result.result, result.explanation

    return asyncio.run(go())


@pytest.mark.parametrize("case", PARAMS)
def test_rfc7208_suite(case: Case | None, suite_server: DNSServer) -> None:
    """SPF-1..9: every suite test's result (and explanation) through the wire."""
    if case is None:
        message = f"SPF conformance suite not found in {SUITE_DIR} (set MXROUTE_SPF_SUITE)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    suite_server.data = ZONES[(case.file, case.scenario)]
    server = Server(suite_server.host, suite_server.port)
    resolver = Resolver(NetworkTransport([server], timeout=0.3, attempts=1), trace_size=0)
    result, explanation = run_case(resolver, case)
    description = case.test.get("description", "")
    assert result in case.expected, (
        f"{case.name}: got {result}, expected {case.expected} ({description})"
    )
    if "explanation" in case.test:
        assert explanation == case.test["explanation"], case.name
