"""The Docker suite: each Pulumi stack the tests need, created from the real stack file on a real
Docker engine by the stack emulator (stack_emulator/, as `make stack-up` does), under a unique name
prefix and on free loopback ports so it never meets a developer's own `make stack-up`. Stacks are
started once per session and removed after the last Docker test, also when a test fails.

Without an engine the suite is skipped with one line; under CI (CI=true) it fails instead: CI makes
sure an engine runs (.ci/run, scripts/docker-engine.sh).
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docker_support import StackClient  # noqa: E402

from stack_emulator import stack as emulator  # noqa: E402
from stack_emulator.engine import EngineMissing, engine_client  # noqa: E402
from harness.suite_skip import fold  # noqa: E402
from stack_emulator.images import Images  # noqa: E402


# Removes every stack started so far; called after the last Docker test, so the stacks do not keep
# running (and scraping, and holding memory) through the rest of the session.
_stop_stacks: list = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    here = Path(__file__).parent
    if nextitem is None or here not in Path(str(nextitem.fspath)).parents:
        while _stop_stacks:
            _stop_stacks.pop()()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """The tests the missing engine skips make one -ra line per skip, at its pytest.skip (harness/suite_skip.py)."""
    report = yield
    fold(report, __file__, "Docker suite skipped: ")
    fold(report, str(Path(__file__).parent / "test_swarm_provider.py"), "Swarm provider tests skipped: ")
    return report


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_engine():
    """The engine, with everything the stacks' images need; else one skip line (a failure under CI)."""
    try:
        client = engine_client()
        missing = Images(client).unbuildable()
        if missing:
            raise emulator.StackError("; ".join(missing))
        return client
    except (EngineMissing, emulator.StackError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Docker suite is mandatory under CI: {exc}")
        pytest.skip(f"Docker suite skipped: {exc} (make test-docker runs only this suite)")


@pytest.fixture(scope="session")
def stacks(docker_engine):
    """``stacks("prod")`` -> a running prod stack (StackClient), started on first use."""
    run_id = secrets.token_hex(2)
    var_dir = Path(tempfile.mkdtemp(prefix="docker-stacks-"))
    running: dict[str, StackClient] = {}
    # A stack whose up failed: what it said (the next test that needs it fails with that at once, not
    # after another up) — it is still removed with the others, whatever it had made.
    failed: dict[str, str] = {}

    def get(stack: str) -> StackClient:
        if stack in failed:
            pytest.fail(f"stack {stack} did not come up earlier in this session: {failed[stack]}")
        if stack not in running:
            started = time.monotonic()
            try:
                run = emulator.up(stack, prefix=f"t{run_id}-{stack}", ports="free", var_dir=var_dir, quiet=True)
            except emulator.StackError as exc:
                failed[stack] = str(exc)
                pytest.fail(str(exc))
            print(f"\n[docker] stack {stack} ({run.prefix}-*) up and healthy in {time.monotonic() - started:.0f}s "
                  f"(images already built; {len(run.plan.steps)} resources); gateway {run.env['GATEWAY_URL']}")
            running[stack] = StackClient(run)
            running[stack].up_seconds = time.monotonic() - started
            running[stack].first_apply_seconds = run.apply_seconds
        return running[stack]

    def stop_all():
        stacks = list(running) + [s for s in failed if s not in running]
        running.clear()
        failed.clear()
        for stack in stacks:
            try:
                emulator.down(stack, var_dir=var_dir, unprotect=True, quiet=True)
            except emulator.StackError as exc:
                print(f"[docker] removing stack {stack} failed: {exc}")
        shutil.rmtree(var_dir, ignore_errors=True)

    _stop_stacks.append(stop_all)
    yield get
    stop_all()


@pytest.fixture(scope="session")
def dev(stacks) -> StackClient:
    return stacks("dev")


@pytest.fixture(scope="session")
def prod(stacks) -> StackClient:
    return stacks("prod")
