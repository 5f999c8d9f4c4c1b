"""The interop suite's findings (issue 17): what each audit tool reported, printed at the end of
every run (``pytest_terminal_summary``), so CI's log records it whether the tests pass or fail."""

from __future__ import annotations

from collections.abc import Callable

import pytest

FINDINGS: list[str] = []


@pytest.fixture
def finding() -> Callable[[str, str], None]:
    """``finding(tool, text)``: record one tool's report for the run's summary."""

    def record(tool: str, text: str) -> None:
        FINDINGS.append(f"--- {tool}\n{text.rstrip()}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FINDINGS:
        terminalreporter.section("interop audit findings (issue 17)")
        for text in FINDINGS:
            terminalreporter.write_line(text)
