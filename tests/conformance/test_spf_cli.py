"""SPF-1 through the real CLI (issue 16, part 3): every RFC 7208 suite test as
``mxroute spf HOST MAILFROM --helo HELO --json --dns SERVER``.

The scenario's ``zonedata`` is served by the loopback DNSServer (tests/support/spfsuite.py, as for
the library run in test_spf_conformance.py). Each case must give the suite's result, the exit code
CONTRACT.md gives for it (75 for temperror, 0 for every other verdict) and, where the suite names
one, the explanation. No case is left out: the malformed domains of §4.3 (``toolonglabel``,
``emptylabel``, ``domain-literal``, ``helo-domain-literal``, ``helo-not-fqdn``) are results
(``none``, exit 0), not usage errors.

How: every case runs the CLI's own entry point, ``mxroute.cli.main.main(argv)``, in this process:
the same argument parsing, settings (from a clean MXROUTE_* environment), resolver built from
``--dns``, JSON on stdout and exit status as ``python -m mxroute`` (whose ``__main__`` is
``raise SystemExit(main())``), against the real DNS server over loopback UDP/TCP. One process per
case was measured first: ~0.5 s of CPU each, nearly all interpreter start-up and imports, which
put the ~200 cases at 141 s on this loaded 2-core machine even four at a time, over the CI
budget. So the process boundary itself is covered by a sample, SUBPROCESS_SAMPLE, run as real
``python -m mxroute spf`` processes: every §4.3 case and one case of each result.

The suite's explanation ``DEFAULT`` stands for the checker's default explanation. The CLI's is
``%{d} does not designate %{c} as a permitted sender`` (not configurable), so there the CLI must
give what check_sender() with default options gives over the same server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mxroute.cli.main import main
from mxroute.dns.resolver import NetworkTransport, Resolver, Server
from mxroute.errors import EX_OK, EX_TEMPFAIL
from mxroute.identity.spf.evaluate import check_sender
from mxroute.identity.spf.results import TEMPERROR
from tests.support.dnsserver import DNSServer
from tests.support.paths import ROOT
from tests.support.spfsuite import SUITE_DIR, Case, load_suite

SUITE = SUITE_DIR / "rfc7208-tests.yml"
DNS_TIMEOUT = "0.5"  # seconds per query (one attempt): what a TIMEOUT entry costs
SETTINGS = {"MXROUTE_DNS_TIMEOUT": DNS_TIMEOUT, "MXROUTE_DNS_ATTEMPTS": "1"}
# Through real processes: every §4.3 case, and one of each result (with an explanation, a macro
# in one, a TIMEOUT entry, an IPv6 client).
SUBPROCESS_SAMPLE = (
    "toolonglabel", "emptylabel", "domain-literal", "helo-domain-literal", "helo-not-fqdn",
    "nolocalpart", "longlabel", "exp-no-txt", "dorky-sentinel", "exists-dnserr", "cidr6-0",
    "mx-empty", "non-ascii-policy", "include-softfail",
)

SCENARIOS = load_suite(SUITE) if SUITE.is_file() else []
ZONES = {cases[0].scenario: zone for _description, zone, cases in SCENARIOS}
CASES = {case.name: case for _description, _zone, cases in SCENARIOS for case in cases}


def _argv(case: Case, server: DNSServer) -> list[str]:
    test = case.test
    return ["spf", str(test["host"]), str(test["mailfrom"]), "--helo", str(test["helo"]),
            "--json", "--dns", server.address]


def _check(case: Case, server: DNSServer, status: int, stdout: str, stderr: str) -> None:
    """The suite's result, CONTRACT.md's exit code for it, and the explanation."""
    assert stdout.strip(), f"{case.name}: exit {status}, no output; stderr: {stderr.strip()}"
    body = json.loads(stdout)
    result = body["result"]
    assert result in case.expected, (
        f"{case.name}: got {result} ({body.get('reason')}), expected {case.expected} "
        f"({case.test.get('description', '')})")
    assert status == (EX_TEMPFAIL if result == TEMPERROR else EX_OK), case.name
    expected = case.test.get("explanation")
    if expected == "DEFAULT":
        expected = _library_explanation(case, server)
    if expected is not None:
        assert body.get("explanation") == expected, case.name


def _library_explanation(case: Case, server: DNSServer) -> str | None:
    """check_sender()'s explanation with default options: the CLI's DEFAULT."""
    test = case.test
    transport = NetworkTransport([Server(server.host, server.port)], timeout=float(DNS_TIMEOUT),
                                 attempts=1)
    result = asyncio.run(check_sender(Resolver(transport, trace_size=0), str(test["host"]),
                                      str(test["mailfrom"]), str(test["helo"])))
    return result.explanation


@pytest.fixture(scope="module")
def suite_server() -> Iterator[DNSServer]:
    with DNSServer(host="127.0.53.251") as server:
        yield server


def _serve(case: Case | None, server: DNSServer) -> Case:
    if case is None:
        message = f"SPF conformance suite not found in {SUITE_DIR} (set MXROUTE_SPF_SUITE)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server.data = ZONES[case.scenario]
    return case


def _params(names: Any) -> list[Any]:
    if not CASES:
        return [pytest.param(None, id="rfc7208-missing")]
    return [pytest.param(CASES[name], id=f"rfc7208-{name}") for name in names]


@pytest.mark.parametrize("case", _params(CASES))
def test_rfc7208_suite_through_the_cli(case: Case | None, suite_server: DNSServer,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """SPF-1, issue 16 part 3: each suite test's result, exit code and explanation via main()."""
    case = _serve(case, suite_server)
    for name in [k for k in os.environ if k.startswith("MXROUTE_")]:
        monkeypatch.delenv(name)
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    status = main(_argv(case, suite_server))
    captured = capsys.readouterr()
    _check(case, suite_server, status, captured.out, captured.err)


@pytest.mark.parametrize("case", _params(SUBPROCESS_SAMPLE))
def test_rfc7208_sample_through_cli_processes(case: Case | None,
                                              suite_server: DNSServer) -> None:
    """SPF-1, issue 16 part 3: the same through real ``python -m mxroute spf`` processes."""
    case = _serve(case, suite_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXROUTE_")}
    env.update({"PYTHONPATH": str(ROOT), **SETTINGS})
    proc = subprocess.run([sys.executable, "-m", "mxroute", *_argv(case, suite_server)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
                          check=False)
    _check(case, suite_server, proc.returncode, proc.stdout, proc.stderr)
