"""The interop suite's findings and budget (issue 17): what each audit tool reported, and the
suite's wall time against its CI budget, printed at the end of every run
(``pytest_terminal_summary``), so CI's log records them whether the tests pass or fail."""

from __future__ import annotations

from collections.abc import Callable

import pytest

FINDINGS: list[str] = []
BUDGET_SECONDS = 180.0  # the suite's share of CI's minutes (docs/testing.md has the figures)
_SPENT: dict[str, float] = {}


@pytest.fixture
def finding() -> Callable[[str, str], None]:
    """``finding(tool, text)``: record one tool's report for the run's summary."""

    def record(tool: str, text: str) -> None:
        FINDINGS.append(f"--- {tool}\n{text.rstrip()}")

    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/interop/"):
        _SPENT[report.nodeid] = _SPENT.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FINDINGS:
        terminalreporter.section("interop audit findings (issue 17)")
        for text in FINDINGS:
            terminalreporter.write_line(text)
    if _SPENT:
        spent = sum(_SPENT.values())
        verdict = "within" if spent <= BUDGET_SECONDS else "OVER"
        terminalreporter.write_line(
            f"interop suite: {len(_SPENT)} tests, {spent:.0f} s, {verdict} its CI budget of "
            f"{BUDGET_SECONDS:.0f} s (tests/interop/conftest.py)")
