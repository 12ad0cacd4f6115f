"""Polling with a deadline, for tests that wait on real servers."""
from __future__ import annotations

import time

import pytest


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate()`` until it returns a truthy value, and return it; fail naming ``what`` (and
    the last value or exception) on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 — reported below if it never succeeds
            last = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
