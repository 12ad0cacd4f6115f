"""A suite skipped as a whole (no Docker engine) reads as one line in pytest's -ra summary.

A skip raised by a session fixture is reported at each test's own place, so -ra printed one line per
test (dozens for tests/docker). The suites' conftests pass their reports through ``fold``: every report
skipped for the suite's reason gets the place of the ``pytest.skip`` call, and pytest folds same place
and reason into a single "SKIPPED [N] <conftest>:<line>: <reason>" line.
"""
from __future__ import annotations

from pathlib import Path


def fold(report, where: str, reason_start: str) -> None:
    """Give ``report`` (a TestReport) the place of the ``pytest.skip(f"<reason_start>…")`` call in the file
    ``where`` when it is that skip."""
    if not (report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3):
        return
    if not report.longrepr[2].removeprefix("Skipped: ").startswith(reason_start):
        return
    lines = Path(where).read_text().splitlines()
    line = next((i for i, text in enumerate(lines, 1) if f'pytest.skip(f"{reason_start}' in text), None)
    if line is not None:
        report.longrepr = (where, line, report.longrepr[2])
